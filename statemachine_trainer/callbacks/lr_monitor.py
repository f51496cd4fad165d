"""``LearningRateMonitor``: send every optimizer param group's learning rate to the loggers.

Names follow Lightning: ``lr-<OptimizerClass>`` for a one-group optimizer,
``lr-<OptimizerClass>/pg<i>`` for each group of a several-group one, and a
``-<n>`` suffix for the second, third... optimizer of the same class
(``lr-Adam``, ``lr-Adam-1``).  Names are worked out once, at setup.

When: ``logging_interval="step"`` logs before each optimizer step, every
``log_every_n_steps`` steps (the trainer's own step-logging rhythm);
``"epoch"`` logs at the start of each training epoch; ``None`` follows each
optimizer's scheduler interval ("step" for an optimizer without a scheduler).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .._optim import ConfigError
from ._base import Callback

if TYPE_CHECKING:
    from .._run import Run
    from ..module import TrainingModule

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor(Callback):
    """Log learning rates through ``trainer.log_metrics`` (so a logger is required)."""

    def __init__(self, logging_interval: str | None = None) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ConfigError(f"LearningRateMonitor(logging_interval={logging_interval!r}): use 'step', 'epoch' "
                              "or None (follow each scheduler's interval).")
        self.logging_interval = logging_interval
        self._names: list[tuple[str, ...]] = []  # per optimizer, one metric name per param group
        self._intervals: list[str] = []  # per optimizer, "step" or "epoch"
        self._last_step_logged = -1  # batches inside an accumulation window share a step: log it once

    @property
    def state_key(self) -> str:
        settings = {"logging_interval": self.logging_interval}
        return f"LearningRateMonitor{settings!r}"

    def setup(self, trainer: Run, module: TrainingModule, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise ConfigError("LearningRateMonitor needs a logger to write to, but the Trainer has none "
                              "(logger=False or fast_dev_run). Pass a logger, or remove LearningRateMonitor.")
        self._names = []  # the optimizers do not exist yet (configure_optimizers follows setup): named at first use
        self._last_step_logged = -1

    def on_train_batch_start(self, trainer: Run, module: TrainingModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step_logged or step % trainer.log_every_n_steps:
            return
        self._last_step_logged = step
        self._log(trainer, "step")

    def on_train_epoch_start(self, trainer: Run, module: TrainingModule) -> None:
        self._log(trainer, "epoch")

    def _log(self, trainer: Run, interval: str) -> None:
        if not self._names:
            self._name_optimizers(trainer)
        values: dict[str, float] = {}
        for optimizer, names, when in zip(trainer.optimizers, self._names, self._intervals):
            if when == interval:
                values.update({name: float(group["lr"]) for name, group in zip(names, optimizer.param_groups)})
        if values:
            trainer.log_metrics(values)


    def _name_optimizers(self, trainer: Run) -> None:
        optimizers = trainer.optimizers
        self._names = _metric_names(optimizers)
        self._intervals = [self.logging_interval or _scheduler_interval(trainer, i) for i in range(len(optimizers))]


def _metric_names(optimizers: list[Any]) -> list[tuple[str, ...]]:
    seen: Counter[str] = Counter()
    names = []
    for optimizer in optimizers:
        cls = type(optimizer).__name__
        base = f"lr-{cls}" if not seen[cls] else f"lr-{cls}-{seen[cls]}"
        seen[cls] += 1
        groups = len(optimizer.param_groups)
        names.append((base,) if groups == 1 else tuple(f"{base}/pg{i}" for i in range(groups)))
    return names


def _scheduler_interval(trainer: Run, optimizer_index: int) -> str:
    for config in trainer.lr_scheduler_configs:
        if config.optimizer_index == optimizer_index:
            return config.interval
    return "step"
