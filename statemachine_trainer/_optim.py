"""What ``configure_optimizers`` returned, in one checked shape.

Users return many shapes (one optimizer, a list, two lists, dicts with
``lr_scheduler``...).  They are normalised here, once, at ``fit()`` start, so
the loops see only :class:`OptimizerSetup` and a wrong shape fails before any
training with a message that lists the shapes that work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

__all__ = ["ConfigError", "OptimizerSetup", "SchedulerConfig", "parse_optimizers"]

_SUPPORTED = (
    "Return one of: an optimizer; a list of optimizers; two lists ([optimizers], [schedulers]); "
    "a dict {'optimizer': opt, 'lr_scheduler': sched or {'scheduler': sched, 'interval': 'epoch'|'step', "
    "'frequency': n, 'monitor': key}, 'frequency': n}; or a list of such dicts."
)


class ConfigError(ValueError):
    """The Trainer or module was configured in a way that cannot run; the message says how to fix it."""


@attrs.define
class SchedulerConfig:
    scheduler: Any  # a torch LR scheduler (ReduceLROnPlateau included)
    interval: str = "epoch"  # "epoch": stepped after each training epoch; "step": after each optimizer step
    frequency: int = 1  # stepped every `frequency` intervals; >= 1
    monitor: str | None = None  # metric passed to ReduceLROnPlateau.step(); required for it
    optimizer_index: int = 0  # which optimizer the scheduler adjusts

    @property
    def reduce_on_plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


@attrs.define
class OptimizerSetup:
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[SchedulerConfig]
    frequencies: list[int] | None = None  # Lightning 1.x: optimizer i is used for frequencies[i] batches in turn

    def active_optimizers(self, batch_number: int) -> range | tuple[int]:
        """Indices of the optimizers that step on the ``batch_number``-th batch of the fit (0-based)."""
        if self.frequencies is None:
            return range(len(self.optimizers))
        position = batch_number % sum(self.frequencies)
        for index, frequency in enumerate(self.frequencies):
            if position < frequency:
                return (index,)
            position -= frequency
        raise AssertionError("unreachable: position < sum(frequencies)")


def parse_optimizers(returned: Any) -> OptimizerSetup:
    """Normalise ``configure_optimizers()``'s return value; raise ConfigError for anything else."""
    if isinstance(returned, torch.optim.Optimizer):
        return OptimizerSetup([returned], [])
    if isinstance(returned, Mapping):
        return _from_dicts([returned])
    if isinstance(returned, Sequence) and not isinstance(returned, str):
        items = list(returned)
        if len(items) == 2 and all(isinstance(x, (list, tuple)) for x in items):
            return _from_lists(list(items[0]), list(items[1]))
        if items and all(isinstance(x, Mapping) for x in items):
            return _from_dicts(items)
        if items and all(isinstance(x, torch.optim.Optimizer) for x in items):
            return OptimizerSetup(items, [])
    raise ConfigError(f"configure_optimizers() returned {_describe(returned)}, which is not supported. {_SUPPORTED}")


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of [{', '.join(type(x).__name__ for x in value)}]"
    return f"{type(value).__name__} ({value!r:.60})"


def _from_lists(optimizers: list[Any], schedulers: list[Any]) -> OptimizerSetup:
    _check_optimizers(optimizers)
    configs = [_scheduler_config(s, optimizers, None) for s in schedulers]
    return OptimizerSetup(optimizers, configs)


def _from_dicts(dicts: list[Mapping[str, Any]]) -> OptimizerSetup:
    optimizers, configs, frequencies = [], [], []
    for number, entry in enumerate(dicts):
        unknown = set(entry) - {"optimizer", "lr_scheduler", "frequency", "monitor"}
        if unknown or "optimizer" not in entry:
            raise ConfigError(f"configure_optimizers() dict #{number} has keys {sorted(entry)}; it needs "
                              f"'optimizer' and may have 'lr_scheduler', 'frequency', 'monitor'. {_SUPPORTED}")
        optimizers.append(entry["optimizer"])
        if "frequency" in entry:
            frequencies.append(_positive_int(entry["frequency"], f"dict #{number} 'frequency'"))
    _check_optimizers(optimizers)
    if frequencies and len(frequencies) != len(optimizers):
        raise ConfigError("configure_optimizers(): give a 'frequency' for every optimizer dict or for none "
                          f"({len(frequencies)} of {len(optimizers)} have one).")
    for number, entry in enumerate(dicts):
        if entry.get("lr_scheduler") is not None:
            config = _scheduler_config(entry["lr_scheduler"], optimizers, entry.get("monitor"))
            configs.append(config)
    return OptimizerSetup(optimizers, configs, frequencies or None)


def _check_optimizers(optimizers: list[Any]) -> None:
    bad = [type(o).__name__ for o in optimizers if not isinstance(o, torch.optim.Optimizer)]
    if bad or not optimizers:
        raise ConfigError(f"configure_optimizers() gave {', '.join(bad) or 'no optimizer'} where a "
                          f"torch.optim.Optimizer is needed. {_SUPPORTED}")


def _scheduler_config(value: Any, optimizers: list[torch.optim.Optimizer], monitor: str | None) -> SchedulerConfig:
    if isinstance(value, Mapping):
        unknown = set(value) - {"scheduler", "interval", "frequency", "monitor", "name", "strict"}
        if unknown or "scheduler" not in value:
            raise ConfigError(f"an 'lr_scheduler' dict has keys {sorted(value)}; it needs 'scheduler' and may have "
                              "'interval', 'frequency', 'monitor'.")
        scheduler = value["scheduler"]
        interval = value.get("interval", "epoch")
        frequency = _positive_int(value.get("frequency", 1), "lr_scheduler 'frequency'")
        monitor = value.get("monitor", monitor)
    else:
        scheduler, interval, frequency = value, "epoch", 1
    if interval not in ("epoch", "step"):
        raise ConfigError(f"lr_scheduler 'interval' is {interval!r}; use 'epoch' or 'step'.")
    owner = getattr(scheduler, "optimizer", None)
    index = next((i for i, opt in enumerate(optimizers) if opt is owner), None)
    if index is None:
        raise ConfigError(f"the scheduler {type(scheduler).__name__} does not wrap any optimizer returned by "
                          "configure_optimizers(); build it from one of them.")
    config = SchedulerConfig(scheduler, interval, frequency, monitor, index)
    if config.reduce_on_plateau and not monitor:
        raise ConfigError("ReduceLROnPlateau needs a metric: return {'optimizer': opt, 'lr_scheduler': "
                          "{'scheduler': sched, 'monitor': 'val_loss'}} naming a key you self.log().")
    return config


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"configure_optimizers(): {what} must be an int >= 1, got {value!r}.")
    return value
