"""``PredictionLoop``: run ``predict_step`` over the predict data and collect what it returns.

::

    START   --run [skip]-->               END     / on_skip
    START   --run-->                      ADVANCE / reset, on_run_start   # on_predict_model_eval, _start, _epoch_start
    ADVANCE --advance [done]-->           END     / on_run_end            # _epoch_end, _end; returns the predictions
    ADVANCE --advance [dataloader_done]--> ADVANCE / next_dataloader      # the next of several dataloaders
    ADVANCE --advance-->                  ADVANCE / fetch, <transfer hooks>, advance  # _batch_start, step, _batch_end

With several dataloaders (a list or dict), ``predict_step`` and the batch
hooks get ``dataloader_idx`` and the run returns one list of predictions per
dataloader, as in Lightning.  The module's submodules get their training
modes back at the end (Lightning has no ``on_predict_model_train``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .._step_args import takes_batch_idx
from ..machine import Table
from ..state import BatchProgress
from ._fetch import FetchingLoop
from .evaluation import EVALUATION_TABLE, capture_modes, check_dataloader_idx, restore_modes

if TYPE_CHECKING:
    from .._hooks import StageRelay
    from ..data import BatchSource

__all__ = ["PREDICTION_TABLE", "PredictionFields", "PredictionLoop"]

# The same rows as evaluation: per-batch work differs, the shape of the run does not.
PREDICTION_TABLE = Table(name="PredictionLoop", states=EVALUATION_TABLE.states, rows=EVALUATION_TABLE.rows)


@attrs.define
class PredictionFields:
    modes: dict[str, bool] = attrs.field(factory=dict)  # each submodule's training mode when the run started
    dataloader_idx: int = 0  # the dataloader running now (0 with one)
    loader_start: int = 0  # progress.current.ready when this dataloader began: batch_idx counts from here


class PredictionLoop(FetchingLoop):
    table = PREDICTION_TABLE
    progress_class = BatchProgress
    fields_class = PredictionFields

    def __init__(self) -> None:
        super().__init__()
        self._predictions: list[list[Any]] = []  # dataloaders x batches
        self._hooks: StageRelay | None = None  # the predict hooks, resolved when a run attaches
        self._sources: list[BatchSource] = []
        self._takes_batch_idx = True  # predict_step's signature has batch_idx (else it is called without it)

    def on_attach(self) -> None:
        run = self.context
        self._hooks = run.hooks.stage("predict")
        self._takes_batch_idx = takes_batch_idx(getattr(run.module, "predict_step", None))
        self.skip_transfer_hooks()
        check_dataloader_idx(run, "predict", len(run.stage_sources("predict")))

    @property
    def skip(self) -> bool:
        return not any(source.num_batches for source in self.context.stage_sources("predict"))

    @property
    def done(self) -> bool:
        return self.fields.dataloader_idx + 1 >= len(self._sources) and self.dataloader_done

    @property
    def dataloader_done(self) -> bool:
        source = self._sources[self.fields.dataloader_idx]
        return self.progress.current.completed - self.fields.loader_start >= source.num_batches

    @property
    def checkpointable(self) -> bool:
        # The predictions collected so far are tensors in memory, not state: a checkpoint taken mid-run could
        # not give them back, so requests wait until the run has returned them.
        return self.state != "ADVANCE"

    def on_skip(self) -> list[Any]:
        return []

    def reset(self) -> None:
        self.progress.reset_on_run()
        self.fields.dataloader_idx = self.fields.loader_start = 0
        self._sources = self.context.stage_sources("predict")
        self._predictions = [[] for _ in self._sources]

    def on_run_start(self) -> None:
        run = self.context
        self.fields.modes = capture_modes(run.module)
        self._enter()
        self._sources[0].start_epoch(0)
        self._hooks.start()
        self._hooks.epoch_start()

    def on_restart(self) -> None:
        self._sources = self.context.stage_sources("predict")
        self.context.resume_source("predict")
        self._enter()

    def _enter(self) -> None:
        self._hooks.model_eval()
        self.context.results.stage = "predict"

    def next_dataloader(self) -> None:
        self._sources[self.fields.dataloader_idx].end_epoch()
        self.fields.dataloader_idx += 1
        self.fields.loader_start = self.progress.current.ready
        self._sources[self.fields.dataloader_idx].start_epoch(0)

    def fetch(self) -> None:
        index = self.fields.dataloader_idx
        self.progress.increment_ready()
        self.hold(self._sources[index].next_batch(), index)

    def advance(self) -> None:
        run, progress, index = self.context, self.progress, self.fields.dataloader_idx
        batch_idx = progress.current.ready - 1 - self.fields.loader_start
        batch = self.take_batch()
        args = (batch, batch_idx, index) if len(self._sources) > 1 else (batch, batch_idx)
        self._hooks.batch_start(*args)
        progress.increment_started()
        with run.evaluation_grad_mode(), run.precision.autocast():
            step = run.module.predict_step
            outputs = step(*args) if self._takes_batch_idx else step(batch, *args[2:])
        progress.increment_processed()
        self._hooks.batch_end(outputs, *args)
        self._predictions[index].append(outputs)
        progress.increment_completed()

    def on_run_end(self) -> list[Any]:
        self._sources[self.fields.dataloader_idx].end_epoch()
        self._hooks.epoch_end()
        self._hooks.end()
        restore_modes(self.context.module, self.fields.modes)
        predictions, self._predictions = self._predictions, []
        return predictions if len(predictions) > 1 else predictions[0]
