"""The optimization loops: what happens to one batch between ``on_train_batch_start`` and ``_end``.

Three modes, three tables; the batch loop runs the one the module asks for.

``OptimizerLoop`` (automatic).  One ADVANCE per optimizer that steps on this
batch (all of them, or one chosen by ``frequency``).  Per optimizer::

    training_step(batch, batch_idx[, optimizer_idx])   # loss; None skips the step
    on_before_backward(loss); backward(loss / accumulate_grad_batches); on_after_backward()
    -- only when the accumulation window closes: --
    on_before_optimizer_step(optimizer); clip gradients; optimizer.step()
    on_before_zero_grad(optimizer); optimizer.zero_grad()

Optimizers that re-evaluate the loss (LBFGS) get the first half as a closure.

``GeneratorLoop`` (automatic, ``training_step`` is a generator).  The same,
except that each optimizer's loss is the generator's next ``yield``: shared
work before the first ``yield`` runs once per batch.

``ManualLoop`` (``automatic_optimization = False``).  One transition that calls
``training_step``; the step calls ``manual_backward`` and ``opt.step()``
itself, and those calls fire the backward / optimizer-step hooks.

With several optimizers, each optimizer's part runs with the other optimizers'
parameters frozen (``toggle_optimizer``), so one loss's backward never writes
gradients another optimizer will step on.
"""

from __future__ import annotations

from typing import Any

import torch

from ..machine import ADVANCE, END, START, Row, Table, noop_hook
from ..state import OptimizationProgress
from ._base import TrainerLoop

__all__ = ["GENERATOR_TABLE", "MANUAL_TABLE", "OPTIMIZER_TABLE", "GeneratorLoop", "ManualLoop", "OptimizerLoop"]

#: One ADVANCE per optimizer that steps on the batch; the generator loop takes the same path.
_PER_OPTIMIZER_ROWS = (
    Row("run", START, ADVANCE, hooks=("reset", "on_run_start")),
    Row("advance", ADVANCE, END, conditions="done", hooks="on_run_end"),
    Row("advance", ADVANCE, ADVANCE, hooks="advance"),
)
OPTIMIZER_TABLE = Table(name="OptimizerLoop", states=(START, ADVANCE, END), rows=_PER_OPTIMIZER_ROWS)
GENERATOR_TABLE = Table(name="GeneratorLoop", states=(START, ADVANCE, END), rows=_PER_OPTIMIZER_ROWS)

MANUAL_TABLE = Table(
    name="ManualLoop",
    states=(START, END),
    rows=(Row("run", START, END, hooks=("reset", "advance")),),
)


class GeneratorStepError(RuntimeError):
    """A generator ``training_step`` yielded a different number of losses than there are optimizers."""


def _loss_of(output: Any) -> torch.Tensor | None:
    if output is None or isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "loss" in output:
        return output["loss"]
    raise TypeError(f"training_step returned {type(output).__name__}; return the loss tensor, a dict with a "
                    "'loss' key, or None to skip the step.")


class OptimizerLoop(TrainerLoop):
    """Automatic optimization: backward and step for each optimizer in turn."""

    table = OPTIMIZER_TABLE
    progress_class = OptimizationProgress

    def __init__(self) -> None:
        super().__init__()
        self._outputs: Any = None

    @property
    def done(self) -> bool:
        return self.progress.optimizer_position >= len(self._active())

    def reset(self) -> None:
        self.progress.optimizer_position = 0
        self._outputs = None

    @noop_hook
    def on_run_start(self, batch: Any, batch_idx: int) -> None:
        """Nothing to prepare for a plain step (so it is not dispatched); the generator loop starts its generator here."""

    def advance(self, batch: Any, batch_idx: int) -> None:
        index = self._active()[self.progress.optimizer_position]
        self.context.optimization.optimizer_step(index, lambda: self._loss(batch, batch_idx, index), self.progress)
        self.progress.optimizer_position += 1

    def on_run_end(self) -> Any:
        return self._outputs

    def _active(self) -> Any:
        return self.context.optimization.active_optimizers()

    def _loss(self, batch: Any, batch_idx: int, index: int) -> torch.Tensor | None:
        output = self.context.optimization.call_training_step(batch, batch_idx, index)
        self._outputs = output
        return _loss_of(output)


class GeneratorLoop(OptimizerLoop):
    """Automatic optimization where ``training_step`` yields one loss per optimizer."""

    table = GENERATOR_TABLE

    def __init__(self) -> None:
        super().__init__()
        self._generator: Any = None

    def on_run_start(self, batch: Any, batch_idx: int) -> None:
        self._generator = self.context.optimization.call_training_step(batch, batch_idx, None)

    @property
    def checkpointable(self) -> bool:
        # Between two yields the generator's frame holds the shared work (e.g. a GAN's fake batch, made
        # with the weights from before the first optimizer stepped): no state set can hold it.  So a
        # checkpoint requested mid-step is written right after the step, when this loop is idle again.
        return self.state != ADVANCE or self.progress.optimizer_position == 0

    def on_restart(self) -> None:
        # Resumed at the start of a step (the only point a checkpoint can hold): the generator is re-created.
        self._generator = None

    def on_run_end(self) -> Any:
        generator, self._generator = self._generator, None
        if generator is not None:
            extra = next(generator, _EXHAUSTED)
            if extra is not _EXHAUSTED:
                raise GeneratorStepError(
                    f"training_step yielded more losses than there are optimizers "
                    f"({len(self._active())}); yield exactly one loss per optimizer, in the order "
                    "configure_optimizers returns them.")
        return self._outputs

    def _loss(self, batch: Any, batch_idx: int, index: int) -> torch.Tensor | None:
        if self._generator is None:
            self._replay(batch, batch_idx)
        output = next(self._generator, _EXHAUSTED)
        if output is _EXHAUSTED:
            raise GeneratorStepError(
                f"training_step yielded {self.progress.optimizer_position} loss(es), but there are "
                f"{len(self._active())} optimizers; yield one loss per optimizer.")
        self._outputs = output
        return _loss_of(output)

    def _replay(self, batch: Any, batch_idx: int) -> None:
        self._generator = self.context.optimization.call_training_step(batch, batch_idx, None)
        for _ in range(self.progress.optimizer_position):
            next(self._generator)


_EXHAUSTED = object()


class ManualLoop(TrainerLoop):
    """Manual optimization: ``training_step`` does its own backward and steps."""

    table = MANUAL_TABLE
    progress_class = OptimizationProgress

    def reset(self) -> None:
        self.progress.optimizer_position = 0

    def advance(self, batch: Any, batch_idx: int) -> Any:
        return self.context.optimization.call_training_step(batch, batch_idx, None)
