"""``Timer``: stop training once a time budget is spent (``Trainer(max_time=...)`` adds one).

As Lightning's ``Timer``: the budget is ``"DD:HH:MM:SS"``, a ``timedelta`` or
a dict of timedelta keywords; it is checked after every training batch
(``interval="step"``) or epoch (``"epoch"``), and once when a fit starts (a
resumed run whose budget is already spent stops at once).  Training then
stops at that batch boundary, through the fit loop's ``should_stop`` (so
``min_epochs`` still holds) and ``FitLoop.stop_reason`` says
``"max_time=... reached"``.

The elapsed training time is this callback's state: it is saved in
checkpoints and a resumed run continues counting from it, so ``max_time``
bounds the whole job, not each process.  Time spent outside training
(validation runs inside it count, as in Lightning) is not counted.

Under DDP every rank must stop at the same batch, so the ranks agree on
"spent on any rank".  At batch ends that agreement is one batch late
(:class:`~statemachine_trainer.distributed.AnyRankOneCallLate`: a
non-blocking all-reduce read at the next batch end), so no step waits on the
other ranks; at a fit's start and at epoch ends it is a blocking all-reduce.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from .._console import info
from .._flags import parse_duration
from .._optim import ConfigError
from .._refused import UnsupportedError
from ._base import Callback

__all__ = ["Timer"]


class Timer(Callback):
    def __init__(self, duration: str | timedelta | dict[str, int] | None = None, interval: str = "step",
                 verbose: bool = True) -> None:
        if interval not in ("step", "epoch"):
            raise ConfigError(f"Timer(interval={interval!r}): use 'step' (check after every training batch) or "
                              "'epoch'.")
        self.duration = parse_duration(duration, "Timer(duration)")  # seconds, or None: never stops
        self.interval, self.verbose = interval, verbose
        self._offset = 0.0  # training seconds before this process's count began (from a checkpoint)
        self._since: float | None = None  # time.monotonic() when this process began counting
        self._stopped_at: float | None = None  # the count, frozen when training ended
        self._agreement: Any = None  # DDP, interval="step": the ranks' AnyRankOneCallLate while training runs

    def time_elapsed(self, stage: str = "train") -> float:
        """Training seconds so far, across resumes (Lightning's ``stage`` argument: "train", the one counted)."""
        _check_stage(stage)
        if self._stopped_at is not None:
            return self._stopped_at
        running = 0.0 if self._since is None else time.monotonic() - self._since
        return self._offset + running

    def time_remaining(self, stage: str = "train") -> float | None:
        """Seconds of the budget left (None without one); ``stage`` as in :meth:`time_elapsed`."""
        _check_stage(stage)
        return None if self.duration is None else self.duration - self.time_elapsed()

    # -- hooks ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, module: Any) -> None:
        self._stopped_at = None
        self._check(trainer)  # a budget spent before a resume stops the fit before it trains

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._since = time.monotonic()  # training time starts here, after the sanity check (Lightning's rule)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.interval == "step":
            self._start_if_resumed()
            self._check(trainer, late=True)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self.interval == "epoch":
            self._start_if_resumed()
            self._check(trainer)

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self._stopped_at = self.time_elapsed()
        if self._agreement is not None:  # every rank ends training at the same batch: all wait here
            self._agreement, agreement = None, self._agreement
            agreement.close()

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        if self._agreement is not None:  # a failed or preempted run: a peer may never complete the all-reduce
            self._agreement.abandon()
            self._agreement = None

    def _start_if_resumed(self) -> None:
        # A fit resumed past on_train_start from a checkpoint without this Timer's state: count from here.
        if self._since is None:
            self._since = time.monotonic()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": self.time_elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A resume after on_fit_start ran: count from now on top of the saved time.
        self._offset, self._since, self._stopped_at = float(state["time_elapsed"]), time.monotonic(), None

    def _check(self, trainer: Any, late: bool = False) -> None:
        """Stop training if the budget is spent (under DDP: on any rank; ``late``: as agreed one batch ago)."""
        if self.duration is None or trainer.fit_loop is None:
            return
        spent = self.time_elapsed() >= self.duration
        if trainer.strategy.world_size > 1:  # every rank must stop at the same batch
            spent = self._agreed_late(spent) if late else _any_rank_now(trainer, spent)
        if not spent:
            return
        elapsed = timedelta(seconds=int(self.time_elapsed()))
        trainer.fit_loop.request_stop(f"max_time={timedelta(seconds=self.duration)} reached (elapsed {elapsed})")
        if self.verbose and trainer.is_global_zero:
            info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")


    def _agreed_late(self, spent: bool) -> bool:
        if self._agreement is None:
            from ..distributed import AnyRankOneCallLate

            self._agreement = AnyRankOneCallLate("the Timer's max_time check")
        return self._agreement(spent)


def _any_rank_now(trainer: Any, spent: bool) -> bool:
    """Whether the budget is spent on any rank, by a blocking all-reduce (at fit start and epoch ends only)."""
    import torch

    return bool(trainer.strategy.reduce(torch.tensor(float(spent)), "max").item())


def _check_stage(stage: str) -> None:
    """Lightning's Timer times every stage; this one counts training (validation inside it included) only."""
    if stage != "train":
        raise UnsupportedError(f"Timer.time_elapsed({stage!r}): only training time is counted here (stage='train'); "
                               "time other stages yourself, e.g. with time.perf_counter() in on_validation_start/end.")
