"""Interrupt a user's run at a chosen hook call, resume it in fresh objects, and demand the same result.

The run is made of the user's own factories -- a module, a Trainer, loaders --
so the check covers *their* steps, hooks and loops.  The uninterrupted run
asks for a checkpoint at the ``call``-th call of ``hook`` (written at the next
transition boundary, exactly as ModelCheckpoint's are) and carries on to the
end; the resumed run starts from that checkpoint with new objects.  Both
runs' final states -- every parameter, gradient, optimizer and scheduler
state, loop position and counter, logged value, metric and RNG state -- must
be bit-identical; otherwise the AssertionError names the first difference.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..callbacks import Callback
from ..checkpoint import first_difference

__all__ = ["INTERRUPT_HOOKS", "ResumeMismatch", "assert_resume_exact", "interrupt_at"]

#: Hooks that fire inside a training step, between steps, and inside validation.
INTERRUPT_HOOKS = ("on_train_batch_start", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
                   "on_train_batch_end", "on_validation_batch_end", "on_train_epoch_end")

#: Parts of the final state compared between the two runs (callbacks differ: only one run has the interrupter).
_COMPARED = ("module", "optimizers", "schedulers", "precision", "grads", "metrics", "results", "rng", "loops", "data",
             "loggers")


class ResumeMismatch(AssertionError):
    """The resumed run ended differently from the uninterrupted one; the message says where first."""


def interrupt_at(hook: str, call: int, path: str | Path) -> Callback:
    """A callback that requests a checkpoint at ``path`` at the ``call``-th call of ``hook`` (1-based)."""
    if hook not in INTERRUPT_HOOKS and not hook.startswith("on_"):
        raise ValueError(f"interrupt_at({hook!r}): name a Trainer hook, e.g. one of {', '.join(INTERRUPT_HOOKS)}.")

    def maybe(self: Any, trainer: Any, *args: Any) -> None:
        self.calls += 1
        if self.calls == call:
            trainer.request_checkpoint(path)

    return type("InterruptAt", (Callback,), {"calls": 0, hook: maybe, "state_key": f"InterruptAt[{hook}#{call}]"})()


def assert_resume_exact(make_module: Callable[[], Any], make_trainer: Callable[[Sequence[Callback]], Any],
                        make_loaders: Callable[[], tuple[Any, ...]], hook: str, call: int,
                        workdir: str | Path | None = None) -> Path:
    """Run, interrupt at the ``call``-th ``hook``, resume, and raise :class:`ResumeMismatch` on any difference.

    ``make_trainer(extra_callbacks)`` must pass the callbacks on to ``Trainer(callbacks=...)``;
    ``make_loaders()`` returns ``(train,)`` or ``(train, val)`` -- use
    ``statemachine_trainer.data.ResumableLoader`` for exactness mid-epoch.
    Returns the checkpoint's path (kept under ``workdir`` when given).
    """
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="resume-check-"))
    path = root / f"interrupt-{hook}-{call}.ckpt"
    full = make_trainer([interrupt_at(hook, call, path)])
    full.fit(make_module(), *make_loaders())
    if not path.exists():
        raise ValueError(f"{hook} was called fewer than {call} times, so no checkpoint was taken; draw a smaller "
                         "call number.")
    resumed = make_trainer([])
    resumed.fit(make_module(), *make_loaders(), ckpt_path=path)
    expected, got = _final_state(full), _final_state(resumed)
    difference = first_difference(expected, got)
    if difference is not None:
        raise ResumeMismatch(f"resuming from {path} (taken at call {call} of {hook}) did not reproduce the "
                             f"uninterrupted run: {difference}")
    return path


def _final_state(trainer: Any) -> dict[str, Any]:
    state = trainer.capture_state()
    return {key: state[key] for key in _COMPARED if key in state}
