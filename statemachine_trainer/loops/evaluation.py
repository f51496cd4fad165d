"""``EvaluationLoop``: one pass over validation or test data, without gradients.

::

    START   --run [skip]-->      END     / on_skip
    START   --run-->             ADVANCE / reset, on_run_start     # eval mode, on_{stage}_start, _epoch_start
    ADVANCE --advance [done]-->  END     / on_run_end              # reduce logs, _epoch_end, _end, train mode
    ADVANCE --advance-->         ADVANCE / advance                 # _batch_start, {stage}_step, _batch_end

One class serves both stages: ``EvaluationLoop("validate")`` calls
``validation_step`` and the ``on_validation_*`` hooks, ``EvaluationLoop("test")``
the test ones.  ``run(sanity=True)`` is the sanity check: at most
``num_sanity_val_steps`` batches, and nothing it logs is kept.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ..machine import ADVANCE, END, START, Row, Table
from ..state import BatchProgress
from ._base import TrainerLoop

__all__ = ["EVALUATION_TABLE", "EvaluationFields", "EvaluationLoop"]

EVALUATION_TABLE = Table(
    name="EvaluationLoop",
    states=(START, ADVANCE, END),
    rows=(
        Row("run", START, END, conditions="skip", hooks="on_skip"),
        Row("run", START, ADVANCE, hooks=("reset", "on_run_start")),
        Row("advance", ADVANCE, END, conditions="done", hooks="on_run_end"),
        Row("advance", ADVANCE, ADVANCE, hooks="advance"),
    ),
)

_STAGE_NAMES = {"validate": "validation", "test": "test"}


@attrs.define
class EvaluationFields:
    sanity: bool = False  # this run is the sanity check before fitting
    was_training: bool = False  # the module was in train mode when the run started; restored at the end
    runs: int = 0  # runs started so far; each is one "epoch" of the loader, so a resumable one starts over


class EvaluationLoop(TrainerLoop):
    table = EVALUATION_TABLE
    progress_class = BatchProgress
    fields_class = EvaluationFields

    def __init__(self, stage: str = "validate") -> None:
        super().__init__()
        if stage not in _STAGE_NAMES:
            raise ValueError(f"EvaluationLoop(stage={stage!r}): use 'validate' or 'test'.")
        self.stage = stage
        self.name = f"{stage}_loop"
        prefix = _STAGE_NAMES[stage]
        self._step_name = f"{prefix}_step"
        self._hook_names = {part: f"on_{prefix}_{part}" for part in
                            ("start", "end", "epoch_start", "epoch_end", "batch_start", "batch_end")}

    # -- conditions ------------------------------------------------------------------------
    @property
    def skip(self) -> bool:
        source = self.trainer.sources.get(self.stage)
        return source is None or source.num_batches == 0

    @property
    def done(self) -> bool:
        return self.progress.current.completed >= self._num_batches()

    def _num_batches(self) -> int:
        total = self.trainer.sources[self.stage].num_batches
        sanity = self.trainer.num_sanity_val_steps
        return min(total, sanity) if self.fields.sanity and sanity != -1 else total  # -1: the whole loader

    # -- hooks -----------------------------------------------------------------------------
    def on_skip(self, sanity: bool = False) -> dict[str, float]:
        return {}

    def reset(self, sanity: bool = False) -> None:
        self.progress.reset_on_run()
        self.fields.sanity = sanity

    def on_run_start(self, sanity: bool = False) -> None:
        trainer = self.trainer
        self.fields.was_training = trainer.module.training
        self._enter()
        trainer.results.reset_stage(self.stage)
        trainer.sources[self.stage].start_epoch(self.fields.runs)
        self.fields.runs += 1
        self._hook("start")()
        self._hook("epoch_start")()

    def on_restart(self) -> None:
        self._enter()

    def _enter(self) -> None:
        self.trainer.module.eval()
        self.trainer.results.stage = self.stage

    def advance(self, sanity: bool = False) -> None:
        trainer, progress = self.trainer, self.progress
        source = trainer.sources[self.stage]
        if self.restarting:  # resumed while this batch was in flight: fetch it again, counters already moved
            batch_idx = progress.current.ready - 1
            source.refetch()
        else:
            batch_idx = progress.current.ready
            progress.increment_ready()
        batch = source.next_batch()
        trainer.results.new_batch(batch)
        progress.is_last_batch = batch_idx + 1 >= self._num_batches()
        self._hook("batch_start")(batch, batch_idx)
        if not self.restarting:
            progress.increment_started()
        trainer.results.fx = self._step_name
        with torch.no_grad(), trainer.precision.autocast():
            outputs = getattr(trainer.module, self._step_name)(batch, batch_idx)
        progress.increment_processed()
        self._hook("batch_end")(outputs, batch, batch_idx)
        progress.increment_completed()

    def on_run_end(self, sanity: bool = False) -> dict[str, float]:
        trainer = self.trainer
        trainer.sources[self.stage].end_epoch()
        metrics = trainer.results.epoch_end(self.stage)
        self._hook("epoch_end")()
        self._hook("end")()
        metrics.update(trainer.results.take_pending())
        if self.fields.was_training:
            trainer.module.train()
        trainer.results.stage = "train"
        if sanity:
            trainer.results.forget(metrics)  # sanity-check values must not steer callbacks or schedulers
            return {}
        trainer.log_metrics(metrics)
        return {key: float(value) for key, value in metrics.items()}

    def _hook(self, part: str) -> Any:
        return getattr(self.trainer.hooks, self._hook_names[part])
