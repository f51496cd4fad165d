"""Configuration checks: the device, the module and its optimizers, callbacks and loggers, before anything trains.

Each check raises :class:`ConfigError` with a full sentence that names the
problem and the fix; the Trainer calls them from ``__init__`` and at the
start of ``fit``/``validate``/``test``/``predict`` (module, data,
optimizers), so a mistake never costs a partial run.  The flags themselves
are checked by :class:`~statemachine_trainer._flags.TrainerConfig`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._flags import check_int
from ._optim import ConfigError, OptimizerSetup
from ._optimization import takes_optimizer_idx
from .module import TrainingModule

if TYPE_CHECKING:
    from ._flags import TrainerConfig

__all__ = ["check_int", "check_module", "check_optimization_mode", "default_callbacks", "default_loggers", "defines",
           "resolve_device"]


def resolve_device(accelerator: str) -> torch.device:
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ConfigError(f"accelerator={accelerator!r} but torch sees no CUDA device; use accelerator='cpu' "
                              "or 'auto'.")
        return torch.device("cuda", torch.cuda.current_device())
    from ._refused import value_advice

    raise ConfigError(f"accelerator={accelerator!r}: use 'cpu', 'cuda' or 'auto'{value_advice('accelerator', accelerator)}.")


def check_module(module: Any, step: str, entry: str) -> None:
    if not isinstance(module, TrainingModule):
        raise ConfigError(f"trainer.{entry}() needs a TrainingModule, got {type(module).__name__}. Subclass "
                          "TrainingModule, or wrap a plain nn.Module with FunctionModule(model, training_step=fn, "
                          "configure_optimizers=fn).")
    if not defines(module, step) and step != "predict_step":
        raise ConfigError(f"trainer.{entry}() calls {type(module).__name__}.{step}(batch, batch_idx), which is not "
                          "defined; define it.")


def defines(module: TrainingModule, step: str) -> bool:
    """Whether the user's class (not TrainingModule's placeholder) defines ``step``."""
    return step in vars(module) or any(step in vars(cls) for cls in type(module).__mro__
                                       if cls not in (TrainingModule, torch.nn.Module, object))


def check_optimization_mode(module: TrainingModule, setup: OptimizerSetup, config: TrainerConfig) -> None:
    count = len(setup.optimizers)
    if not module.automatic_optimization:
        if config.global_batch_size is not None:
            raise ConfigError(f"global_batch_size={config.global_batch_size} derives a gradient accumulation, which "
                              "applies to automatic optimization; with automatic_optimization = False, drop it.")
        if config.accumulate_grad_batches != 1 or config.gradient_clip_val is not None:
            raise ConfigError("accumulate_grad_batches and gradient_clip_val apply to automatic optimization; with "
                              "automatic_optimization = False, accumulate and call self.clip_gradients() yourself.")
        return
    generator = inspect.isgeneratorfunction(type(module).training_step)
    if generator and setup.frequencies is not None:
        raise ConfigError("A generator training_step yields one loss per optimizer on every batch; it cannot be "
                          "combined with optimizer 'frequency'. Drop 'frequency', or return a loss per optimizer_idx.")
    if count > 1 and not generator and setup.frequencies is None and not takes_optimizer_idx(module.training_step):
        raise ConfigError(f"configure_optimizers() returned {count} optimizers, so training_step must either take "
                          "(batch, batch_idx, optimizer_idx) and return that optimizer's loss, or be a generator "
                          "that yields one loss per optimizer.")
    if setup.frequencies is not None and not takes_optimizer_idx(module.training_step) and count > 1:
        raise ConfigError("With optimizer frequencies, training_step must take (batch, batch_idx, optimizer_idx) to "
                          "know which optimizer's loss to return.")


def default_callbacks(callbacks: Any, progress_bar: bool, checkpointing: bool) -> list[Any]:
    from .callbacks import Callback

    given = [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    bad = [type(cb).__name__ for cb in given if not isinstance(cb, Callback)]
    if bad:
        raise ConfigError(f"callbacks must be Callback instances; got {', '.join(bad)}.")
    if progress_bar:
        from .callbacks import ProgressBar

        if not any(isinstance(cb, ProgressBar) for cb in given):
            given.append(ProgressBar())
    if checkpointing:
        from .callbacks import ModelCheckpoint

        if not any(isinstance(cb, ModelCheckpoint) for cb in given):
            given.append(ModelCheckpoint())
    # Checkpoints are written last, so they hold the other callbacks' state after this hook
    # (e.g. EarlyStopping's counter for the epoch just checked), as in Lightning.
    from .callbacks import ModelCheckpoint

    given = ([cb for cb in given if not isinstance(cb, ModelCheckpoint)]
             + [cb for cb in given if isinstance(cb, ModelCheckpoint)])
    keys = [cb.state_key for cb in given]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ConfigError(f"Two callbacks share the state key(s) {duplicated}; give them distinct settings (e.g. "
                          "different monitor/dirpath) so their saved state can be told apart.")
    return given


def default_loggers(logger: Any, root: Path) -> list[Any]:
    from .loggers import CSVLogger, Logger

    if logger is True:
        return [CSVLogger(root)]
    if logger is False or logger is None:
        return []
    loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    bad = [type(x).__name__ for x in loggers if not isinstance(x, Logger)]
    if bad:
        raise ConfigError(f"logger must be True, False, a Logger or a list of Loggers; got {', '.join(bad)}.")
    return loggers
