"""``BatchLoop``: one training batch -- ``on_train_batch_start``, the optimization loop, ``on_train_batch_end``.

The batch loop owns the three optimization loops as sub-loops and runs the one
the module asks for (resolved when the trainer attaches, not per batch)::

    START --run-->               ADVANCE / reset, on_run_start    # on_train_batch_start
    ADVANCE --advance [skipped]--> END                             # it returned -1: skip the rest of the epoch
    ADVANCE --advance-->          END     / advance                 # optimize, then on_train_batch_end

``advance`` runs the optimization loop and the end hook in one hook, so the
step's outputs never have to cross a checkpoint boundary (the optimization
loops refuse checkpoints while they hold them).

Whether an optimizer stepped on this batch (step-interval schedulers are due
then) is state like any other: ``fields.steps_before`` records the step
counter as the batch begins, so after a resume mid-batch the batch loop still
knows, whichever optimization loop -- built-in or custom -- did the stepping.
"""

from __future__ import annotations

import inspect
from typing import Any

import attrs

from ..machine import ADVANCE, END, START, Loop, Row, Table
from ._base import TrainerLoop
from .optimization import GeneratorLoop, ManualLoop, OptimizerLoop

__all__ = ["BATCH_TABLE", "BatchFields", "BatchLoop"]

BATCH_TABLE = Table(
    name="BatchLoop",
    states=(START, ADVANCE, END),
    rows=(
        Row("run", START, ADVANCE, hooks=("reset", "on_run_start")),
        Row("advance", ADVANCE, END, conditions="skipped"),
        Row("advance", ADVANCE, END, hooks="advance"),
    ),
)


@attrs.define
class BatchFields:
    skipped: bool = False  # on_train_batch_start returned -1 for this batch: the epoch ends after it
    # The optimization loop's optimizer-step count when this batch began; an optimizer stepped on this batch
    # iff the count is higher now (see BatchLoop.stepped).  <= that loop's progress.optimizer_steps.
    steps_before: int = 0


class BatchLoop(TrainerLoop):
    table = BATCH_TABLE
    fields_class = BatchFields

    def __init__(self) -> None:
        super().__init__()
        self.optimizer_loop: Loop = OptimizerLoop()
        self.generator_loop: Loop = GeneratorLoop()
        self.manual_loop: Loop = ManualLoop()
        self._chosen: Loop = self.optimizer_loop

    def on_attach(self) -> None:
        self._chosen = self.select_optimization_loop()
        # on_run_start only relays on_train_batch_start: when that does nothing this run, leave it out of the step.
        idle = type(self).on_run_start is BatchLoop.on_run_start and self.context.hooks.idle("on_train_batch_start")
        self.skip_hooks(("on_run_start",) if idle else ())

    def select_optimization_loop(self) -> Loop:
        """The sub-loop this module's optimization mode uses."""
        module = self.context.module
        if not module.automatic_optimization:
            return self.manual_loop
        if inspect.isgeneratorfunction(type(module).training_step):
            return self.generator_loop
        return self.optimizer_loop

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps taken in this fit, over every optimization mode (the trainer's global_step)."""
        return (self.optimizer_loop.progress.optimizer_steps + self.generator_loop.progress.optimizer_steps
                + self.manual_loop.progress.optimizer_steps)

    @property
    def skipped(self) -> bool:
        return self.fields.skipped

    @property
    def stepped(self) -> bool:
        """Whether an optimizer stepped on the current batch (so far)."""
        return self._chosen.progress.optimizer_steps > self.fields.steps_before

    def reset(self) -> None:
        self.fields.skipped = False
        self.fields.steps_before = self._chosen.progress.optimizer_steps

    def on_run_start(self, batch: Any, batch_idx: int) -> None:
        if self.context.hooks.on_train_batch_start(batch, batch_idx) == -1:
            self.fields.skipped = True

    def advance(self, batch: Any, batch_idx: int) -> Any:
        outputs = self._chosen.run(batch, batch_idx)
        self.context.hooks.on_train_batch_end(outputs, batch, batch_idx)
        return outputs
