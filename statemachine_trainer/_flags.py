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
from pathlib import Path
from typing import Any

import attrs

from ._optim import ConfigError

__all__ = ["TrainerConfig", "check_int"]


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


@attrs.frozen
class TrainerConfig:
    """The resolved flags of one Trainer (after ``fast_dev_run`` and the ``max_epochs`` default)."""

    max_epochs: int = 1000  # -1: unlimited
    min_epochs: int = 0
    max_steps: int = -1  # -1: unlimited
    limits: dict[str, Any] = attrs.Factory(dict)  # stage -> limit_*_batches (None: the whole loader)
    val_check_interval: float | int | None = None
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int = 2  # -1: the whole validation loader
    fast_dev_run: bool | int = False
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    deterministic: bool = False
    seed: int | None = None
    log_every_n_steps: int = 50
    default_root_dir: Path = attrs.Factory(Path.cwd)
    logger: Any = True  # what was asked for; False under fast_dev_run and on ranks other than 0
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True

    @classmethod
    def from_flags(cls, *, max_epochs: int | None, min_epochs: int, max_steps: int,
                   limit_train_batches: Any, limit_val_batches: Any, limit_test_batches: Any,
                   limit_predict_batches: Any, val_check_interval: Any, check_val_every_n_epoch: int,
                   num_sanity_val_steps: int, fast_dev_run: bool | int, accumulate_grad_batches: int,
                   gradient_clip_val: float | None, gradient_clip_algorithm: str, deterministic: bool,
                   seed: int | None, log_every_n_steps: int, default_root_dir: str | os.PathLike[str] | None,
                   logger: Any, enable_progress_bar: bool, enable_checkpointing: bool) -> TrainerConfig:
        """Check every flag (ConfigError names the flag and the fix) and resolve what they imply."""
        check_int("min_epochs", min_epochs, 0)
        check_int("max_steps", max_steps, -1)
        check_int("check_val_every_n_epoch", check_val_every_n_epoch, 1)
        check_int("num_sanity_val_steps", num_sanity_val_steps, -1)
        check_int("accumulate_grad_batches", accumulate_grad_batches, 1)
        check_int("log_every_n_steps", log_every_n_steps, 1)
        if max_epochs is None:
            max_epochs = 1000 if max_steps == -1 else -1
        check_int("max_epochs", max_epochs, -1)
        if gradient_clip_algorithm not in ("norm", "value"):
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
            logger, enable_checkpointing = False, False
        return cls(max_epochs=max_epochs, min_epochs=min_epochs, max_steps=max_steps, limits=limits,
                   val_check_interval=val_check_interval, check_val_every_n_epoch=check_val_every_n_epoch,
                   num_sanity_val_steps=num_sanity_val_steps, fast_dev_run=fast_dev_run,
                   accumulate_grad_batches=accumulate_grad_batches, gradient_clip_val=gradient_clip_val,
                   gradient_clip_algorithm=gradient_clip_algorithm, deterministic=deterministic, seed=seed,
                   log_every_n_steps=log_every_n_steps,
                   default_root_dir=Path(default_root_dir) if default_root_dir is not None else Path.cwd(),
                   logger=logger, enable_progress_bar=enable_progress_bar, enable_checkpointing=enable_checkpointing)


    def val_check_batches(self, num_batches: int) -> int:
        """Validation follows every this many training batches (and the epoch's last), from val_check_interval."""
        interval = self.val_check_interval
        if interval is None:
            return max(num_batches, 1)
        if isinstance(interval, float):
            if not 0.0 < interval <= 1.0:
                raise ConfigError(f"val_check_interval={interval} must be a fraction in (0, 1] or an int of "
                                  "batches.")
            return max(1, int(num_batches * interval))
        return check_int("val_check_interval", interval, 1)


#: The flag names readable as ``trainer.<name>`` / ``run.<name>`` (Lightning code reads e.g. ``trainer.max_epochs``).
FLAG_NAMES = frozenset(field.name for field in attrs.fields(TrainerConfig))
