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

from ._optim import ConfigError
from ._run_state import check_module_state, check_optimizer_states
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

    Every part is checked first (the tree's shape and positions, the module's
    keys and shapes, the optimizers' parameter groups, the loaders named):
    a mismatch raises ``ConfigError`` naming the key, and nothing is changed.
    Then ``loop.run()`` resumes the tree where it was saved.
    """
    path = Path(path)
    state, _ = load_checkpoint_dir(path, map_location=map_location)
    loop.check_state_dict(state["loops"])  # StateError naming the key path when it is another tree
    data = dict(data or {})
    _check_parts(path, state, module, optimizers, schedulers, data)
    if module is not None:
        module.load_state_dict(state["module"])
        params = dict(module.named_parameters())
        for name, grad in state["grads"].items():
            params[name].grad = grad.to(params[name].device)
    for opt, saved in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(saved)
    for sched, saved in zip(schedulers, state["schedulers"]):
        sched.load_state_dict(saved)
    for name, loader in data.items():
        loader.load_state_dict(state["data"][name])
    loop.load_state_dict(state["loops"])
    restore_rng(state["rng"])
    return state["extra"]


def _check_parts(path: Path, state: dict[str, Any], module: Any, optimizers: Sequence[Any],
                 schedulers: Sequence[Any], data: dict[str, Any]) -> None:
    if module is not None:
        if "module" not in state:
            raise ConfigError(f"{path} holds no module state ($.module): it was saved without module=; load it "
                              "without module= too.")
        check_module_state(module, state["module"], path, state.get("grads", {}))
    check_optimizer_states(path, optimizers, state["optimizers"], schedulers, state["schedulers"])
    missing = sorted(set(data) - set(state["data"]))
    if missing:
        raise ConfigError(f"{path} holds no position for loader(s) {missing} ($.data has {sorted(state['data'])}); "
                          "pass the data= names it was saved with.")
