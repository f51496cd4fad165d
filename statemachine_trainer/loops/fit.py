"""``FitLoop``: the root of ``trainer.fit`` -- sanity check, then epochs until a stop condition holds.

::

    START        --run [skip]-->      END          / on_skip                        # nothing to train
    START        --run-->             SANITY_CHECK / reset, on_fit_start
    SANITY_CHECK --advance-->         ADVANCE      / sanity_check, on_train_start
    ADVANCE      --advance [done]-->  END          / on_train_end, on_fit_end
    ADVANCE      --advance-->         ADVANCE      / on_advance_start, advance, on_advance_end   # one epoch

``done`` is a pure predicate (max_epochs, max_steps, should_stop after
min_epochs) and ``stop_reason`` says which one fired.  Override ``advance`` and
``done`` to change what an epoch is, as with Lightning 1.5's loops.

Resuming (``fit(ckpt_path=...)``): as in Lightning, every fit call fires
``on_fit_start`` and ``on_train_start`` -- a resumed one from ``on_restart``,
for those of the two its checkpoint had already passed.  A checkpoint of a
fit that had ended (written after ``fit`` returned, or from its last hooks)
resumes to ADVANCE (``resume_position``), where ``done`` is asked again with
the new run's flags: a larger ``max_epochs`` or ``max_steps`` trains up to the
new total, the same flags end the fit at once.  The new steps come in new
epochs, even when ``max_steps`` had cut the last one short: that epoch's end
hooks ran and ``current_epoch`` counts it.  A checkpoint taken inside the cut
epoch (before its end) continues it instead.

The limits count *this run* of the loop (``progress.current`` epochs, steps
since ``fields.first_step``); the counters users read (``current_epoch``,
``global_step``) count every run.  A loop that wraps this one (K-fold, active
learning) runs it once per round: each round gets ``max_epochs`` epochs,
while the step count -- and so checkpoint names and ``latest`` -- keeps
increasing over the whole job.
"""

from __future__ import annotations

import warnings
from typing import Any

import attrs

from .._optim import ConfigError
from ..checkpoint import capture_rng, restore_rng
from ..machine import ADVANCE, END, START, Loop, Row, Table
from ..state import Position, Progress
from ._base import TrainerLoop
from .epoch import TrainingEpochLoop

__all__ = ["FIT_TABLE", "FitFields", "FitLoop"]

#: Table indices: START --> SANITY_CHECK, SANITY_CHECK --> ADVANCE, and the fit's last transition ADVANCE --> END.
_ENTER_ROW, _SANITY_ROW, _DONE_ROW = 1, 2, 3

FIT_TABLE = Table(
    name="FitLoop",
    states=(START, "SANITY_CHECK", ADVANCE, END),
    rows=(
        Row("run", START, END, conditions="skip", hooks="on_skip"),
        Row("run", START, "SANITY_CHECK", hooks=("reset", "on_fit_start")),
        Row("advance", "SANITY_CHECK", ADVANCE, hooks=("sanity_check", "on_train_start")),
        Row("advance", ADVANCE, END, conditions="done", hooks=("on_train_end", "on_fit_end")),
        Row("advance", ADVANCE, ADVANCE, hooks=("on_advance_start", "advance", "on_advance_end")),
    ),
)


@attrs.define
class FitFields:
    should_stop: bool = False  # a callback or the module asked to stop; honoured once min_epochs are done
    first_step: int = 0  # global_step when this run of the loop started: max_steps counts from here


class FitLoop(TrainerLoop):
    table = FIT_TABLE
    progress_class = Progress  # counts epochs: total.completed is the trainer's current_epoch
    fields_class = FitFields

    def __init__(self) -> None:
        super().__init__()
        self.epoch_loop: Loop = TrainingEpochLoop()
        # Only inside the sanity_check hook, in which checkpoints wait (checkpointable): never part of a state.
        self._sanity_checking = False
        self._stop_cause: str | None = None  # who asked to stop (request_stop); not state: the asker re-asks

    # -- the counters a run reads (Lightning's trainer.current_epoch, global_step, ...) -------
    @property
    def current_epoch(self) -> int:
        return self.progress.total.completed

    @property
    def global_step(self) -> int:
        return self.epoch_loop.global_step

    @property
    def epochs_this_run(self) -> int:
        """Epochs completed since this run of the loop started (one round, under an outer loop)."""
        return self.progress.current.completed

    @property
    def steps_this_run(self) -> int:
        """Optimizer steps since this run of the loop started: what ``max_steps`` limits."""
        return self.global_step - self.fields.first_step

    @property
    def should_stop(self) -> bool:
        return self.fields.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.fields.should_stop = bool(value)

    def request_stop(self, reason: str) -> None:
        """Set ``should_stop`` and say why, for ``stop_reason`` (e.g. the Timer of ``max_time``)."""
        self.fields.should_stop = True
        self._stop_cause = reason

    @property
    def can_stop_early(self) -> bool:
        """Whether ``should_stop`` may end the fit now: ``min_epochs`` complete and ``min_steps`` taken (this run)."""
        config = self.context.config
        return (self.epochs_this_run >= config.min_epochs
                and (config.min_steps is None or self.steps_this_run >= config.min_steps))

    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch under way is the epoch's last."""
        return self.epoch_loop.progress.is_last_batch

    @property
    def validating(self) -> bool:
        """Whether the epoch loop's validation is running now (Lightning's ``trainer.validating`` inside fit)."""
        val_loop = getattr(self.epoch_loop, "val_loop", None)
        return val_loop is not None and val_loop.running

    @property
    def epoch_progress(self) -> Progress:
        """Lightning's name for this loop's progress: epochs ready / started / processed / completed (read-only)."""
        return self.progress

    @property
    def max_epochs(self) -> int:
        """The ``max_epochs`` flag (-1: unlimited), read-only here: pass ``Trainer(max_epochs=...)``."""
        return self.trainer.config.max_epochs

    @property
    def min_epochs(self) -> int:
        return self.trainer.config.min_epochs

    @property
    def sanity_checking(self) -> bool:
        """True from ``on_sanity_check_start`` to ``on_sanity_check_end``, both included (as in Lightning)."""
        return self._sanity_checking

    @property
    def checkpointable(self) -> bool:
        # The sanity check runs on borrowed RNG states (see sanity_check): nothing in it may be checkpointed.
        return not self._sanity_checking

    # -- conditions ------------------------------------------------------------------------
    @property
    def skip(self) -> bool:
        run = self.context
        if "train" not in run.sources:
            raise ConfigError("The fit loop has no training data. Pass a dataloader to trainer.fit(), or, from a "
                              "loop that wraps the fit loop, call self.context.use_data(train=loader) before "
                              "running it.")
        config = run.config
        return config.max_epochs == 0 or config.max_steps == 0 or run.sources["train"].num_batches == 0

    @property
    def done(self) -> bool:
        return self.stop_reason() is not None

    def stop_reason(self) -> str | None:
        """Why the fit stops now (None while it goes on): the torchtnt-style twin of ``done``."""
        config = self.context.config
        epoch = self.epochs_this_run
        if config.max_steps != -1 and self.steps_this_run >= config.max_steps:
            return f"max_steps={config.max_steps} reached"
        if config.max_epochs != -1 and epoch >= config.max_epochs:
            return f"max_epochs={config.max_epochs} reached"
        if self.fields.should_stop and self.can_stop_early:
            return self._stop_cause or "should_stop was set (e.g. by EarlyStopping)"
        return None

    # -- resuming ------------------------------------------------------------------------------
    def resume_position(self, saved: Position) -> Position:
        """A checkpoint of an ended fit resumes at ADVANCE, so ``done`` sees the new run's flags."""
        if saved == Position(END) or (saved.state == ADVANCE and saved.row == _DONE_ROW):
            return Position(ADVANCE)
        return saved

    def on_restart(self) -> None:
        """A resumed fit is a new fit call: fire the start hooks its checkpoint had already passed.

        Between them, ``reload_dataloaders_every_n_epochs`` asks for the
        resumed epoch's loaders (Lightning sets its data up between the two).
        """
        position, run = self.position, self.context
        if position.state != START or (position.row == _ENTER_ROW and position.hook > 1):
            run.hooks.on_fit_start()
        run.reload_data(resumed=True)
        if position.state == ADVANCE or (position.row == _SANITY_ROW and position.hook > 1):
            run.hooks.on_train_start()

    # -- hooks -----------------------------------------------------------------------------
    def on_skip(self) -> None:
        self.context.hooks.on_fit_start()
        self.context.hooks.on_fit_end()

    def reset(self) -> None:
        self.progress.reset_on_run()
        self.fields.should_stop = False
        self._stop_cause = None
        self.fields.first_step = self.global_step

    def on_fit_start(self) -> None:
        self.context.hooks.on_fit_start()

    def sanity_check(self) -> None:
        """A few validation batches before training, leaving no trace on the run.

        Creating a DataLoader iterator draws a seed from torch's global RNG
        (even unshuffled), and ``validation_step`` may draw too: the RNG states
        are put back afterwards, so the training batch order and dropout masks
        are the same with and without a sanity check (Lightning: isolate_rng).
        """
        run = self.context
        if run.config.num_sanity_val_steps == 0 or not run.val_enabled:
            return
        rng = capture_rng()
        self._sanity_checking = True
        try:
            run.hooks.on_sanity_check_start()
            self.epoch_loop.val_loop.run(sanity=True)
            run.hooks.on_sanity_check_end()
        finally:
            self._sanity_checking = False
        restore_rng(rng)

    def on_train_start(self) -> None:
        _warn_if_modules_in_eval_mode(self.context.module)
        self.context.hooks.on_train_start()

    def on_advance_start(self) -> None:
        run = self.context
        run.reload_data()  # reload_dataloaders_every_n_epochs, before on_train_epoch_start as in Lightning
        self.progress.increment_ready()
        # No module.train() here: as in Lightning 2, training keeps the modes the user set (a frozen backbone
        # in eval mode stays so); evaluation gives each submodule back the mode it found.
        run.results.stage = "train"
        run.hooks.on_train_epoch_start()
        self.progress.increment_started()

    def advance(self) -> None:
        self.epoch_loop.run()
        self.progress.increment_processed()

    def on_advance_end(self) -> None:
        run = self.context
        metrics = run.results.epoch_end("train")
        run.hooks.on_train_epoch_end()
        if self.epoch_loop.reached_end:  # an epoch cut short by max_steps or a stop does not count (Lightning)
            run.step_schedulers("epoch")
        run.log_metrics({**metrics, **run.results.take_pending()})
        self.progress.increment_completed()

    def on_train_end(self) -> None:
        self.context.hooks.on_train_end()

    def on_fit_end(self) -> None:
        self.context.hooks.on_fit_end()


def _warn_if_modules_in_eval_mode(module: Any) -> None:
    """Training keeps the modes it finds (Lightning 2): say so when some submodules are in eval mode."""
    in_eval = [name or type(module).__name__ for name, sub in module.named_modules() if not sub.training]
    if in_eval:
        warnings.warn(f"Found {len(in_eval)} module(s) in eval mode at the start of training ({', '.join(in_eval[:5])}"
                      f"{', ...' if len(in_eval) > 5 else ''}); they stay so while training, as in Lightning. If this "
                      "is intentional (e.g. a frozen backbone), ignore this warning; otherwise call module.train().",
                      UserWarning, stacklevel=2)
