"""What ``configure_optimizers`` returned, in one checked shape.

Users return many shapes (one optimizer, a list, two lists, dicts with
``lr_scheduler``...).  They are normalised here, once, at ``fit()`` start, so
the loops see only :class:`OptimizerSetup` and a wrong shape fails before any
training with a message that lists the shapes that work.

Two modes read the same shapes differently, as in Lightning.  In automatic
optimization the Trainer steps the schedulers, so it must know how: a
ReduceLROnPlateau needs its ``monitor``, and a scheduler that is not a torch
``LRScheduler`` needs the module's ``lr_scheduler_step`` override.  In manual
optimization the user steps them, so neither is required, and ``monitor`` /
``strict`` are ignored with a warning.  Every scheduler needs ``state_dict``
and ``load_state_dict`` in both modes: a checkpoint holds its state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from ._hook_spec import is_default_hook

__all__ = ["ConfigError", "NoOptimizer", "OptimizerSetup", "SchedulerConfig", "configure_optimizers",
           "parse_optimizers"]

_SUPPORTED = (
    "Return one of: an optimizer; a list of optimizers; two lists ([optimizers], [schedulers]) or "
    "([optimizers], scheduler); "
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
    monitor: str | None = None  # metric passed to ReduceLROnPlateau.step(); required for it (automatic mode)
    optimizer_index: int = 0  # which optimizer the scheduler adjusts
    strict: bool = True  # a monitor never logged: raise (True) or warn and skip this step (False)

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


class NoOptimizer(torch.optim.Optimizer):
    """What a fit uses when ``configure_optimizers()`` returns None (Lightning's ``_MockOptimizer``).

    Its step changes nothing (it runs the closure it is given, so the loss is
    still computed), yet counts like any step, so ``global_step`` and
    ``max_steps`` behave as in Lightning.  Unlike Lightning's, it holds the
    module's parameters, so its ``zero_grad`` clears their gradients after
    each step as every optimizer here does (no gradients pile up between
    batches for a checkpoint to carry), and a resume checks its parameter
    groups like any other optimizer's.  ``lr`` is 0.0: nothing is learned.
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        params = list(params) or [torch.zeros(1)]  # torch refuses an empty list; a module may have no parameters
        super().__init__(params, {"lr": 0.0})

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        return None if closure is None else closure()

    def __repr__(self) -> str:
        return "NoOptimizer (configure_optimizers() returned None)"


def configure_optimizers(module: Any) -> OptimizerSetup:
    """Call ``module.configure_optimizers()`` and check what it returned against the module's mode.

    None gives a :class:`NoOptimizer` and a warning, as in Lightning (the fit
    runs its steps without changing a parameter).
    """
    returned = module.configure_optimizers()
    if returned is None:
        warnings.warn("configure_optimizers() returned None, so this fit will run with no optimizer: training_step "
                      "and backward run, each batch counts as a step (global_step, max_steps), and no parameter "
                      "changes. Return an optimizer to train.", UserWarning, stacklevel=3)
        returned = NoOptimizer(module.parameters())
    setup = parse_optimizers(returned, automatic=module.automatic_optimization)
    _check_scheduler_api(setup, module)
    return setup


def parse_optimizers(returned: Any, automatic: bool = True) -> OptimizerSetup:
    """Normalise ``configure_optimizers()``'s return value; raise ConfigError for anything else.

    ``automatic``: whether the Trainer will step the schedulers (automatic
    optimization), which decides what a scheduler config must say.
    """
    if isinstance(returned, torch.optim.Optimizer):
        return OptimizerSetup([returned], [])
    if isinstance(returned, Mapping):
        return _from_dicts([returned], automatic)
    if isinstance(returned, Sequence) and not isinstance(returned, str):
        items = list(returned)
        if len(items) == 2 and isinstance(items[0], (list, tuple)) and not isinstance(items[1], torch.optim.Optimizer):
            # ([optimizers], [schedulers]), or ([optimizers], scheduler) as Lightning also takes
            schedulers = items[1] if isinstance(items[1], (list, tuple)) else [items[1]]
            return _from_lists(list(items[0]), list(schedulers), automatic)
        if items and all(isinstance(x, Mapping) for x in items):
            return _from_dicts(items, automatic)
        if items and all(isinstance(x, torch.optim.Optimizer) for x in items):
            return OptimizerSetup(items, [])
    raise ConfigError(f"configure_optimizers() returned {_describe(returned)}, which is not supported. {_SUPPORTED}")


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of [{', '.join(type(x).__name__ for x in value)}]"
    return f"{type(value).__name__} ({value!r:.60})"


def _from_lists(optimizers: list[Any], schedulers: list[Any], automatic: bool) -> OptimizerSetup:
    _check_optimizers(optimizers)
    configs = [_scheduler_config(s, optimizers, None, automatic) for s in schedulers]
    return OptimizerSetup(optimizers, configs)


def _from_dicts(dicts: list[Mapping[str, Any]], automatic: bool) -> OptimizerSetup:
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
            config = _scheduler_config(entry["lr_scheduler"], optimizers, entry.get("monitor"), automatic)
            configs.append(config)
    return OptimizerSetup(optimizers, configs, frequencies or None)


def _check_optimizers(optimizers: list[Any]) -> None:
    bad = [type(o).__name__ for o in optimizers if not isinstance(o, torch.optim.Optimizer)]
    if bad or not optimizers:
        raise ConfigError(f"configure_optimizers() gave {', '.join(bad) or 'no optimizer'} where a "
                          f"torch.optim.Optimizer is needed. {_SUPPORTED}")


def _scheduler_config(value: Any, optimizers: list[torch.optim.Optimizer], monitor: str | None,
                      automatic: bool) -> SchedulerConfig:
    strict = True
    if isinstance(value, Mapping):
        unknown = set(value) - {"scheduler", "interval", "frequency", "monitor", "name", "strict"}
        if unknown or "scheduler" not in value:
            raise ConfigError(f"an 'lr_scheduler' dict has keys {sorted(value)}; it needs 'scheduler' and may have "
                              "'interval', 'frequency', 'monitor', 'strict', 'name'.")
        scheduler = value["scheduler"]
        interval = value.get("interval", "epoch")
        frequency = _positive_int(value.get("frequency", 1), "lr_scheduler 'frequency'")
        monitor = value.get("monitor", monitor)
        strict = value.get("strict", True)
        if not isinstance(strict, bool):
            raise ConfigError(f"lr_scheduler 'strict' must be True or False, got {strict!r}.")
    else:
        scheduler, interval, frequency = value, "epoch", 1
    if interval not in ("epoch", "step"):
        raise ConfigError(f"lr_scheduler 'interval' is {interval!r}; use 'epoch' or 'step'.")
    owner = getattr(scheduler, "optimizer", None)
    index = next((i for i, opt in enumerate(optimizers) if opt is owner), None)
    if index is None:
        raise ConfigError(f"the scheduler {type(scheduler).__name__} does not wrap any optimizer returned by "
                          "configure_optimizers(); build it from one of them.")
    if not automatic:
        return _manual_config(value, scheduler, interval, frequency, monitor, index)
    config = SchedulerConfig(scheduler, interval, frequency, monitor, index, strict)
    if config.reduce_on_plateau and not monitor:
        raise ConfigError("ReduceLROnPlateau needs a metric: return {'optimizer': opt, 'lr_scheduler': "
                          "{'scheduler': sched, 'monitor': 'val_loss'}} naming a key you self.log().")
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and interval == "epoch":
        # Lightning's words: a one-cycle schedule is almost always meant per step (total_steps)
        warnings.warn("A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you didn't mean "
                      "'interval': 'step'?", RuntimeWarning, stacklevel=5)
    return config


def _manual_config(value: Any, scheduler: Any, interval: str, frequency: int, monitor: str | None,
                   index: int) -> SchedulerConfig:
    """Manual optimization: the user steps the scheduler, so what only the Trainer's stepping reads is dropped.

    ``interval`` stays (the LearningRateMonitor reads it); ``monitor`` and
    ``strict`` are ignored with a warning, as in Lightning, so nobody
    believes the Trainer acts on them.
    """
    ignored = sorted({"monitor", "strict"} & set(value)) if isinstance(value, Mapping) else []
    if monitor is not None and "monitor" not in ignored:
        ignored.insert(0, "monitor")
    if ignored:
        warnings.warn(f"The lr_scheduler config of {type(scheduler).__name__} gives {ignored}, which manual "
                      "optimization ignores: call the scheduler's step() yourself (with the metric, for a "
                      "ReduceLROnPlateau), e.g. self.lr_schedulers().step(value).", RuntimeWarning, stacklevel=5)
    return SchedulerConfig(scheduler, interval, frequency, None, index)


def _check_scheduler_api(setup: OptimizerSetup, module: Any) -> None:
    """Every scheduler can be checkpointed; in automatic mode the Trainer must also know how to step it."""
    steps_itself = module.automatic_optimization and is_default_hook(module.lr_scheduler_step)
    for config in setup.schedulers:
        scheduler, name = config.scheduler, type(config.scheduler).__name__
        missing = [m for m in ("state_dict", "load_state_dict") if not callable(getattr(scheduler, m, None))]
        if missing:
            raise ConfigError(f"The scheduler {name} has no {' or '.join(missing)}(): every checkpoint saves and "
                              "restores each scheduler's state. Define state_dict() and load_state_dict(state).")
        if steps_itself and not isinstance(scheduler, (torch.optim.lr_scheduler.LRScheduler,
                                                       torch.optim.lr_scheduler.ReduceLROnPlateau)):
            raise ConfigError(f"The scheduler {name} is not a torch LRScheduler, so the Trainer cannot tell how to "
                              "step it. Override lr_scheduler_step(self, scheduler, metric) in the module to step "
                              "it (e.g. scheduler.step(epoch=self.current_epoch)), or step it yourself in manual "
                              "optimization.")


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"configure_optimizers(): {what} must be an int >= 1, got {value!r}.")
    return value
