"""The run's lifecycle hooks: the calls around a loop tree's run, in Lightning's order, from one place.

Every entry point (``fit``/``validate``/``test``/``predict``) runs, for the
data module (when one is given), the callbacks and the module::

    configure_callbacks()          module: merged into the trainer's callbacks
    prepare_data()                 data module, then module; local rank 0 only, the other ranks wait
    setup(stage)                   data module, then callbacks, then module
    configure_model()              module, with its new tensors created on the run's device
    ... dataloaders, configure_optimizers, the loop tree runs ...
    on_exception(exception)        callbacks, then data module; only when the run raised
    teardown(stage)                data module, then callbacks, then module; also after a failure

Each is called from the row hook of the same name of the entry point's
:class:`~statemachine_trainer._entry.EntryLoop` (so the lifecycle is a table,
drawn around the loop tree; ``on_exception`` from the ``teardown`` row, when
a row raised); they are declared in
:data:`~statemachine_trainer._hook_spec.HOOKS` with ``relayed=False`` like
the checkpoint hooks, since they run once per entry point, outside the tree
whose state a checkpoint holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._optim import ConfigError

if TYPE_CHECKING:
    from ._run import Run

__all__ = ["configure_model", "merge_callbacks", "on_exception", "prepare_data", "setup", "teardown"]


def merge_callbacks(callbacks: list[Any], module: Any) -> list[Any]:
    """The trainer's callbacks with those ``module.configure_callbacks()`` returns, as Lightning merges them.

    A returned callback replaces the trainer's callbacks of a class it is an
    instance of (``EarlyStopping`` from the module replaces the trainer's);
    the others are kept, and ``ModelCheckpoint`` callbacks go last, so a
    checkpoint holds the other callbacks' state after the same hook.
    """
    from .callbacks import Callback, ModelCheckpoint

    returned = module.configure_callbacks()
    if not returned:
        return callbacks
    given = list(returned) if isinstance(returned, Sequence) else [returned]
    bad = [type(cb).__name__ for cb in given if not isinstance(cb, Callback)]
    if bad:
        raise ConfigError(f"{type(module).__name__}.configure_callbacks() returned {', '.join(bad)}; return a "
                          "Callback or a list of Callbacks.")
    replaced = {type(cb) for cb in callbacks if type(cb) is not Callback
                and any(isinstance(new, type(cb)) for new in given)}
    merged = [cb for cb in callbacks if type(cb) not in replaced] + given
    return ([cb for cb in merged if not isinstance(cb, ModelCheckpoint)]
            + [cb for cb in merged if isinstance(cb, ModelCheckpoint)])


def prepare_data(run: Run) -> None:
    """``prepare_data()`` of the data module, then of the module: once per machine, the other ranks waiting."""
    strategy = run.strategy
    for owner in (run.datamodule, run.module):
        if owner is None or _is_stub(owner, "prepare_data"):
            continue
        per_node = getattr(owner, "prepare_data_per_node", True)
        if (strategy.local_rank if per_node else strategy.rank) == 0:
            owner.prepare_data()
        strategy.barrier()  # the other ranks read what rank 0 downloaded or wrote only once it is there


def setup(run: Run, stage: str) -> None:
    """``setup(stage)`` of the data module, the callbacks, then the module (before any data or optimizer)."""
    _call_in_order(run, "setup", stage)


def configure_model(run: Run) -> None:
    """The module's ``configure_model()``, with tensors it creates put straight on the run's device (as Lightning)."""
    if not _is_stub(run.module, "configure_model"):
        with torch.device(run.device):
            run.module.configure_model()


def on_exception(run: Run, exception: BaseException) -> None:
    """The run raised: ``on_exception(exception)`` on the callbacks, then the data module (Lightning's order)."""
    for callback in run.callbacks:
        callback.on_exception(run, run.module, exception)
    if run.datamodule is not None:
        run.datamodule.on_exception(exception)


def teardown(run: Run, stage: str) -> None:
    """``teardown(stage)`` in ``setup``'s order; the Trainer calls it also when the run failed."""
    _call_in_order(run, "teardown", stage)


def _call_in_order(run: Run, name: str, stage: str) -> None:
    if run.datamodule is not None:
        getattr(run.datamodule, name)(stage)
    for callback in run.callbacks:
        getattr(callback, name)(run, run.module, stage)
    getattr(run.module, name)(stage)


def _is_stub(owner: Any, name: str) -> bool:
    return getattr(getattr(owner, name, None), "__noop_hook__", False)
