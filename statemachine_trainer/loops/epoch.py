"""``TrainingEpochLoop``: one pass over the training data, with validation inside it when due.

::

    START    --run-->                            ADVANCE  / reset, on_run_start
    ADVANCE  --advance [stop_validation_due]-->  VALIDATE                   # stopping: validate first
    ADVANCE  --advance [done]-->                 END      / on_run_end
    ADVANCE  --advance [val_due]-->              VALIDATE / FETCH, advance  # a batch, then validation
    ADVANCE  --advance-->                        ADVANCE  / FETCH, advance  # a batch
    VALIDATE --validate [skipped]-->             END      / on_run_end     # the batch returned -1
    VALIDATE --validate [stopping]-->            END      / run_validation, on_run_end
    VALIDATE --validate-->                       ADVANCE  / run_validation

Validation is a state, not a flag: a checkpoint taken during a mid-epoch
validation says so (``VALIDATE``), and the diagram shows where it happens.
``val_due`` looks at the batch about to run: validation follows it when it
closes a ``val_check_interval`` or is the epoch's last batch.  With
``check_val_every_n_epoch=None`` the interval counts the fit's batches
instead (``progress.total``, checkpointed, so a resume keeps the count) and
epoch ends are not special, as Lightning's ``total_batch_idx`` rule.

``trainer.should_stop`` set during a batch ends the epoch after it (once
``min_epochs`` allow), but, as in Lightning 2, not before this epoch's
validation runs (``stop_validation_due``), so checkpoint and early-stopping
monitors see the epoch's last weights.  Validation that is already due after
that batch runs once: ``stopping`` sends it on to END.

``on_train_batch_start`` returning -1 ends this epoch only: ``reset`` clears
the batch loop's ``skipped`` as the next epoch begins.  As in Lightning, the
epoch's remaining validation goes with it, even when it was due after that
batch (``skipped`` in VALIDATE).

``FETCH`` (``loops/_fetch.py``) takes the next batch and runs the module's
batch transfer hooks on it.  A ``None`` batch (a loader may yield one on
purpose) is not given to the model: as in Lightning, the loop warns, skips
``on_train_batch_start`` and the step, and calls ``on_train_batch_end(None,
None, batch_idx)``; the batch still counts.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..machine import ADVANCE, END, START, Loop, Row, Table
from ..state import BatchProgress
from ._fetch import FETCH, FetchingLoop
from .batch import BatchLoop
from .evaluation import EvaluationLoop

__all__ = ["EPOCH_TABLE", "TrainingEpochLoop"]

EPOCH_TABLE = Table(
    name="TrainingEpochLoop",
    states=(START, ADVANCE, "VALIDATE", END),
    rows=(
        Row("run", START, ADVANCE, hooks=("reset", "on_run_start")),
        Row("advance", ADVANCE, "VALIDATE", conditions="stop_validation_due"),
        Row("advance", ADVANCE, END, conditions="done", hooks="on_run_end"),
        Row("advance", ADVANCE, "VALIDATE", conditions="val_due", hooks=(*FETCH, "advance")),
        Row("advance", ADVANCE, ADVANCE, hooks=(*FETCH, "advance")),
        Row("validate", "VALIDATE", END, conditions="skipped", hooks="on_run_end"),
        Row("validate", "VALIDATE", END, conditions="stopping", hooks=("run_validation", "on_run_end")),
        Row("validate", "VALIDATE", ADVANCE, hooks="run_validation"),
    ),
)


class TrainingEpochLoop(FetchingLoop):
    table = EPOCH_TABLE
    progress_class = BatchProgress

    def __init__(self) -> None:
        super().__init__()
        self.batch_loop: Loop = BatchLoop()
        self.val_loop: Loop = EvaluationLoop("validate")
        self._across_epochs = False  # check_val_every_n_epoch=None (set as a run attaches)
        self._per_step: int | None = None  # global_batch_size: batches per optimizer step (set as a run attaches)

    @property
    def checkpointable(self) -> bool:
        """With ``global_batch_size``: only between two transitions at an optimizer-step boundary.

        There the state set is the same function of the global position at
        any world size (no batch in flight, no partial gradient), so every
        checkpoint of such a run can resume at another world size (``_elastic``).
        """
        if not super().checkpointable:
            return False
        return self._per_step is None or (self.position.row is None and self.at_step_boundary)

    @property
    def at_step_boundary(self) -> bool:
        """No optimizer step is half-accumulated: always, unless ``global_batch_size`` fixes the accumulation.

        Under DDP the ranks also vote on preemption only here, so a
        preemption checkpoint of such a run is at a step boundary too.
        """
        per_step = self._per_step
        return per_step is None or self.progress.current.ready % per_step == 0

    @property
    def batch_progress(self) -> BatchProgress:
        """Lightning's name for this loop's progress: batches ready / started / processed / completed (read-only)."""
        return self.progress

    def on_attach(self) -> None:
        self.skip_transfer_hooks()
        # check_val_every_n_epoch=None: validation counts the fit's batches, not the epoch's (once per run).
        self._across_epochs = self.context.config.check_val_every_n_epoch is None
        # Batches per optimizer step when the global batch is fixed (checkpoints wait for a step boundary), else None.
        self._per_step = self.context.accumulate_grad_batches if self.context.config.global_batch_size else None

    # -- conditions ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        run = self.context
        if self.progress.current.completed >= run.sources["train"].num_batches:
            return True
        if self.batch_loop.fields.skipped:
            return True
        config = run.config
        if config.max_steps != -1 and run.fit_loop.steps_this_run >= config.max_steps:
            return True
        fit_loop = run.fit_loop
        return fit_loop.should_stop and fit_loop.can_stop_early  # self.stopping, inlined

    @property
    def skipped(self) -> bool:
        """``on_train_batch_start`` returned -1 for the batch just run: the epoch ends here."""
        return self.batch_loop.fields.skipped

    @property
    def stopping(self) -> bool:
        """``should_stop`` is set and honoured now: ``min_epochs`` epochs are complete and ``min_steps`` steps
        taken (``FitLoop.can_stop_early``).

        So with ``min_epochs=2`` a stop requested in the second epoch lets it finish.
        """
        run = self.context
        return run.should_stop and run.fit_loop.can_stop_early

    @property
    def stop_validation_due(self) -> bool:
        """Stopping after a batch that validation does not follow anyway: validate before the epoch ends."""
        if not self.context.fit_loop.should_stop:  # first: the per-batch cost of this row is one flag read
            return False
        done = self.progress.current.completed
        if not done or not self.stopping or self.batch_loop.fields.skipped or not self._validation_epoch():
            return False
        return not self._validates_after(done)

    @property
    def val_due(self) -> bool:
        return self._validation_epoch() and self._validates_after(self.progress.current.ready + 1)

    def _validation_epoch(self) -> bool:
        run = self.context
        every = run.config.check_val_every_n_epoch
        return run.val_enabled and (every is None or (run.current_epoch + 1) % every == 0)

    def _validates_after(self, number: int) -> bool:
        """Whether the schedule validates after the epoch's ``number``-th batch (counted from 1).

        ``check_val_every_n_epoch=None``: every ``val_check_interval`` batches
        of the fit (Lightning's ``total_batch_idx``) -- the epoch's number plus
        the batches of the epochs before it, which ``progress.total`` counts
        and ``progress.current`` does not; otherwise every
        ``val_check_interval`` batches of the epoch, and after its last batch.
        """
        run = self.context
        if self._across_epochs:
            total, current = self.progress.total, self.progress.current
            return (number + total.ready - current.ready) % run.val_check_batches == 0
        return number % run.val_check_batches == 0 or number == run.sources["train"].num_batches

    @property
    def reached_end(self) -> bool:
        """The epoch ran to its last batch, or a -1 from ``on_train_batch_start`` ended it (Lightning's
        ``_num_ready_batches_reached``): not cut short by ``max_steps`` or a stop.

        Epoch-interval schedulers step only then, as in Lightning.  Read from
        saved fields, so a resumed run decides as the uninterrupted one.
        """
        progress = self.progress
        return (progress.is_last_batch or self.batch_loop.fields.skipped
                or progress.current.ready >= self.context.sources["train"].num_batches)

    @property
    def global_step(self) -> int:
        return self.batch_loop.optimizer_steps

    # -- hooks -------------------------------------------------------------------------------
    def reset(self) -> None:
        self.progress.reset_on_run()
        self.progress.is_last_batch = False
        self.batch_loop.fields.skipped = False  # a -1 from on_train_batch_start ended the previous epoch only

    def on_run_start(self) -> None:
        self.context.sources["train"].start_epoch(self.context.current_epoch)

    def on_restart(self) -> None:
        self.context.resume_source("train")
        done = self.progress.current.completed
        source = self.context.sources["train"]
        if 0 < done < source.num_batches and not source.positioned:
            # Without the loader's position a mid-epoch resume cannot be exact: say so.  A checkpoint taken after
            # the epoch's last batch (done == num_batches) reads no more of this epoch, so it needs no position.
            why = ("a checkpoint that holds no position for its loader (written with resumable_data=False, or "
                   "before it existed)" if source.resumable else
                   "a loader that has no position (no state_dict/load_state_dict)")
            warnings.warn(f"Resuming in the middle of an epoch ({done} of {source.num_batches} batches done) from "
                          f"{why}: the rest of this epoch restarts the loader and is not the uninterrupted run's. "
                          "Wrap the loader in statemachine_trainer.data.ResumableLoader (or keep Trainer("
                          "resumable_data=True) with a plain DataLoader) for an exact resume.", stacklevel=2)

    def fetch(self) -> None:
        self.progress.increment_ready()
        self.fetch_from(self.context.sources["train"], 0)

    def advance(self) -> Any:
        run, progress = self.context, self.progress
        source = run.sources["train"]
        batch_idx = progress.current.ready - 1
        restarting = self._machine.restarting  # self.restarting, without the property's generic lookup
        if restarting:
            # Re-entered on resume: the checkpoint was taken while this batch was being processed, and its
            # counters were already moved.  Fetch it again (and transfer it again) instead of the next one.
            source.refetch()
            batch = self.transfer(source.next_batch(), 0)
        else:
            batch = self.take_batch()
        run.results.new_batch(batch)
        progress.is_last_batch = batch_idx + 1 >= source.num_batches
        run.optimization.begin_batch(batch_idx, progress.total.ready - 1, progress.is_last_batch)
        if not restarting:
            progress.increment_started()
        if batch is None:
            _warn_none_batch()
            run.hooks.on_train_batch_end(None, None, batch_idx)
        else:
            self.batch_loop.run(batch, batch_idx)
        progress.increment_processed()
        # Step-interval schedulers are due if an optimizer stepped on this batch: the batch loop's fields say so,
        # also after a resume (asked only when there are schedulers at all).
        if batch is not None and run.optimization.setup.schedulers and self.batch_loop.stepped:
            run.step_schedulers("step")
        progress.increment_completed()
        self.done_with_batch()
        if progress.total.completed % run.config.log_every_n_steps == 0:
            run.log_step_metrics()

    def run_validation(self) -> None:
        self.val_loop.run()

    def on_run_end(self) -> None:
        self.context.sources["train"].end_epoch()


def _warn_none_batch() -> None:
    # Lightning's words, so a search for them finds the explanation; shown once per place (warnings' default).
    warnings.warn("train_dataloader yielded None. If this was on purpose, ignore this warning: the batch is "
                  "skipped (no on_train_batch_start, no training_step, no optimizer step; on_train_batch_end "
                  "gets outputs=None).", UserWarning, stacklevel=2)
