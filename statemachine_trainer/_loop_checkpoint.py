"""Checkpoint a loop tree run without a Trainer: one call to save, one to resume, the Trainer's format.

Research code that runs its own loops (``tree.run()`` in a script or a
notebook, a plain ``nn.Module`` and optimizer) gets the same exact resume as
a Trainer run::

    save_loop_checkpoint("ckpt/step=40", tree, module=model, optimizers=[opt], data={"train": loader})
    ...
    load_loop_checkpoint("ckpt/step=40", tree, module=model, optimizers=[opt], data={"train": loader})
    tree.run()  # continues from the saved transition

What is saved: the tree's state set (every loop's position, progress and
fields), the module's ``state_dict``, each optimizer's and scheduler's, the
RNG states (Python, NumPy, torch CPU and CUDA), each loader's position (any
object with ``state_dict``/``load_state_dict``, e.g. a ``ResumableLoader``),
the partial gradients, and ``extra`` JSON.  It is written with
``save_checkpoint_dir`` (atomic, checksummed, ``weights_only`` tensors), so
``statemachine-trainer inspect / verify / diff`` read it.  Loading checks
every part against the objects given before changing any of them.

What a standalone loop must keep in ``fields`` or ``progress``: everything
its future depends on that is not in the objects above (counters, running
sums, the current round).  Iterators, open files and other handles are not
state: rebuild them in ``on_restart`` from what is -- e.g.
``self.batches = iter(loader)`` on a resumable loader, which continues at
its restored position.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._run_schema import LoopCheckpoint, structure_checkpoint
from ._run_state import CheckpointMismatch, LoopTreeMismatch, apply_undoably, check_module_state, check_optimizer_states
from .checkpoint import capture_rng, load_checkpoint_dir, restore_rng, save_checkpoint_dir
from .machine import Loop

__all__ = ["load_loop_checkpoint", "save_loop_checkpoint"]


def save_loop_checkpoint(path: str | os.PathLike[str], loop: Loop, *, module: Any = None,
                         optimizers: Sequence[Any] = (), schedulers: Sequence[Any] = (),
                         data: Mapping[str, Any] | None = None, extra: dict[str, Any] | None = None,
                         step: int | None = None) -> Path:
    """Write ``loop``'s tree and the given objects as checkpoint directory ``path``; call it at a boundary.

    A boundary is where ``loop.observe(fn)`` calls ``fn`` (or between two
    ``run()`` calls): a checkpoint written inside a hook would resume that
    hook from its start.  ``step`` orders checkpoints for ``find_latest``
    (default: the root loop's completed advances).
    """
    state: dict[str, Any] = {"loops": loop.state_dict(), "rng": capture_rng(), "extra": dict(extra or {})}
    if module is not None:
        state["module"] = dict(module.state_dict())
        state["grads"] = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    state["optimizers"] = [opt.state_dict() for opt in optimizers]
    state["schedulers"] = [sched.state_dict() for sched in schedulers]
    state["data"] = {name: loader.state_dict() for name, loader in (data or {}).items()}
    metadata = {"step": loop.progress.total.completed if step is None else step, "stage": "loop",
                "root": type(loop).__name__}
    return save_checkpoint_dir(path, state, metadata)


def load_loop_checkpoint(path: str | os.PathLike[str], loop: Loop, *, module: Any = None,
                         optimizers: Sequence[Any] = (), schedulers: Sequence[Any] = (),
                         data: Mapping[str, Any] | None = None, map_location: Any = None) -> dict[str, Any]:
    """Restore what ``save_loop_checkpoint`` wrote into these objects; return its ``extra``.

    Every part is checked first (its types, the tree's shape and positions,
    the module's keys and shapes, the optimizers' parameter groups, the
    loaders named): a damaged or edited checkpoint raises ``CheckpointError``
    and one that does not fit these objects ``ConfigError`` (both name the
    key), and nothing is changed.  The loaders, optimizers, schedulers and
    tree are loaded first; if one of them refuses its part, they all get their
    own state back.  Then ``loop.run()`` resumes the tree where it was saved.
    """
    path = Path(path)
    state, _ = load_checkpoint_dir(path, map_location=map_location)
    typed = structure_checkpoint(state, LoopCheckpoint, path)
    try:
        loop.check_state_dict(typed.loops)
    except ValueError as error:  # StateError naming the key path when it is another tree
        raise LoopTreeMismatch(f"{path} does not match this loop tree: {error}") from None
    data = dict(data or {})
    _check_parts(path, typed, module, optimizers, schedulers, data)
    parts = [(f"$.data.{name}", loader, typed.data[name]) for name, loader in data.items()]
    parts += [(f"$.optimizers[{i}]", opt, attrs.asdict(saved, recurse=False))
              for i, (opt, saved) in enumerate(zip(optimizers, typed.optimizers))]
    parts += [(f"$.schedulers[{i}]", sched, saved) for i, (sched, saved) in enumerate(zip(schedulers,
                                                                                             typed.schedulers))]
    apply_undoably(path, parts + [("$.loops", loop, typed.loops)])
    if module is not None:
        module.load_state_dict(typed.module)
        params = dict(module.named_parameters())
        for name, grad in (typed.grads or {}).items():
            params[name].grad = grad.to(params[name].device)
    restore_rng({"python": typed.rng.python, "numpy": typed.rng.numpy, "torch": typed.rng.torch}
                | ({} if typed.rng.cuda is None else {"cuda": typed.rng.cuda}))
    return typed.extra


def _check_parts(path: Path, typed: Any, module: Any, optimizers: Sequence[Any],
                 schedulers: Sequence[Any], data: dict[str, Any]) -> None:
    if module is not None:
        if typed.module is None:
            raise CheckpointMismatch(f"{path} holds no module state ($.module): it was saved without module=; load "
                                     "it without module= too.")
        check_module_state(module, typed.module, path, typed.grads or {})
    check_optimizer_states(path, optimizers, typed.optimizers, schedulers, typed.schedulers)
    missing = sorted(set(data) - set(typed.data))
    if missing:
        raise CheckpointMismatch(f"{path} holds no position for loader(s) {missing} ($.data has "
                                 f"{sorted(typed.data)}); pass the data= names it was saved with.")
