"""``EarlyStopping``: ask the fit to stop when a monitored value stops improving.

Each check reads ``monitor`` and, in this order, stops the run when

1. the value is NaN or infinite (``check_finite``);
2. it reached ``stopping_threshold`` (good enough: no need to go on);
3. it passed ``divergence_threshold`` (hopeless: no need to go on);
4. it did not beat the best so far by more than ``min_delta`` in ``patience``
   checks in a row.

Stopping means ``trainer.should_stop = True``: the fit ends once the current
epoch is done (and ``min_epochs`` are reached).  ``stop_reason`` says which
rule fired, in words.

When the checks happen: after each validation, or at the end of each
training epoch when there is no validation data, when validation runs once
at the end of every epoch (then the epoch's training values are final too),
or when ``check_on_train_epoch_end=True``.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import torch

from .._optim import ConfigError
from ._base import Callback

if TYPE_CHECKING:
    from .._run import Run
    from ..module import TrainingModule

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stop ``fit`` when ``monitor`` has not improved for ``patience`` checks.

    ``strict=False`` lets a check pass silently (with a warning) when the value
    was not logged; the default raises the trainer's ``ConfigError`` naming the
    key and listing what was logged.
    """

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, mode: str = "min",
                 strict: bool = True, check_finite: bool = True, stopping_threshold: float | None = None,
                 divergence_threshold: float | None = None, check_on_train_epoch_end: bool | None = None) -> None:
        if not (isinstance(monitor, str) and monitor):
            raise ConfigError(f"EarlyStopping(monitor={monitor!r}) must be the name of a logged value.")
        if mode not in ("min", "max"):
            raise ConfigError(f"EarlyStopping(mode={mode!r}): use 'min' or 'max'.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ConfigError(f"EarlyStopping(patience={patience!r}) must be an int >= 0.")
        self.monitor, self.mode, self.strict, self.check_finite = monitor, mode, strict, check_finite
        self.min_delta = abs(float(min_delta))  # an improvement must beat the best by more than this
        self.patience = patience
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.check_on_train_epoch_end = check_on_train_epoch_end
        # What the state_dict holds: --------------------------------------------------------
        self.wait_count = 0  # checks in a row without improvement; stop when it reaches patience
        self._best = math.inf if mode == "min" else -math.inf  # the best value seen so far (best_score)
        self.stopped_epoch = 0  # the epoch in which this callback asked to stop; 0 if it has not
        self.stop_reason: str | None = None  # why it asked to stop, in words; None if it has not

    @property
    def best_score(self) -> torch.Tensor:
        """The best value seen so far, as a tensor (Lightning's type: ``es.best_score.item()`` works)."""
        return torch.tensor(self._best)

    @property
    def state_key(self) -> str:
        settings = {"monitor": self.monitor, "mode": self.mode}
        return f"EarlyStopping{settings!r}"

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "best_score": self._best, "stopped_epoch": self.stopped_epoch,
                "stop_reason": self.stop_reason, "patience": self.patience}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait_count = int(state["wait_count"])
        self._best = float(state["best_score"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.stop_reason = state["stop_reason"]
        self.patience = int(state["patience"])

    # -- hooks ----------------------------------------------------------------------------------
    def _on_epoch_end(self, trainer: Run) -> bool:
        """Whether the check runs at the epoch's end (else after each validation); read when the hooks run."""
        if self.check_on_train_epoch_end is not None:
            return self.check_on_train_epoch_end
        return trainer.validation_ends_each_epoch

    def on_train_epoch_end(self, trainer: Run, module: TrainingModule) -> None:
        if self._on_epoch_end(trainer):
            self._check(trainer)

    def on_validation_end(self, trainer: Run, module: TrainingModule) -> None:
        if not self._on_epoch_end(trainer) and trainer.state == "fit" and not trainer.sanity_checking:
            self._check(trainer)

    # -- the check ---------------------------------------------------------------------------------
    def _check(self, trainer: Run) -> None:
        if trainer.fast_dev_run or trainer.state != "fit":
            return
        value = self._current(trainer)
        if value is None:
            return
        reason = self.evaluate(value)
        if reason is not None:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stop_reason = reason

    def _current(self, trainer: Run) -> float | None:
        if self.strict or self.monitor in trainer.callback_metrics:
            return float(trainer.monitored(self.monitor, "EarlyStopping"))
        warnings.warn(f"EarlyStopping could not check: {self.monitor!r} was not logged. Log it, or set "
                      "strict=True to make this an error.", RuntimeWarning, stacklevel=2)
        return None

    def evaluate(self, current: float) -> str | None:
        """Update the best score and wait count with ``current``; return why to stop, or None to go on."""
        name, best = self.monitor, self._best
        if self.check_finite and not math.isfinite(current):
            return f"Monitored metric {name} = {current} is not finite. Previous best value was {best:.3f}."
        if self.stopping_threshold is not None and self._better(current, self.stopping_threshold, 0.0):
            return (f"Stopping threshold reached: {name} = {current:.3f} is "
                    f"{'<' if self.mode == 'min' else '>'} {self.stopping_threshold}.")
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, current, 0.0):
            return (f"Divergence threshold reached: {name} = {current:.3f} is "
                    f"{'>' if self.mode == 'min' else '<'} {self.divergence_threshold}; the run is diverging.")
        if self._better(current, best, self.min_delta):
            self._best, self.wait_count = current, 0
            return None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return (f"Monitored metric {name} did not improve by more than {self.min_delta} in the last "
                    f"{self.wait_count} checks. Best score: {best:.3f}.")
        return None

    def _better(self, a: float, b: float, delta: float) -> bool:
        """``a`` beats ``b`` by more than ``delta`` in this mode."""
        return a < b - delta if self.mode == "min" else a > b + delta
