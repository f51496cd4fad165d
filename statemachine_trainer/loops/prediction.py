"""``PredictionLoop``: run ``predict_step`` over the predict data and collect what it returns.

::

    START   --run [skip]-->      END     / on_skip
    START   --run-->             ADVANCE / reset, on_run_start     # eval mode, on_predict_start, _epoch_start
    ADVANCE --advance [done]-->  END     / on_run_end              # _epoch_end, _end; returns the predictions
    ADVANCE --advance-->         ADVANCE / advance                 # _batch_start, predict_step, _batch_end
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..machine import Table
from ..state import BatchProgress
from ._base import TrainerLoop
from .evaluation import EVALUATION_TABLE

if TYPE_CHECKING:
    from .._hooks import StageRelay

__all__ = ["PREDICTION_TABLE", "PredictionLoop"]

# The same rows as evaluation: per-batch work differs, the shape of the run does not.
PREDICTION_TABLE = Table(name="PredictionLoop", states=EVALUATION_TABLE.states, rows=EVALUATION_TABLE.rows)


class PredictionLoop(TrainerLoop):
    table = PREDICTION_TABLE
    progress_class = BatchProgress

    def __init__(self) -> None:
        super().__init__()
        self._predictions: list[Any] = []
        self._hooks: StageRelay | None = None  # the predict hooks, resolved when a run attaches

    def on_attach(self) -> None:
        self._hooks = self.context.hooks.stage("predict")

    @property
    def skip(self) -> bool:
        source = self.context.sources.get("predict")
        return source is None or source.num_batches == 0

    @property
    def done(self) -> bool:
        return self.progress.current.completed >= self.context.sources["predict"].num_batches

    @property
    def checkpointable(self) -> bool:
        # The predictions collected so far are tensors in memory, not state: a checkpoint taken mid-run could
        # not give them back, so requests wait until the run has returned them.
        return self.state != "ADVANCE"

    def on_skip(self) -> list[Any]:
        return []

    def reset(self) -> None:
        self.progress.reset_on_run()
        self._predictions = []

    def on_run_start(self) -> None:
        run = self.context
        run.module.eval()
        run.results.stage = "predict"
        run.sources["predict"].start_epoch(0)
        self._hooks.start()
        self._hooks.epoch_start()

    def on_restart(self) -> None:
        self.context.resume_source("predict")
        self.context.module.eval()

    def advance(self) -> None:
        run, progress = self.context, self.progress
        batch_idx = progress.current.ready
        progress.increment_ready()
        batch = run.sources["predict"].next_batch()
        self._hooks.batch_start(batch, batch_idx)
        progress.increment_started()
        with run.evaluation_grad_mode(), run.precision.autocast():
            outputs = run.module.predict_step(batch, batch_idx)
        progress.increment_processed()
        self._hooks.batch_end(outputs, batch, batch_idx)
        self._predictions.append(outputs)
        progress.increment_completed()

    def on_run_end(self) -> list[Any]:
        self.context.sources["predict"].end_epoch()
        self._hooks.epoch_end()
        self._hooks.end()
        predictions, self._predictions = self._predictions, []
        return predictions
