"""``Trainer``: the flags, the entry points and the checkpoint paths; it assembles a run and runs a loop tree.

The Trainer owns no training logic.  Each entry point does three things:

1. *check* -- the module's steps, the dataloaders and what
   ``configure_optimizers`` returned, before anything trains (the flags were
   checked once, in ``__init__``, into a :class:`TrainerConfig`; ``ConfigError``
   names the problem and the fix);
2. *assemble a run* -- a :class:`~statemachine_trainer._run.Run` with the
   device, precision, the hook relay, the logged-values store, one
   :class:`~statemachine_trainer._optimization.Optimization` and a
   ``BatchSource`` per dataloader -- and attach every loop of the tree to it;
3. *run* the stage's root loop (``fit_loop`` for ``fit``: a table, like every
   loop in the tree, and any loop at all when a user's loop wraps the fit
   loop), with a :class:`~statemachine_trainer._boundary.BoundaryWriter`
   observing it so checkpoints are written at transition boundaries.

The tree is plain attributes (``trainer.fit_loop.epoch_loop.batch_loop...``),
so ``trainer.fit_loop = MyLoop()``, ``connect`` and ``replace`` swap parts of
it.  Lightning's read-only names (``trainer.current_epoch``,
``trainer.global_step``, ``trainer.callback_metrics``...) read the latest run.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from . import _run_state
from ._boundary import BoundaryWriter
from ._config import (
    check_module,
    check_optimization_mode,
    default_callbacks,
    default_loggers,
    defines,
    resolve_device,
)
from ._flag_effects import RunModes, add_flag_callbacks, set_torch_flags
from ._flags import FLAG_NAMES, TrainerConfig
from ._hooks import HookRelay
from ._optim import ConfigError, parse_optimizers
from ._optimization import ManualOptimizer, Optimization
from ._precision import Precision
from ._refused import missing_attribute, refuse_flags
from ._run import Run
from ._strategy import launched_rank_zero, make_strategy
from .loops import EvaluationLoop, FitLoop, PredictionLoop
from .loops._base import TrainerLoop
from .machine import Loop
from .module import TrainingModule

__all__ = ["Trainer", "TrainerConfig", "seed_everything"]


def seed_everything(seed: int) -> int:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) with ``seed``."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


class _FromRun:
    """A Trainer attribute that reads the latest run's (``trainer.global_step`` is ``trainer.run.global_step``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, trainer: Any, owner: type) -> Any:
        return self if trainer is None else getattr(trainer.run, self.name)


class Trainer:
    """Runs ``fit`` / ``validate`` / ``test`` / ``predict`` for a :class:`TrainingModule`.

    Flags follow Lightning's names and defaults.  ``max_epochs`` defaults to
    1000 when neither it nor ``max_steps`` is given; ``-1`` means unlimited.
    The checked flags are ``trainer.config`` (also readable as
    ``trainer.max_epochs`` etc.).
    """

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: str = "auto",
        devices: int | str = 1,
        num_nodes: int = 1,
        precision: str | int = "32",
        logger: Any = None,
        callbacks: Sequence[Any] | Any | None = None,
        fast_dev_run: bool | int = False,
        max_epochs: int | None = None,
        min_epochs: int = 0,
        max_steps: int = -1,
        max_time: str | timedelta | dict[str, int] | None = None,
        limit_train_batches: float | None = None,
        limit_val_batches: float | None = None,
        limit_test_batches: float | None = None,
        limit_predict_batches: float | None = None,
        overfit_batches: float = 0.0,
        val_check_interval: float | None = None,
        check_val_every_n_epoch: int = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        deterministic: bool = False,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Any = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        **unknown: Any,
    ) -> None:
        """Lightning 2's flags (see the README's "Trainer flags" table); ``seed`` is ours.

        A Lightning flag this Trainer lacks (``resume_from_checkpoint``,
        ``gpus``, ``auto_lr_find``...) raises ConfigError naming the
        replacement; a misspelt one suggests the right name.
        """
        refuse_flags(unknown, _TRAINER_FLAGS)
        self.config = TrainerConfig.from_flags(
            max_epochs=max_epochs, min_epochs=min_epochs, max_steps=max_steps,
            limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches, limit_predict_batches=limit_predict_batches,
            val_check_interval=val_check_interval, check_val_every_n_epoch=check_val_every_n_epoch,
            num_sanity_val_steps=num_sanity_val_steps, fast_dev_run=fast_dev_run,
            accumulate_grad_batches=accumulate_grad_batches, gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm, deterministic=deterministic, seed=seed,
            log_every_n_steps=log_every_n_steps, default_root_dir=default_root_dir, logger=logger,
            enable_progress_bar=enable_progress_bar, enable_checkpointing=enable_checkpointing,
            enable_model_summary=enable_model_summary, max_time=max_time, overfit_batches=overfit_batches,
            reload_dataloaders_every_n_epochs=reload_dataloaders_every_n_epochs, detect_anomaly=detect_anomaly,
            inference_mode=inference_mode, benchmark=benchmark, num_nodes=num_nodes,
            use_distributed_sampler=use_distributed_sampler, sync_batchnorm=sync_batchnorm, profiler=profiler,
            barebones=barebones)
        self.device = resolve_device(accelerator)
        self.strategy = make_strategy(strategy, devices, self.device.type, self.config.num_nodes,
                                      self.config.sync_batchnorm, self.config.use_distributed_sampler)
        if not launched_rank_zero(self.strategy):  # loggers and the progress bar live on rank 0 only
            self.config = attrs.evolve(self.config, logger=False, enable_progress_bar=False)
        self.precision = Precision(precision, self.device)
        set_torch_flags(self.config)
        self.callbacks = default_callbacks(callbacks, self.config.enable_progress_bar,
                                           self.config.enable_checkpointing)
        add_flag_callbacks(self.callbacks, self.config)
        self.loggers = default_loggers(self.config.logger, self.config.default_root_dir)
        self._modes = RunModes(self.config)  # detect_anomaly and the profiler, around each run
        self._requested_data: dict[str, bool] = {}  # stage -> its loader came from *_dataloader() (reloadable)

        self.fit_loop: Loop = FitLoop()
        self.validate_loop: Loop = EvaluationLoop("validate")
        self.test_loop: Loop = EvaluationLoop("test")
        self.predict_loop: Loop = PredictionLoop()

        self._boundaries = BoundaryWriter(self.save_checkpoint, self._preemption_path, self.strategy)
        self.run = self._new_run("idle")  # the latest run; an idle one until an entry point assembles one

    # -- the four entry points -------------------------------------------------------------
    def fit(self, module: TrainingModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            ckpt_path: str | os.PathLike[str] | None = None) -> None:
        """Train ``module``; ``ckpt_path`` resumes from a checkpoint written by ``save_checkpoint``.

        When ``fit_loop`` is a user's loop wrapping the fit loop (K-fold, active
        learning), the training data may come from that loop instead
        (``self.context.use_data(train=...)`` in its transitions).
        """
        self.strategy.launch_if_needed()  # strategy="ddp" from a plain `python script.py`: run N workers, exit
        check_module(module, "training_step", "fit")
        wrapped = not isinstance(self.fit_loop, FitLoop)
        train = self._loader(module, train_dataloaders, "train", required=not wrapped)
        val = self._loader(module, val_dataloaders, "validate", required=False)
        if val is not None and not defines(module, "validation_step") and val_dataloaders is not None:
            raise ConfigError(f"fit() was given val_dataloaders, but {type(module).__name__} defines no "
                              "validation_step; define it, or do not pass validation data.")
        setup = parse_optimizers(module.configure_optimizers())
        check_optimization_mode(module, setup, self.config)
        run = self._prepare("fit", module, {"train": train, "validate": val}, setup)
        fit = run.fit_loop
        try:
            with self._boundaries.watch(self.fit_loop, getattr(fit, "epoch_loop", None)):
                if ckpt_path is not None:
                    self._restore(ckpt_path, whole_run=True)
                for logger in self.loggers:  # after a restore: a resumed run logs into the run's own version
                    logger.log_hyperparams(dict(getattr(module, "hparams", None) or {}))
                self.fit_loop.run()
        finally:
            self._finish(run, self.fit_loop)

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
        run = self._prepare("predict", module, {"predict": loader}, None)
        try:
            if ckpt_path is not None:
                self._restore(ckpt_path, whole_run=False)
            return self.predict_loop.run()
        finally:
            self._finish(run, self.predict_loop)

    def _evaluate(self, stage: str, module: TrainingModule, dataloaders: Any,
                  ckpt_path: str | os.PathLike[str] | None) -> dict[str, float]:
        self.strategy.launch_if_needed()  # e.g. trainer.test(...) alone in a script run with devices=N
        step = "validation_step" if stage == "validate" else "test_step"
        check_module(module, step, stage)
        loader = self._loader(module, dataloaders, stage, required=True)
        run = self._prepare(stage, module, {stage: loader}, None)
        loop = self.validate_loop if stage == "validate" else self.test_loop
        try:
            if ckpt_path is not None:
                self._restore(ckpt_path, whole_run=False)
            return loop.run()
        finally:
            self._finish(run, loop)

    # -- Lightning's read-only names, from the latest run ---------------------------------------
    current_epoch = _FromRun()
    global_step = _FromRun()
    callback_metrics = _FromRun()
    progress_bar_metrics = _FromRun()
    logged_metrics = _FromRun()
    optimizers = _FromRun()
    lr_scheduler_configs = _FromRun()
    logger = _FromRun()
    num_training_batches = _FromRun()
    is_global_zero = _FromRun()
    sanity_checking = _FromRun()
    state = _FromRun()
    module = _FromRun()
    optimization = _FromRun()
    default_root_dir = _FromRun()
    lightning_module = _FromRun()
    global_rank = _FromRun()
    local_rank = _FromRun()
    node_rank = _FromRun()
    world_size = _FromRun()
    num_devices = _FromRun()

    @property
    def should_stop(self) -> bool:
        return self.run.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.run.should_stop = value

    def callback(self, cls: type) -> Any:
        """The first callback that is an instance of ``cls``, or None."""
        return self.run.callback(cls)  # the run holds this trainer's callbacks

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found normally: the flags, read from the checked config.
        if name in FLAG_NAMES:
            return getattr(self.config, name)
        raise missing_attribute("Trainer", name, [*dir(type(self)), *FLAG_NAMES])

    # -- checkpoints --------------------------------------------------------------------------------
    def request_checkpoint(self, path: str | os.PathLike[str], on_written: Any = None) -> None:
        """Write a checkpoint at the next transition boundary (now, outside fit); see ``Run.request_checkpoint``."""
        self.run.request_checkpoint(path, on_written)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write the run's state as a checkpoint directory at ``path`` (atomically, checksummed).

        Module, optimizers, schedulers, grad scaler, the loop tree's state set,
        callback state, RNG states and what the module's and callbacks'
        ``on_save_checkpoint`` add.  See :mod:`statemachine_trainer.checkpoint`.
        """
        from .checkpoint import save_checkpoint_dir

        run = self.run
        metadata = {"step": run.global_step, "epoch": run.current_epoch, "stage": run.state}
        if not self.strategy.distributed:
            return save_checkpoint_dir(path, self.capture_state(), metadata)
        from .checkpoint import save_checkpoint_parts

        replicated, rank_local = _run_state.split(self.capture_state())  # every rank writes its own part
        return save_checkpoint_parts(path, replicated, rank_local, metadata)

    def capture_state(self) -> dict[str, Any]:
        """The run's state set as a checkpoint holds it (tensors not copied: write or compare it right away)."""
        return _run_state.capture(self.run, self.fit_loop)

    def _restore(self, ckpt_path: str | os.PathLike[str], whole_run: bool) -> None:
        """Load a checkpoint: with ``whole_run`` (fit) everything, otherwise the weights; checked before applied."""
        from .checkpoint import load_checkpoint_dir

        if not self.strategy.distributed:
            path = self._resolve_ckpt_path(ckpt_path)
            state, _ = load_checkpoint_dir(path, map_location=self.run.device)
        else:
            from .checkpoint import load_checkpoint_parts
            from .distributed import broadcast_object

            # Rank 0 picks ("latest" may skip a checkpoint another rank would not see yet): all load the same one.
            path = broadcast_object(self._resolve_ckpt_path(ckpt_path) if self.strategy.is_rank_zero else None)
            replicated, rank_local, _ = load_checkpoint_parts(path, map_location=self.run.device)
            state = {**replicated, **rank_local}
        _run_state.check(self.run, self.fit_loop, state, path, whole_run)
        _run_state.restore(self.run, self.fit_loop, state, whole_run)

    def _checkpoint_dir(self) -> Path:
        """Where checkpoints go: the ModelCheckpoint's directory, or ``default_root_dir/checkpoints``."""
        from .callbacks import ModelCheckpoint

        checkpoint = self.callback(ModelCheckpoint)
        return (Path(checkpoint.dirpath) if checkpoint and checkpoint.dirpath
                else self.config.default_root_dir / "checkpoints")

    def _preemption_path(self) -> Path:
        return self._checkpoint_dir() / f"preempted-epoch={self.run.current_epoch}-step={self.run.global_step}.ckpt"

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
            return self._latest(self._checkpoint_dir())
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

    # -- assembling and finishing a run -------------------------------------------------------------
    def _loader(self, module: TrainingModule, given: Any, stage: str, required: bool) -> Any:
        method = {"train": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
                  "predict": "predict_dataloader"}[stage]
        loader = given
        self._requested_data[stage] = given is None
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

    def _reload_loader(self, stage: str) -> Any:
        """The loader ``*_dataloader()`` returns now (``reload_dataloaders_every_n_epochs``); None if given to fit."""
        if not self._requested_data.get(stage):
            return None
        return self._loader(self.run.module, None, stage, required=False)

    def _new_run(self, stage: str) -> Run:
        run = Run(self.config, stage, self.strategy, self.precision, self.device, self.callbacks, self.loggers,
                  request_checkpoint=self._boundaries.request, save_checkpoint=self.save_checkpoint,
                  configure_optimization=self._reconfigure_optimization, reload_data=self._reload_loader)
        run.fit_loop = next((node for _, node in self.fit_loop.walk() if isinstance(node, FitLoop)), None)
        return run

    def _prepare(self, stage: str, module: TrainingModule, loaders: dict[str, Any], setup: Any) -> Run:
        """Everything a run needs, in dependency order; the loops are attached last."""
        config = self.config
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
        self.device = self.strategy.setup(self.device)
        if config.seed is not None:  # + rank: each rank draws its own dropout masks (its data shard differs anyway)
            seed_everything(config.seed + self.strategy.rank)
        module.to(self.device)
        run = self.run = self._new_run(stage)
        run.module = module
        module.trainer = run
        run.use_data(**{name: loader for name, loader in loaders.items() if loader is not None})
        one_backward = setup is None or Optimization.runs_one_backward(module, setup)
        # DDP: also gives every rank rank 0's weights
        forward_step = self.strategy.wrap_step(module, self.device, one_backward)
        if setup is not None:
            self._configure_optimization(run, setup, forward_step)
        for callback in self.callbacks:
            callback.setup(run, module, stage)
        # After setup, so a callback that switched itself off there (enabled = False) costs nothing.
        run.hooks = HookRelay(module, [cb for cb in self.callbacks if cb.enabled], run, run.results)
        if run.optimization is not None:
            run.optimization.hooks = run.hooks
        self._attach(run, self._roots()[stage])
        return run

    def _configure_optimization(self, run: Run, setup: Any, forward_step: Any) -> None:
        """The run's Optimization for what ``configure_optimizers`` returned, with the strategy's step parts."""
        config = self.config
        optimization = Optimization(run.module, setup, self.precision, run.hooks, run.results,
                                    config.accumulate_grad_batches, config.gradient_clip_val,
                                    config.gradient_clip_algorithm)
        optimization.forward_step = forward_step
        optimization.gate = self.strategy.gate
        optimization.no_sync = self.strategy.no_sync
        run.optimization = optimization
        run.manual_optimizers = tuple(ManualOptimizer(opt, optimization, _manual_progress(run))
                                      for opt in setup.optimizers)

    def _reconfigure_optimization(self, run: Run) -> None:
        """``run.reset_optimizers()``: configure_optimizers() again, checked, keeping the strategy's step."""
        setup = parse_optimizers(run.module.configure_optimizers())
        check_optimization_mode(run.module, setup, self.config)
        if len(setup.optimizers) != len(run.optimization.optimizers):
            raise ConfigError(f"reset_optimizers(): configure_optimizers() returned {len(setup.optimizers)} "
                              f"optimizer(s) this time but {len(run.optimization.optimizers)} at fit start; "
                              "return the same number every time.")
        self._configure_optimization(run, setup, run.optimization.forward_step)

    def _roots(self) -> dict[str, Loop]:
        return {"fit": self.fit_loop, "validate": self.validate_loop, "test": self.test_loop,
                "predict": self.predict_loop}

    def _attach(self, run: Run, root: Loop) -> None:
        """Point every loop of every tree at the run; the tree about to run resolves its per-run choices.

        A loop that wraps the fit loop runs evaluation or prediction as its own
        sub-loops (so their state is in its checkpoints): they are in ``root``.
        """
        for tree in self._roots().values():
            for _, node in tree.walk():
                if isinstance(node, TrainerLoop):
                    node.context = run
        for _, node in root.walk():
            if isinstance(node, TrainerLoop):
                node.on_attach()
        self._modes.enter(run, root)

    def _finish(self, run: Run, root: Loop) -> None:
        self._modes.exit(run, root)
        for callback in self.callbacks:
            callback.teardown(run, run.module, run.state)
        for logger in self.loggers:
            logger.save()
        root.teardown()
        run.state = "idle"



def _entry(stage: str) -> str:
    return {"train": "fit", "validate": "validate", "test": "test", "predict": "predict"}[stage]


def _manual_progress(run: Run) -> Any:
    """Where a manual optimizer counts its steps: the fit loop's manual optimization loop."""
    def progress() -> Any:
        return run.fit_loop.epoch_loop.batch_loop.manual_loop.progress
    return progress


#: Every flag ``Trainer()`` takes, for the did-you-mean of a misspelt one.
_TRAINER_FLAGS = tuple(name for name in inspect.signature(Trainer.__init__).parameters if name not in ("self", "unknown"))
