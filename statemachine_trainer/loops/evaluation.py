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

from typing import TYPE_CHECKING

import attrs

from .._hook_spec import STAGE_HOOKS
from ..machine import ADVANCE, END, START, Row, Table
from ..state import BatchProgress
from ._base import TrainerLoop

if TYPE_CHECKING:
    from .._hooks import StageRelay

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
        if stage not in ("validate", "test"):
            raise ValueError(f"EvaluationLoop(stage={stage!r}): use 'validate' or 'test'.")
        self.stage = stage
        self.name = f"{stage}_loop"
        self._step_name = STAGE_HOOKS[stage].step
        self._hooks: StageRelay | None = None  # this stage's hooks, resolved when a run attaches

    def on_attach(self) -> None:
        self._hooks = self.context.hooks.stage(self.stage)

    # -- conditions ------------------------------------------------------------------------
    @property
    def skip(self) -> bool:
        source = self.context.sources.get(self.stage)
        return source is None or source.num_batches == 0

    @property
    def done(self) -> bool:
        return self.progress.current.completed >= self._num_batches()

    def _num_batches(self) -> int:
        total = self.context.sources[self.stage].num_batches
        sanity = self.context.config.num_sanity_val_steps
        return min(total, sanity) if self.fields.sanity and sanity != -1 else total  # -1: the whole loader

    # -- hooks -----------------------------------------------------------------------------
    def on_skip(self, sanity: bool = False) -> dict[str, float]:
        return {}

    def reset(self, sanity: bool = False) -> None:
        self.progress.reset_on_run()
        self.fields.sanity = sanity

    def on_run_start(self, sanity: bool = False) -> None:
        run = self.context
        self.fields.was_training = run.module.training
        self._enter()
        run.results.reset_stage(self.stage)
        run.sources[self.stage].start_epoch(self.fields.runs)
        self.fields.runs += 1
        self._hooks.start()
        self._hooks.epoch_start()

    def on_restart(self) -> None:
        self.context.resume_source(self.stage)
        self._enter()

    def _enter(self) -> None:
        self.context.module.eval()
        self.context.results.stage = self.stage

    def advance(self, sanity: bool = False) -> None:
        run, progress = self.context, self.progress
        source = run.sources[self.stage]
        if self.restarting:  # resumed while this batch was in flight: fetch it again, counters already moved
            batch_idx = progress.current.ready - 1
            source.refetch()
        else:
            batch_idx = progress.current.ready
            progress.increment_ready()
        batch = source.next_batch()
        run.results.new_batch(batch)
        progress.is_last_batch = batch_idx + 1 >= self._num_batches()
        self._hooks.batch_start(batch, batch_idx)
        if not self.restarting:
            progress.increment_started()
        run.results.fx = self._step_name
        with run.evaluation_grad_mode(), run.precision.autocast():
            outputs = getattr(run.module, self._step_name)(batch, batch_idx)
        progress.increment_processed()
        self._hooks.batch_end(outputs, batch, batch_idx)
        progress.increment_completed()

    def on_run_end(self, sanity: bool = False) -> dict[str, float]:
        run = self.context
        run.sources[self.stage].end_epoch()
        metrics = run.results.epoch_end(self.stage)
        self._hooks.epoch_end()
        self._hooks.end()
        metrics.update(run.results.take_pending())
        if self.fields.was_training:
            run.module.train()
        run.results.stage = "train"
        if sanity:
            run.results.forget(metrics)  # sanity-check values must not steer callbacks or schedulers
            return {}
        run.log_metrics(metrics)
        return {key: float(value) for key, value in metrics.items()}
