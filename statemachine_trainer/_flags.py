"""``TrainerConfig``: the Trainer's flags as one frozen value, checked once.

Every flag that shapes a run (limits, intervals, accumulation, clipping,
seeds, directories) is a field here, with Lightning's name and default.
``TrainerConfig.from_flags`` checks each one and resolves the derived values
(``max_epochs`` when only ``max_steps`` is given; what ``fast_dev_run``
implies), raising :class:`ConfigError` with the fix, so nothing downstream
re-checks or re-derives a flag.  Loops and callbacks read it as
``run.config``; it imports nothing of the package but ``ConfigError``.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from ._optim import ConfigError

__all__ = ["TrainerConfig", "check_int", "parse_duration"]


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}.")
    return value


def parse_duration(value: str | timedelta | dict[str, int] | None, name: str = "max_time") -> float | None:
    """Seconds from Lightning's duration forms: "DD:HH:MM:SS", a ``timedelta`` or a dict of timedelta's keywords."""
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", value.strip())
        if not match:
            raise ConfigError(f"{name}={value!r} is not a duration: use \"DD:HH:MM:SS\" (e.g. \"00:12:00:00\" for 12 "
                              "hours), a datetime.timedelta or a dict such as {'hours': 12}.")
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    elif isinstance(value, dict):
        try:
            value = timedelta(**value)
        except TypeError as exc:
            raise ConfigError(f"{name}={value!r}: the dict must hold datetime.timedelta's keywords "
                              f"(weeks, days, hours, minutes, seconds...): {exc}.") from None
    if not isinstance(value, timedelta):
        raise ConfigError(f"{name} must be a \"DD:HH:MM:SS\" string, a datetime.timedelta or a dict, got {value!r}.")
    return value.total_seconds()


def _check_overfit(value: Any) -> int | float:
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"overfit_batches={value!r} must be an int >= 0 (batches) or a fraction in [0, 1].")


def _check_global_batch(global_batch_size: int | None, accumulate_grad_batches: int | None, limit_train_batches: Any,
                        overfit_batches: Any, resumable_data: bool, use_distributed_sampler: bool) -> int:
    """``accumulate_grad_batches`` resolved (None: 1); with ``global_batch_size`` the flags it cannot keep are refused.

    The global batch fixes the accumulation (``G // (batch_size * world
    size)``, derived at fit start) and which samples each step takes, so a
    flag that would change either is an error, never silently overridden.
    """
    if global_batch_size is None:
        return 1 if accumulate_grad_batches is None else check_int("accumulate_grad_batches",
                                                                  accumulate_grad_batches, 1)
    check_int("global_batch_size", global_batch_size, 1)
    checks = (
        (accumulate_grad_batches is not None,
         f"accumulate_grad_batches={accumulate_grad_batches!r} (derived: global_batch_size // (b * world size))"),
        (limit_train_batches not in (None, 1.0),
         f"limit_train_batches={limit_train_batches!r} (a step takes whole global batches)"),
        (bool(overfit_batches), f"overfit_batches={overfit_batches!r} (it reorders the training data)"),
        (resumable_data is False, "resumable_data=False (the global-batch order is the resumable loader's)"),
        (use_distributed_sampler is False,
         "use_distributed_sampler=False (the global batch decides what each rank reads)"),
    )
    conflicts = [text for flag, text in checks if flag]
    if conflicts:
        raise ConfigError(f"Trainer(global_batch_size={global_batch_size}) fixes the samples of every optimizer step "
                          f"and cannot be combined with {'; '.join(conflicts)}. Drop one of them.")
    return 1


def _check_switches(**switches: Any) -> None:
    """The on/off flags are bools (``benchmark`` may also be None: leave cuDNN's setting as it is)."""
    for name, value in switches.items():
        if not (name == "benchmark" and value is None):
            check_bool(name, value)


def _check_val_check_interval(value: Any, every_n_epoch: Any) -> None:
    if isinstance(value, (str, dict, timedelta)):
        raise ConfigError(f"val_check_interval={value!r}: a time-based interval is not supported here; give a "
                          "number of training batches (int) or a fraction of the epoch (float).")
    if every_n_epoch is None:
        if isinstance(value, float):
            raise ConfigError(f"val_check_interval={value!r} is a fraction of an epoch, but check_val_every_n_epoch="
                              "None counts training batches across epochs: give val_check_interval as an int of "
                              "batches, or set check_val_every_n_epoch to an int.")
    else:
        check_int("check_val_every_n_epoch", every_n_epoch, 1)


def _refuse_barebones_opt_ins(barebones: Any, **opt_ins: Any) -> None:
    """Lightning refuses the features barebones mode cannot measure: fast_dev_run, detect_anomaly, profiler."""
    check_bool("barebones", barebones)
    for name, value in opt_ins.items():
        if barebones and value is not None and value is not False and value != 0:
            raise ConfigError(f"Trainer(barebones=True, {name}={value!r}): barebones mode measures the raw loop, "
                              f"so it cannot run with {name}; drop one of the two.")


def _resolve_opt_outs(barebones: bool, flags: dict[str, Any]) -> dict[str, Any]:
    """Lightning's rule: barebones turns off what costs speed and refuses a flag that asks for one of them.

    ``flags`` holds the opt-out flags as given (None: not given); returns
    them resolved.  Outside barebones, None takes Lightning's default.
    """
    defaults = {"enable_checkpointing": True, "logger": True, "enable_progress_bar": True,
                "enable_model_summary": True, "num_sanity_val_steps": 2, "log_every_n_steps": 50}
    if not barebones:
        return {name: defaults[name] if value is None else value for name, value in flags.items()}
    off = {"enable_checkpointing": False, "logger": False, "enable_progress_bar": False,
           "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 0}
    for name, value in flags.items():
        if value is not None and value is not False and value != 0:
            raise ConfigError(f"Trainer(barebones=True, {name}={value!r}): barebones mode turns {name} off because "
                              f"it costs speed; drop {name}, or drop barebones=True.")
    resolved = dict(off)
    resolved["log_every_n_steps"] = defaults["log_every_n_steps"]  # with no logger, nothing is written at all
    return resolved


@attrs.frozen
class TrainerConfig:
    """The resolved flags of one Trainer (after ``fast_dev_run`` and the ``max_epochs`` default)."""

    max_epochs: int = 1000  # -1: unlimited
    min_epochs: int = 0
    min_steps: int | None = None  # should_stop is honoured only once this run took this many steps
    max_steps: int = -1  # -1: unlimited
    limits: dict[str, Any] = attrs.Factory(dict)  # stage -> limit_*_batches (None: the whole loader)
    val_check_interval: float | int | None = None
    check_val_every_n_epoch: int | None = 1  # None: every val_check_interval batches counted over the whole fit
    num_sanity_val_steps: int = 2  # -1: the whole validation loader
    fast_dev_run: bool | int = False
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None  # None: "norm" (configure_gradient_clipping gets None, as in Lightning)
    deterministic: bool = False
    seed: int | None = None
    log_every_n_steps: int = 50
    default_root_dir: Path = attrs.Factory(Path.cwd)
    logger: Any = True  # what was asked for; False under fast_dev_run and on ranks other than 0
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    enable_model_summary: bool = True  # a ModelSummary callback prints the module's layers at fit start
    max_time: float | None = None  # seconds of training (Timer callback; survives a resume as its state)
    overfit_batches: int | float = 0.0  # > 0: this many train/val batches, unshuffled, every epoch
    reload_dataloaders_every_n_epochs: int = 0  # > 0: call *_dataloader() again every n epochs
    detect_anomaly: bool = False  # fit under torch.autograd.set_detect_anomaly(True)
    inference_mode: bool = True  # evaluation under torch.inference_mode() (False: torch.no_grad())
    benchmark: bool | None = None  # torch.backends.cudnn.benchmark; None leaves it (False with deterministic)
    num_nodes: int = 1  # machines of a ddp run; world size = num_nodes * devices
    use_distributed_sampler: bool = True  # ddp: shard the loaders (False: the user's sampler as it is)
    sync_batchnorm: bool = False  # ddp: BatchNorm layers become SyncBatchNorm
    profiler: Any = None  # a Profiler: "simple" -> SimpleProfiler(), None -> PassThroughProfiler() (no wrapping)
    barebones: bool = False  # everything that costs speed is off (see _resolve_opt_outs)
    save_on_exception: bool = False  # ours: an exception escaping fit writes the last batch boundary's state
    resumable_data: bool = True  # ours: a plain map-style DataLoader is read through a ResumableLoader (data/_auto)
    #: ours: samples per optimizer step, kept at any world size (data/_global); the accumulation is derived from it
    #: at fit start.  None: accumulate_grad_batches decides, and the order depends on the world size.
    global_batch_size: int | None = None

    @classmethod
    def from_flags(cls, *, max_epochs: int | None, min_epochs: int, max_steps: int, min_steps: int | None = None,
                   limit_train_batches: Any, limit_val_batches: Any, limit_test_batches: Any,
                   limit_predict_batches: Any, val_check_interval: Any, check_val_every_n_epoch: int | None,
                   num_sanity_val_steps: int, fast_dev_run: bool | int, accumulate_grad_batches: int | None,
                   gradient_clip_val: float | None, gradient_clip_algorithm: str | None, deterministic: bool,
                   seed: int | None, log_every_n_steps: int | None,
                   default_root_dir: str | os.PathLike[str] | None, logger: Any, enable_progress_bar: bool | None,
                   enable_checkpointing: bool | None, enable_model_summary: bool | None = None,
                   max_time: Any = None, overfit_batches: float = 0.0,
                   reload_dataloaders_every_n_epochs: int = 0, detect_anomaly: bool = False,
                   inference_mode: bool = True, benchmark: bool | None = None, num_nodes: int = 1,
                   use_distributed_sampler: bool = True, sync_batchnorm: bool = False, profiler: Any = None,
                   barebones: bool = False, save_on_exception: bool = False,
                   resumable_data: bool = True, global_batch_size: int | None = None) -> TrainerConfig:
        """Check every flag (ConfigError names the flag and the fix) and resolve what they imply."""
        _refuse_barebones_opt_ins(barebones, fast_dev_run=fast_dev_run, detect_anomaly=detect_anomaly,
                                  profiler=profiler)
        opt_outs = _resolve_opt_outs(barebones, {
            "enable_checkpointing": enable_checkpointing, "logger": logger, "enable_progress_bar": enable_progress_bar,
            "enable_model_summary": enable_model_summary, "num_sanity_val_steps": num_sanity_val_steps,
            "log_every_n_steps": log_every_n_steps})
        enable_checkpointing, logger = opt_outs["enable_checkpointing"], opt_outs["logger"]
        enable_progress_bar, enable_model_summary = opt_outs["enable_progress_bar"], opt_outs["enable_model_summary"]
        num_sanity_val_steps, log_every_n_steps = opt_outs["num_sanity_val_steps"], opt_outs["log_every_n_steps"]
        _check_switches(enable_model_summary=enable_model_summary, detect_anomaly=detect_anomaly,
                        inference_mode=inference_mode, use_distributed_sampler=use_distributed_sampler,
                        sync_batchnorm=sync_batchnorm, benchmark=benchmark)
        check_int("num_nodes", num_nodes, 1)
        check_int("reload_dataloaders_every_n_epochs", reload_dataloaders_every_n_epochs, 0)
        overfit_batches = _check_overfit(overfit_batches)
        max_seconds = parse_duration(max_time)
        _check_val_check_interval(val_check_interval, check_val_every_n_epoch)
        profiler = _resolve_profiler(profiler)
        check_int("min_epochs", min_epochs, 0)
        if min_steps is not None:
            check_int("min_steps", min_steps, 0)
        check_int("max_steps", max_steps, -1)
        check_int("num_sanity_val_steps", num_sanity_val_steps, -1)
        accumulate_grad_batches = _check_global_batch(global_batch_size, accumulate_grad_batches,
                                                      limit_train_batches, overfit_batches, resumable_data,
                                                      use_distributed_sampler)
        check_int("log_every_n_steps", log_every_n_steps, 1)
        if max_epochs is None:
            max_epochs = 1000 if max_steps == -1 else -1
        check_int("max_epochs", max_epochs, -1)
        if gradient_clip_algorithm not in (None, "norm", "value"):
            raise ConfigError(f"gradient_clip_algorithm={gradient_clip_algorithm!r}: use 'norm' or 'value'.")
        if gradient_clip_val is not None and not (isinstance(gradient_clip_val, (int, float)) and gradient_clip_val > 0):
            raise ConfigError(f"gradient_clip_val={gradient_clip_val!r} must be a number > 0, or None to not clip.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"seed must be an int or None, got {seed!r}.")
        limits = {"train": limit_train_batches, "validate": limit_val_batches, "test": limit_test_batches,
                  "predict": limit_predict_batches}
        if fast_dev_run:
            batches = 1 if fast_dev_run is True else check_int("fast_dev_run", fast_dev_run, 1)
            limits = dict.fromkeys(limits, batches)
            max_epochs, max_steps, num_sanity_val_steps, val_check_interval = 1, -1, 0, None
            check_val_every_n_epoch = 1  # Lightning: validation after the one epoch's batches
            logger, enable_checkpointing = False, False
        if overfit_batches:  # Lightning: overfit_batches wins over limit_*_batches and fast_dev_run for train/val
            limits["train"] = limits["validate"] = overfit_batches
        return cls(max_epochs=max_epochs, min_epochs=min_epochs, min_steps=min_steps, max_steps=max_steps, limits=limits,
                   val_check_interval=val_check_interval, check_val_every_n_epoch=check_val_every_n_epoch,
                   num_sanity_val_steps=num_sanity_val_steps, fast_dev_run=fast_dev_run,
                   accumulate_grad_batches=accumulate_grad_batches, gradient_clip_val=gradient_clip_val,
                   gradient_clip_algorithm=gradient_clip_algorithm, deterministic=deterministic, seed=seed,
                   log_every_n_steps=log_every_n_steps,
                   default_root_dir=Path(default_root_dir) if default_root_dir is not None else Path.cwd(),
                   logger=logger, enable_progress_bar=enable_progress_bar, enable_checkpointing=enable_checkpointing,
                   enable_model_summary=enable_model_summary, max_time=max_seconds, overfit_batches=overfit_batches,
                   reload_dataloaders_every_n_epochs=reload_dataloaders_every_n_epochs,
                   detect_anomaly=detect_anomaly, inference_mode=inference_mode, benchmark=benchmark,
                   num_nodes=num_nodes, use_distributed_sampler=use_distributed_sampler,
                   sync_batchnorm=sync_batchnorm, profiler=profiler, barebones=barebones,
                   save_on_exception=check_bool("save_on_exception", save_on_exception),
                   resumable_data=check_bool("resumable_data", resumable_data),
                   global_batch_size=global_batch_size)


    def val_check_batches(self, num_batches: int, validating: bool = True) -> int:
        """Validation follows every this many training batches, from val_check_interval (``num_batches`` per epoch).

        With ``check_val_every_n_epoch`` set it counts the epoch's batches
        (and the epoch's last batch validates too), so an int interval longer
        than the epoch is an error while validation is on (``validating``), as
        in Lightning; with ``check_val_every_n_epoch=None`` it counts the
        fit's batches, so any interval is fine.
        """
        interval = self.val_check_interval
        if interval is None:
            return max(num_batches, 1)
        if isinstance(interval, float):
            if not 0.0 < interval <= 1.0:
                raise ConfigError(f"val_check_interval={interval} must be a fraction in (0, 1] or an int of "
                                  "batches.")
            return max(1, int(num_batches * interval))
        check_int("val_check_interval", interval, 1)
        if validating and self.check_val_every_n_epoch is not None and interval > num_batches:
            raise ConfigError(f"val_check_interval={interval} must be at most the number of training batches per "
                              f"epoch ({num_batches}). To validate every {interval} batches counted across epochs, "
                              "set check_val_every_n_epoch=None; to turn validation off, set limit_val_batches=0.")
        return interval


def _resolve_profiler(profiler: Any) -> Any:
    """``"simple"`` -> a SimpleProfiler; a Profiler as it is; None: a PassThroughProfiler (costs nothing)."""
    from .profilers import PassThroughProfiler, Profiler, SimpleProfiler

    if profiler is None:
        return PassThroughProfiler()
    if profiler == "simple":
        return SimpleProfiler()
    if isinstance(profiler, Profiler):
        return profiler
    if isinstance(profiler, str) and profiler in ("advanced", "pytorch", "xla"):
        raise ConfigError(f"profiler={profiler!r} is not available here: use profiler='simple' (a per-hook time "
                          "table), or wrap your own code in torch.profiler.profile().")
    raise ConfigError(f"profiler={profiler!r}: use 'simple', a SimpleProfiler(...) or None.")


#: The flag names readable as ``trainer.<name>`` / ``run.<name>`` (Lightning code reads e.g. ``trainer.max_epochs``).
FLAG_NAMES = frozenset(field.name for field in attrs.fields(TrainerConfig))
