"""``Trainer``: checks the configuration, builds a run, and runs a loop tree.

The Trainer owns no training logic.  ``fit`` does three things:

1. *check* -- every flag, the module's steps, the dataloaders and what
   ``configure_optimizers`` returned, before anything trains (``ConfigError``
   names the problem and the fix);
2. *prepare the run* -- device, precision, the hook relay, the logged-values
   store, one :class:`~statemachine_trainer._optimization.Optimization`, and a
   ``BatchSource`` per dataloader -- and attach every loop of the tree to it;
3. *run* ``fit_loop`` (a table, like every loop in the tree).

The tree is plain attributes (``trainer.fit_loop.epoch_loop.batch_loop...``),
so ``trainer.fit_loop = MyLoop()``, ``connect`` and ``replace`` swap parts of
it, and the same trainer methods serve custom loops.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _run_state
from ._config import (
    check_int,
    check_module,
    check_optimization_mode,
    default_callbacks,
    default_loggers,
    defines,
    resolve_device,
    val_check_batches,
)
from ._hooks import HookRelay
from ._optim import ConfigError, parse_optimizers
from ._optimization import ManualOptimizer, Optimization
from ._precision import Precision
from ._preemption import Preempted, PreemptionGuard
from ._results import Results
from ._strategy import launched_rank_zero, make_strategy
from .loops import EvaluationLoop, FitLoop, PredictionLoop
from .loops._base import TrainerLoop
from .loops._data import BatchSource, count_batches
from .machine import Loop
from .module import TrainingModule

__all__ = ["Trainer", "seed_everything"]


def seed_everything(seed: int) -> int:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) with ``seed``."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


class Trainer:
    """Runs ``fit`` / ``validate`` / ``test`` / ``predict`` for a :class:`TrainingModule`.

    Flags follow Lightning's names and defaults.  ``max_epochs`` defaults to
    1000 when neither it nor ``max_steps`` is given; ``-1`` means unlimited.
    """

    def __init__(
        self,
        *,
        max_epochs: int | None = None,
        min_epochs: int = 0,
        max_steps: int = -1,
        limit_train_batches: float | None = None,
        limit_val_batches: float | None = None,
        limit_test_batches: float | None = None,
        limit_predict_batches: float | None = None,
        val_check_interval: float | None = None,
        check_val_every_n_epoch: int = 1,
        num_sanity_val_steps: int = 2,
        fast_dev_run: bool | int = False,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        precision: str | int = "32",
        accelerator: str = "auto",
        devices: int = 1,
        strategy: str = "auto",
        deterministic: bool = False,
        callbacks: Sequence[Any] | Any | None = None,
        logger: Any = True,
        enable_progress_bar: bool = True,
        enable_checkpointing: bool = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        log_every_n_steps: int = 50,
    ) -> None:
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
        self.device = resolve_device(accelerator)
        self.strategy = make_strategy(strategy, devices, self.device.type)
        if not launched_rank_zero(self.strategy):  # loggers and the progress bar live on rank 0 only
            logger, enable_progress_bar = False, False
        self.precision = Precision(precision, self.device)
        if fast_dev_run:
            batches = 1 if fast_dev_run is True else check_int("fast_dev_run", fast_dev_run, 1)
            limit_train_batches = limit_val_batches = limit_test_batches = limit_predict_batches = batches
            max_epochs, max_steps, num_sanity_val_steps, val_check_interval = 1, -1, 0, None
            logger, enable_checkpointing = False, False
        self.fast_dev_run = fast_dev_run
        self.max_epochs, self.min_epochs, self.max_steps = max_epochs, min_epochs, max_steps
        self.limits = {"train": limit_train_batches, "validate": limit_val_batches, "test": limit_test_batches,
                       "predict": limit_predict_batches}
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.num_sanity_val_steps = num_sanity_val_steps
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.deterministic = deterministic
        self.seed = seed
        self.log_every_n_steps = log_every_n_steps
        self.default_root_dir = Path(default_root_dir) if default_root_dir is not None else Path.cwd()
        self.callbacks = default_callbacks(callbacks, enable_progress_bar, enable_checkpointing)
        self.loggers = default_loggers(logger, self.default_root_dir)

        self.fit_loop: Loop = FitLoop()
        self.validate_loop: Loop = EvaluationLoop("validate")
        self.test_loop: Loop = EvaluationLoop("test")
        self.predict_loop: Loop = PredictionLoop()

        # Set per run by _prepare():
        self.module: TrainingModule | None = None
        self.sources: dict[str, BatchSource] = {}
        self.results = Results(self.strategy.reduce)
        self.hooks: HookRelay | None = None
        self.optimization: Optimization | None = None
        self.manual_optimizers: tuple[ManualOptimizer, ...] = ()
        self.val_enabled = False
        self.val_check_batches = 1
        self.state = "idle"  # "fit", "validate", "test", "predict" while one runs
        self._pending_saves: list[tuple[Path, Callable[[Path], None] | None]] = []
        self._preemption = PreemptionGuard()  # SIGTERM / SIGUSR1 during fit: checkpoint, then exit 75

    # -- the four entry points -------------------------------------------------------------
    def fit(self, module: TrainingModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            ckpt_path: str | os.PathLike[str] | None = None) -> None:
        """Train ``module``; ``ckpt_path`` resumes from a checkpoint written by ``save_checkpoint``."""
        self.strategy.launch_if_needed()  # strategy="ddp" from a plain `python script.py`: run N workers, exit
        check_module(module, "training_step", "fit")
        train = self._loader(module, train_dataloaders, "train", required=True)
        val = self._loader(module, val_dataloaders, "validate", required=False)
        if val is not None and not defines(module, "validation_step") and val_dataloaders is not None:
            raise ConfigError(f"fit() was given val_dataloaders, but {type(module).__name__} defines no "
                              "validation_step; define it, or do not pass validation data.")
        setup = parse_optimizers(module.configure_optimizers())
        check_optimization_mode(module, setup, self)
        self._prepare("fit", module, {"train": train, "validate": val}, setup)
        self._pending_saves = []  # nothing left over from an earlier, failed fit
        self.fit_loop.observe(self._at_boundary)  # checkpoint requests and preemption act at boundaries
        try:
            with self._preemption:
                if ckpt_path is not None:
                    self._restore(ckpt_path, whole_run=True)
                for logger in self.loggers:  # after a restore: a resumed run logs into the run's own version
                    logger.log_hyperparams(dict(getattr(module, "hparams", None) or {}))
                self.fit_loop.run()
        finally:
            self.fit_loop.observe(None)
            self._finish("fit")

    def validate(self, module: TrainingModule, dataloaders: Any = None,
                 ckpt_path: str | os.PathLike[str] | None = None) -> list[dict[str, float]]:
        return [self._evaluate("validate", module, dataloaders, ckpt_path)]

    def test(self, module: TrainingModule, dataloaders: Any = None,
             ckpt_path: str | os.PathLike[str] | None = None) -> list[dict[str, float]]:
        return [self._evaluate("test", module, dataloaders, ckpt_path)]

    def predict(self, module: TrainingModule, dataloaders: Any = None,
                ckpt_path: str | os.PathLike[str] | None = None) -> list[Any]:
        self.strategy.launch_if_needed()
        check_module(module, "predict_step", "predict")
        loader = self._loader(module, dataloaders, "predict", required=True)
        self._prepare("predict", module, {"predict": loader}, None)
        try:
            if ckpt_path is not None:
                self._restore(ckpt_path, whole_run=False)
            return self.predict_loop.run()
        finally:
            self._finish("predict")

    def _evaluate(self, stage: str, module: TrainingModule, dataloaders: Any,
                  ckpt_path: str | os.PathLike[str] | None) -> dict[str, float]:
        self.strategy.launch_if_needed()  # e.g. trainer.test(...) alone in a script run with devices=N
        step = "validation_step" if stage == "validate" else "test_step"
        check_module(module, step, stage)
        loader = self._loader(module, dataloaders, stage, required=True)
        self._prepare(stage, module, {stage: loader}, None)
        try:
            if ckpt_path is not None:
                self._restore(ckpt_path, whole_run=False)
            loop = self.validate_loop if stage == "validate" else self.test_loop
            return loop.run()
        finally:
            self._finish(stage)

    # -- what loops and callbacks read --------------------------------------------------------
    @property
    def current_epoch(self) -> int:
        return self.fit_loop.progress.total.completed

    @property
    def global_step(self) -> int:
        epoch_loop = getattr(self.fit_loop, "epoch_loop", None)
        return epoch_loop.global_step if epoch_loop is not None else 0

    @property
    def should_stop(self) -> bool:
        return self.fit_loop.fields.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.fit_loop.fields.should_stop = bool(value)

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        self.results.refresh_step_views()
        return self.results.callback_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, torch.Tensor]:
        self.results.refresh_step_views()
        return self.results.progress_bar_metrics

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        return self.results.logged_metrics

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [] if self.optimization is None else list(self.optimization.optimizers)

    @property
    def lr_scheduler_configs(self) -> list[Any]:
        return [] if self.optimization is None else list(self.optimization.setup.schedulers)

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @property
    def num_training_batches(self) -> int:
        source = self.sources.get("train")
        return 0 if source is None else source.num_batches

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is rank 0 (always, without strategy="ddp"): the one that logs and prints."""
        return self.strategy.is_rank_zero

    @property
    def sanity_checking(self) -> bool:
        val_loop = getattr(getattr(self.fit_loop, "epoch_loop", None), "val_loop", None)
        return (val_loop is not None and self.state == "fit" and val_loop.fields.sanity
                and val_loop.state != "START")

    def callback(self, cls: type) -> Any:
        """The first callback that is an instance of ``cls``, or None."""
        return next((cb for cb in self.callbacks if isinstance(cb, cls)), None)

    # -- services the loops call ----------------------------------------------------------------
    def step_schedulers(self, interval: str) -> None:
        """Step the schedulers of ``interval`` ("step" or "epoch") that are due; automatic mode only."""
        optimization = self.optimization
        if optimization is None or not optimization.setup.schedulers or not self.module.automatic_optimization:
            return  # the common case, decided before global_step (a sum over loops) is computed
        count = self.global_step if interval == "step" else self.current_epoch + 1
        for config in self.optimization.setup.schedulers:
            if config.interval != interval or count % config.frequency:
                continue
            if config.reduce_on_plateau:
                config.scheduler.step(self.monitored(config.monitor, "ReduceLROnPlateau"))
            else:
                config.scheduler.step()

    def monitored(self, key: str, who: str) -> torch.Tensor:
        """``callback_metrics[key]``, or a clear error listing what was logged."""
        metrics = self.callback_metrics
        if key not in metrics:
            logged = ", ".join(sorted(metrics)) or "nothing yet"
            raise ConfigError(f"{who} monitors {key!r}, but no value named {key!r} was logged (logged: {logged}). "
                              f"Log it with self.log({key!r}, value) in the module, or monitor one of those keys.")
        # Decisions made on it (checkpoints kept, early stopping, plateau) must agree across ranks: the mean.
        return self.strategy.reduce(metrics[key]) if self.strategy.world_size > 1 else metrics[key]

    def log_step_metrics(self) -> None:
        if self.loggers:
            self.log_metrics(self.results.step_metrics())

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Send metrics to every logger at the current global step (``.item()`` happens here, not per step)."""
        if not self.loggers or not metrics:
            return
        values = {k: float(v) for k, v in metrics.items()}
        values.setdefault("epoch", float(self.current_epoch))
        for logger in self.loggers:
            logger.log_metrics(values, self.global_step)

    # -- checkpoints --------------------------------------------------------------------------------
    def request_checkpoint(self, path: str | os.PathLike[str],
                           on_written: Callable[[Path], None] | None = None) -> None:
        """Write a checkpoint to ``path`` at the next transition boundary of the fit loop tree.

        Hooks and callbacks call this instead of ``save_checkpoint``: a file
        written *inside* a hook would record "in the middle of this hook", and a
        resume would run the hook's first half twice.  At a boundary, every
        loop's position is exact.  ``on_written(path)`` runs after the write
        (e.g. to delete a checkpoint that fell out of the top k only once its
        replacement is safely on disk).  Outside ``fit`` the write happens now.
        """
        if self.state != "fit":
            self._write_requested(Path(path), on_written)
            return
        self._pending_saves.append((Path(path), on_written))

    def _at_boundary(self, loop: Loop) -> None:
        """The fit tree's observer: called at every transition boundary, so it must be cheap when idle."""
        if self._distributed and self._after_a_batch(loop):
            self._agree_on_preemption()
        if not self._pending_saves and self._preemption.signum is None:
            return
        if not all(getattr(node, "checkpointable", True) for _, node in self.fit_loop.walk()):
            return  # e.g. between the yields of a generator step: wait for the step to end
        pending, self._pending_saves = self._pending_saves, []
        for path, on_written in pending:
            self._write_requested(path, on_written)
        if self._preemption.signum is not None and not self._distributed:
            self._preempt(self._preemption.signum)

    @property
    def _distributed(self) -> bool:
        return self.strategy.world_size > 1

    def _after_a_batch(self, loop: Loop) -> bool:
        """The epoch loop just finished a batch: the one boundary per step where ranks agree on preemption."""
        epoch_loop = getattr(self.fit_loop, "epoch_loop", None)
        if loop is not epoch_loop:
            return False
        position = loop.position
        return position.row is None and position.state == "ADVANCE"

    def _agree_on_preemption(self) -> None:
        """Preempt on every rank at once if any rank was signalled (reduced one batch late, never blocking)."""
        import signal as signals

        if self.strategy.agreed_preemption(self._preemption.signum is not None):
            self._preempt(self._preemption.signum or signals.SIGTERM)

    def _preempt(self, signum: int) -> None:
        from .callbacks import ModelCheckpoint

        checkpoint = self.callback(ModelCheckpoint)
        root = Path(checkpoint.dirpath) if checkpoint and checkpoint.dirpath else self.default_root_dir / "checkpoints"
        path = self.save_checkpoint(root / f"preempted-epoch={self.current_epoch}-step={self.global_step}.ckpt")
        raise Preempted(signum, path)

    def _write_requested(self, path: Path, on_written: Callable[[Path], None] | None) -> None:
        written = self.save_checkpoint(path)
        if on_written is not None:
            on_written(written)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write the run's state as a checkpoint directory at ``path`` (atomically, checksummed).

        Module, optimizers, schedulers, grad scaler, the loop tree's state set,
        callback state, RNG states and what the module's and callbacks'
        ``on_save_checkpoint`` add.  See :mod:`statemachine_trainer.checkpoint`.
        """
        from .checkpoint import save_checkpoint_dir

        metadata = {"step": self.global_step, "epoch": self.current_epoch, "stage": self.state}
        if not self.strategy.distributed:
            return save_checkpoint_dir(path, self._checkpoint_state(), metadata)
        from .checkpoint import save_checkpoint_parts

        replicated, rank_local = _run_state.split(self._checkpoint_state())  # every rank writes its own part
        return save_checkpoint_parts(path, replicated, rank_local, metadata)

    def _checkpoint_state(self) -> dict[str, Any]:
        return _run_state.capture(self)

    def _restore(self, ckpt_path: str | os.PathLike[str], whole_run: bool) -> None:
        """Load a checkpoint: with ``whole_run`` (fit) everything, otherwise the weights; checked before applied."""
        from .checkpoint import load_checkpoint_dir

        if not self.strategy.distributed:
            path = self._resolve_ckpt_path(ckpt_path)
            state, _ = load_checkpoint_dir(path, map_location=self.device)
        else:
            from .checkpoint import load_checkpoint_parts
            from .distributed import broadcast_object

            # Rank 0 picks ("latest" may skip a checkpoint another rank would not see yet): all load the same one.
            path = broadcast_object(self._resolve_ckpt_path(ckpt_path) if self.strategy.is_rank_zero else None)
            replicated, rank_local, _ = load_checkpoint_parts(path, map_location=self.device)
            state = {**replicated, **rank_local}
        _run_state.check(self, state, path, whole_run)
        _run_state.restore(self, state, whole_run)

    def _resolve_ckpt_path(self, ckpt_path: str | os.PathLike[str]) -> Path:
        """A path, or "best" / "last" (the ModelCheckpoint's), or "latest" (the newest valid checkpoint)."""
        from .callbacks import ModelCheckpoint

        checkpoint = self.callback(ModelCheckpoint)
        if ckpt_path in ("best", "last"):
            found = None if checkpoint is None else (
                checkpoint.best_model_path if ckpt_path == "best" else checkpoint.last_model_path)
            if not found:
                raise ConfigError(f"ckpt_path={ckpt_path!r} needs a ModelCheckpoint callback that has saved a "
                                  "checkpoint; fit first, or pass a checkpoint path.")
            return Path(found)
        if ckpt_path == "latest":
            return self._latest(Path(checkpoint.dirpath) if checkpoint and checkpoint.dirpath
                                else self.default_root_dir / "checkpoints")
        path = Path(ckpt_path)
        if not path.is_dir():
            raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r} is not a checkpoint directory; pass one written by "
                                    "trainer.save_checkpoint() or ModelCheckpoint, or 'latest'.")
        return path

    def _latest(self, root: Path) -> Path:
        import warnings

        from .checkpoint import find_latest

        found, skipped = find_latest(root)
        for path, reason in skipped:
            warnings.warn(f"ckpt_path='latest' skipped {path}: {reason}", stacklevel=4)
        if found is None:
            raise FileNotFoundError(f"ckpt_path='latest': no valid checkpoint under {root}"
                                    + (f" ({len(skipped)} invalid ones skipped)" if skipped else "") + ".")
        return found

    # -- preparing and finishing a run -------------------------------------------------------------
    def _loader(self, module: TrainingModule, given: Any, stage: str, required: bool) -> Any:
        method = {"train": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
                  "predict": "predict_dataloader"}[stage]
        loader = given
        if loader is None and callable(getattr(module, method, None)):
            loader = getattr(module, method)()
        if loader is None:
            if required:
                raise ConfigError(f"No {stage} data: pass a dataloader to trainer.{_entry(stage)}(module, ...) or "
                                  f"define {type(module).__name__}.{method}().")
            return None
        if isinstance(loader, (list, tuple)) and loader and all(
                isinstance(x, torch.utils.data.DataLoader) for x in loader):
            raise ConfigError(f"The {stage} data is a {type(loader).__name__} of loaders; pass one dataloader.")
        return loader

    def _prepare(self, stage: str, module: TrainingModule, loaders: dict[str, Any], setup: Any) -> None:
        """Everything a run needs, in dependency order; the loops are attached last."""
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
        self.device = self.strategy.setup(self.device)
        if self.seed is not None:  # + rank: each rank draws its own dropout masks (its data shard differs anyway)
            seed_everything(self.seed + self.strategy.rank)
        module.to(self.device)
        self.module, module._trainer, self.state = module, self, stage
        self.results = Results(self.strategy.reduce)
        self._make_sources(stage, loaders)
        self.optimization = None if setup is None else Optimization(
            module, setup, self.precision, None, self.results, self.accumulate_grad_batches,
            self.gradient_clip_val, self.gradient_clip_algorithm)
        for callback in self.callbacks:
            callback.setup(self, module, stage)
        # After setup, so a callback that switched itself off there (enabled = False) costs nothing.
        self.hooks = HookRelay(module, [cb for cb in self.callbacks if cb.enabled], self, self.results)
        one_backward = self.optimization is None or self.optimization.one_backward
        # DDP: also gives every rank rank 0's weights
        forward_step = self.strategy.wrap_step(module, self.device, one_backward)
        if self.optimization is not None:
            self.optimization.hooks = self.hooks
            self.optimization.forward_step = forward_step
            self.optimization.gate = self.strategy.gate
            self.optimization.no_sync = self.strategy.no_sync
            self.manual_optimizers = tuple(ManualOptimizer(opt, self.optimization, self._manual_progress)
                                           for opt in setup.optimizers)
        _attach(self, stage)

    def _make_sources(self, stage: str, loaders: dict[str, Any]) -> None:
        self.sources = {}
        for name, loader in loaders.items():
            if loader is None:
                continue
            loader = self.strategy.shard(loader)  # strategy="ddp": this rank's part of the data
            count = count_batches(loader, self.limits[name], _LIMIT_NAMES[name])
            if count == 0 and self.limits[name] is None:
                raise ConfigError(f"The {name} dataloader is empty (len 0): check the dataset size, batch_size "
                                  "and drop_last.")
            self.sources[name] = BatchSource(loader, count, self.device)
        validate = self.sources.get("validate")
        self.val_enabled = stage == "fit" and validate is not None and validate.num_batches > 0
        if "train" in self.sources:
            self.val_check_batches = val_check_batches(self.val_check_interval, self.sources["train"].num_batches)

    def _manual_progress(self) -> Any:
        return self.fit_loop.epoch_loop.batch_loop.manual_loop.progress

    def _finish(self, stage: str) -> None:
        for callback in self.callbacks:
            callback.teardown(self, self.module, stage)
        for logger in self.loggers:
            logger.save()
        self.state = "idle"


_LIMIT_NAMES = {"train": "train", "validate": "val", "test": "test", "predict": "predict"}


def _entry(stage: str) -> str:
    return {"train": "fit", "validate": "validate", "test": "test", "predict": "predict"}[stage]


def _attach(trainer: Trainer, stage: str) -> None:
    """Point every loop at the trainer; only the tree about to run resolves its per-run choices."""
    roots = {"fit": trainer.fit_loop, "validate": trainer.validate_loop, "test": trainer.test_loop,
             "predict": trainer.predict_loop}
    for root in roots.values():
        for _, node in root.walk():
            if isinstance(node, TrainerLoop):
                node.trainer = trainer
    for _, node in roots[stage].walk():
        if isinstance(node, TrainerLoop):
            node.on_attach()
