"""``Trainer``: the flags, the entry points and the checkpoint paths; it assembles a run and runs a loop tree.

The Trainer owns no training logic.  Each entry point, in Lightning's order:

1. *check the arguments* -- the module's steps, dataloaders or a
   :class:`~statemachine_trainer.datamodule.DataModule` (not both), before
   anything runs (the flags were checked once, in ``__init__``, into a
   :class:`TrainerConfig`; ``ConfigError`` names the problem and the fix);
2. *begin a run* -- a :class:`~statemachine_trainer._run.Run` the module and
   data module see as ``trainer`` from their first hook on; then the
   lifecycle hooks of :mod:`._lifecycle` (``configure_callbacks``,
   ``prepare_data``, ``setup``, ``configure_model``), the dataloaders, ``configure_optimizers``
   (whose ``self.trainer`` already has the data: ``estimated_stepping_batches``);
3. *assemble it* -- the device, precision, the hook relay, the logged-values
   store, one :class:`~statemachine_trainer._optimization.Optimization` and a
   ``BatchSource`` per dataloader -- and attach every loop of the tree to it;
4. *run* the stage's root loop (``fit_loop`` for ``fit``: a table, like every
   loop in the tree, and any loop at all when a user's loop wraps the fit
   loop), with a :class:`~statemachine_trainer._boundary.BoundaryWriter`
   observing it so checkpoints are written at transition boundaries; then
   ``teardown``, also after a failure.

The tree is plain attributes (``trainer.fit_loop.epoch_loop.batch_loop...``),
so ``trainer.fit_loop = MyLoop()``, ``connect`` and ``replace`` swap parts of
it.  Lightning's read-only names (``trainer.current_epoch``,
``trainer.global_step``, ``trainer.callback_metrics``...) read the latest run.
"""

from __future__ import annotations

import inspect
import os
import random
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from . import _lifecycle, _run_state
from ._boundary import BoundaryWriter
from ._compile import from_compiled
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
from .data._source import is_loader_collection
from .datamodule import DataModule
from .loops import EvaluationLoop, FitLoop, PredictionLoop
from .loops._base import TrainerLoop
from .machine import Loop
from .module import TrainingModule
from .utilities import rank_zero_only

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
        min_steps: int | None = None,
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
        gradient_clip_algorithm: str | None = None,
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
            max_epochs=max_epochs, min_epochs=min_epochs, min_steps=min_steps, max_steps=max_steps,
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
        if self.config.seed is not None:  # now, so what is built after the Trainer (model, samplers) is seeded too
            seed_everything(self.config.seed)
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
    def fit(self, model: TrainingModule | None = None, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: DataModule | None = None, ckpt_path: str | os.PathLike[str] | None = None) -> None:
        """Train ``model``; ``ckpt_path`` resumes from a checkpoint written by ``save_checkpoint``.

        The data comes from the dataloaders given, or a ``datamodule`` (also
        accepted in ``train_dataloaders``' place, as in Lightning), or the
        model's own ``train_dataloader``/``val_dataloader``.  When ``fit_loop``
        is a user's loop wrapping the fit loop (K-fold, active learning), the
        training data may come from that loop instead
        (``self.context.use_data(train=...)`` in its transitions).
        """
        self.strategy.launch_if_needed()  # strategy="ddp" from a plain `python script.py`: run N workers, exit
        if isinstance(train_dataloaders, DataModule):  # fit(model, dm): Lightning takes it as the datamodule
            train_dataloaders, datamodule = None, _only_datamodule("fit", train_dataloaders, datamodule)
        _check_data_args("fit", datamodule, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders)
        if model is None:
            raise ConfigError("trainer.fit() needs a model: trainer.fit(model, train_dataloaders) or "
                              "trainer.fit(model, datamodule=dm).")
        model = from_compiled(model)
        check_module(model, "training_step", "fit")
        run, path = self._begin("fit", model, datamodule, ckpt_path)
        _lifecycle.prepare_data(run)
        try:
            saved = self._set_up(run, path)
            self._use_fit_data(run, train_dataloaders, val_dataloaders)
            setup = parse_optimizers(model.configure_optimizers())  # self.trainer and the data are ready
            check_optimization_mode(model, setup, self.config)
            self._assemble(run, setup)
            with self._boundaries.watch(self.fit_loop, getattr(run.fit_loop, "epoch_loop", None)):
                if saved is not None:
                    self._restore(saved, whole_run=True)
                hparams = _hyperparameters(model, datamodule)
                for logger in self.loggers:  # after a restore: a resumed run logs into the run's own version
                    logger.log_hyperparams(hparams)
                self.fit_loop.run()
        finally:
            self._finish(run, self.fit_loop)

    def validate(self, model: TrainingModule | None = None, dataloaders: Any = None,
                 ckpt_path: str | os.PathLike[str] | None = None, verbose: bool = True,
                 datamodule: DataModule | None = None) -> list[dict[str, float]]:
        """One dict of logged epoch values per dataloader; without ``model``, the last fit's, from its best checkpoint."""
        return _per_dataloader(self._evaluate("validate", model, dataloaders, ckpt_path, datamodule, verbose))

    def test(self, model: TrainingModule | None = None, dataloaders: Any = None,
             ckpt_path: str | os.PathLike[str] | None = None, verbose: bool = True,
             datamodule: DataModule | None = None) -> list[dict[str, float]]:
        """One dict of logged epoch values per dataloader; without ``model``, the last fit's, from its best checkpoint."""
        return _per_dataloader(self._evaluate("test", model, dataloaders, ckpt_path, datamodule, verbose))

    def predict(self, model: TrainingModule | None = None, dataloaders: Any = None,
                datamodule: DataModule | None = None, return_predictions: bool | None = None,
                ckpt_path: str | os.PathLike[str] | None = None) -> list[Any] | None:
        """The predict_step outputs, batch by batch (None with ``return_predictions=False``)."""
        if return_predictions not in (None, True, False):
            raise ConfigError(f"return_predictions={return_predictions!r} must be True, False or None.")
        predictions = self._run_entry("predict", model, dataloaders, ckpt_path, datamodule)
        return None if return_predictions is False else predictions

    def _use_fit_data(self, run: Run, train_dataloaders: Any, val_dataloaders: Any) -> None:
        """The fit's data: the loaders given, else the data module's, else the module's own methods.

        As in Lightning, validation data is read first, and only when the
        module has a ``validation_step`` to run on it (a data module's
        ``val_dataloader`` is not called otherwise; loaders passed explicitly
        without one are refused).
        """
        model = run.module
        has_step = defines(model, "validation_step")
        if val_dataloaders is not None and not has_step:
            raise ConfigError(f"fit() was given val_dataloaders, but {type(model).__name__} defines no "
                              "validation_step; define it, or do not pass validation data.")
        val = self._sanity_isolated(lambda: self._loader(run, val_dataloaders, "validate", required=False)) \
            if has_step else None
        wrapped = not isinstance(self.fit_loop, FitLoop)  # a user's loop around it may bring its own data
        train = self._loader(run, train_dataloaders, "train", required=not wrapped)
        run.use_data(**{name: loader for name, loader in (("train", train), ("validate", val)) if loader is not None})

    def _sanity_isolated(self, request: Any) -> Any:
        """``request()`` -- the validation loader -- without moving the global RNGs when a sanity check will run.

        Lightning asks for it inside the sanity check, which runs on saved RNG
        states: whatever ``val_dataloader()`` draws (a dataset built with
        ``torch.randn``, as the BoringModel's) leaves the training data and
        weights alone.  Asking here, under the same isolation, keeps a ported
        program's training bit-identical.
        """
        if not self.config.num_sanity_val_steps:
            return request()
        from .checkpoint import capture_rng, restore_rng

        saved = capture_rng()
        try:
            return request()
        finally:
            restore_rng(saved)

    def _evaluate(self, stage: str, model: TrainingModule | None, dataloaders: Any,
                  ckpt_path: str | os.PathLike[str] | None, datamodule: DataModule | None,
                  verbose: bool) -> Any:
        results = self._run_entry(stage, model, dataloaders, ckpt_path, datamodule)
        if verbose and self.strategy.is_rank_zero:
            for one in _per_dataloader(results):
                if one:
                    print(_results_table(stage, one))
        return results

    def _run_entry(self, stage: str, model: TrainingModule | None, dataloaders: Any,
                   ckpt_path: str | os.PathLike[str] | None, datamodule: DataModule | None) -> Any:
        """validate/test/predict: one pass of the stage's loop over its data."""
        self.strategy.launch_if_needed()  # e.g. trainer.test(...) alone in a script run with devices=N
        if isinstance(dataloaders, DataModule):  # test(model, dm), as Lightning accepts
            dataloaders, datamodule = None, _only_datamodule(stage, dataloaders, datamodule)
        _check_data_args(stage, datamodule, dataloaders=dataloaders)
        if model is None and dataloaders is None and datamodule is None:
            datamodule = self.run.datamodule  # trainer.test() after fit(model, datamodule=dm): that data module
        model, ckpt_path = self._model_for(stage, model, ckpt_path)
        model = from_compiled(model)
        check_module(model, STAGE_STEPS[stage], stage)
        run, path = self._begin(stage, model, datamodule, ckpt_path)
        _lifecycle.prepare_data(run)
        root = self._roots()[stage]
        try:
            saved = self._set_up(run, path)
            run.use_data(**{stage: self._loader(run, dataloaders, stage, required=True)})
            self._assemble(run, None)
            if saved is not None:
                self._restore(saved, whole_run=False)
            return root.run()
        finally:
            self._finish(run, root)

    def _model_for(self, stage: str, model: TrainingModule | None,
                   ckpt_path: str | os.PathLike[str] | None) -> tuple[TrainingModule, Any]:
        """The model to run and the checkpoint to load: without a model, the last run's, from "best" by default.

        As Lightning: ``trainer.test()`` after ``fit`` tests the fitted model
        restored from its best checkpoint (a warning says so), and
        ``ckpt_path="best"``/``"last"``/a path picks another.
        """
        if model is not None:
            return model, ckpt_path
        previous = self.run.module
        if previous is None:
            raise ConfigError(f"trainer.{stage}() was given no model and this trainer has run none yet; pass one: "
                              f"trainer.{stage}(model, dataloaders) (or datamodule=dm).")
        if ckpt_path is None:
            warnings.warn(f"trainer.{stage}() was called without a model: the model of this trainer's last run is "
                          f"used, with the weights of its best checkpoint. Pass {stage}(ckpt_path='best') (or "
                          "'last', or a path) to silence this warning.", stacklevel=4 if stage == "predict" else 5)
            ckpt_path = "best"
        return previous, ckpt_path

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
    datamodule = _FromRun()
    optimization = _FromRun()
    default_root_dir = _FromRun()
    lightning_module = _FromRun()
    global_rank = _FromRun()
    local_rank = _FromRun()
    node_rank = _FromRun()
    world_size = _FromRun()
    num_devices = _FromRun()
    log_dir = _FromRun()
    checkpoint_callback = _FromRun()
    checkpoint_callbacks = _FromRun()
    estimated_stepping_batches = _FromRun()
    is_last_batch = _FromRun()

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

    def _checkpoint_path(self, ckpt_path: str | os.PathLike[str]) -> Path:
        """The checkpoint ``ckpt_path`` names ("best", "last", "latest" or a path), the same on every rank."""
        if not self.strategy.distributed:
            return self._resolve_ckpt_path(ckpt_path)
        from .distributed import broadcast_object

        # Rank 0 picks ("latest" may skip a checkpoint another rank would not see yet): all load the same one.
        return broadcast_object(self._resolve_ckpt_path(ckpt_path) if self.strategy.is_rank_zero else None)

    def _read_checkpoint(self, path: Path) -> tuple[dict[str, Any], Path]:
        """``(state, path)`` of the checkpoint at ``path`` (every rank its own part and the replicated one)."""
        if not self.strategy.distributed:
            from .checkpoint import load_checkpoint_dir

            state, _ = load_checkpoint_dir(path, map_location=self.run.device)
            return state, path
        from .checkpoint import load_checkpoint_parts

        replicated, rank_local, _ = load_checkpoint_parts(path, map_location=self.run.device)
        return {**replicated, **rank_local}, path

    def _restore(self, saved: tuple[Any, Path], whole_run: bool) -> None:
        """Apply a structured checkpoint: with ``whole_run`` (fit) everything, otherwise the weights; checked first."""
        typed, path = saved
        _run_state.check(self.run, self.fit_loop, typed, path, whole_run)
        _run_state.restore(self.run, self.fit_loop, typed, path, whole_run)

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
    def _loader(self, run: Run, given: Any, stage: str, required: bool) -> Any:
        """The dataloader of ``stage``: the one given, else the data module's, else the module's own method."""
        method = {"train": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
                  "predict": "predict_dataloader"}[stage]
        owner = run.datamodule if run.datamodule is not None else run.module
        loader = given
        self._requested_data[stage] = given is None
        if loader is None and callable(getattr(owner, method, None)):
            loader = getattr(owner, method)()
        if loader is None:
            if required:
                raise ConfigError(f"No {stage} data: pass a dataloader to trainer.{_entry(stage)}(model, ...) or "
                                  f"define {type(owner).__name__}.{method}().")
            return None
        if stage == "train" and is_loader_collection(loader):  # evaluation stages take several (dataloader_idx)
            raise ConfigError(f"The {stage} data is a {type(loader).__name__} of loaders; training takes one "
                              "dataloader: combine them into one dataset (torch.utils.data.ConcatDataset).")
        return loader

    def _reload_loader(self, stage: str) -> Any:
        """The loader ``*_dataloader()`` returns now (``reload_dataloaders_every_n_epochs``); None if given to fit."""
        if not self._requested_data.get(stage):
            return None
        return self._loader(self.run, None, stage, required=False)

    def _new_run(self, stage: str) -> Run:
        run = Run(self.config, stage, self.strategy, self.precision, self.device, self.callbacks, self.loggers,
                  request_checkpoint=self._boundaries.request, save_checkpoint=self.save_checkpoint,
                  configure_optimization=self._reconfigure_optimization, reload_data=self._reload_loader)
        run.fit_loop = next((node for _, node in self.fit_loop.walk() if isinstance(node, FitLoop)), None)
        return run

    def _begin(self, stage: str, module: TrainingModule, datamodule: DataModule | None,
               ckpt_path: str | os.PathLike[str] | None) -> tuple[Run, Path | None]:
        """A new run with the module and data module attached (``self.trainer`` works from the first hook on).

        Also the checkpoint to load: "best" and "last" are resolved before
        ``configure_callbacks`` may replace the ModelCheckpoint that names them
        (Lightning resolves them first too); "latest" and paths after, so the
        module's own ModelCheckpoint directory is the one searched.
        """
        config = self.config
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
        self.device = self.strategy.setup(self.device)
        rank_zero_only.rank = self.strategy.rank  # ported @rank_zero_only code sees this process's rank
        if config.seed is not None:  # + rank: each rank draws its own dropout masks (its data shard differs anyway)
            seed_everything(config.seed + self.strategy.rank)
        named_by_callback = ckpt_path in ("best", "last")
        path = self._checkpoint_path(ckpt_path) if named_by_callback else None
        run = self.run = self._new_run(stage)
        run.module, run.datamodule = module, datamodule
        module.trainer = run
        if datamodule is not None:
            datamodule.trainer = run
        self.callbacks = run.callbacks = _lifecycle.merge_callbacks(self.callbacks, module)
        if ckpt_path is not None and not named_by_callback:
            path = self._checkpoint_path(ckpt_path)
        return run, path

    def _set_up(self, run: Run, path: Path | None) -> Any:
        """``setup`` hooks, the module on its device, and the checkpoint to resume from, read and partly applied.

        A checkpoint's data module state is given back here, before the
        dataloaders are read (as Lightning does); the rest is checked against
        the run and applied once the optimizers exist (``_restore``).
        """
        _lifecycle.setup(run, run.state)
        _lifecycle.configure_model(run)
        run.module.to(self.device)  # after setup and configure_model, which may build layers
        run.module.zero_grad()  # as Lightning: gradients left from before the run never reach its first step
        if path is None:
            return None
        state, path = self._read_checkpoint(path)
        # Structured and checked as far as the run allows before the optimizers exist: nothing applied yet.
        typed = _run_state.structure(run, self.fit_loop, state, path, whole_run=run.state == "fit")
        _run_state.check_datamodule(run, typed, path)
        _run_state.restore_datamodule(run, typed, path)
        return typed, path

    def _assemble(self, run: Run, setup: Any) -> None:
        """The strategy's step, the optimization (fit), the hook relay; the loops are attached last."""
        module = run.module
        one_backward = setup is None or Optimization.runs_one_backward(module, setup)
        # DDP: also gives every rank rank 0's weights
        forward_step = self.strategy.wrap_step(module, self.device, one_backward)
        if setup is not None:
            self._configure_optimization(run, setup, forward_step)
        # After setup, so a callback that switched itself off there (enabled = False) costs nothing.
        run.hooks = HookRelay(module, [cb for cb in run.callbacks if cb.enabled], run, run.results)
        if run.optimization is not None:
            run.optimization.hooks = run.hooks
        self._attach(run, self._roots()[run.state])

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
        _lifecycle.teardown(run, run.state)
        for logger in self.loggers:
            logger.save()
        root.teardown()
        run.state = "idle"



def _per_dataloader(result: Any) -> list[dict[str, float]]:
    """An evaluation loop returns a dict for one dataloader and a list of dicts for several."""
    return result if isinstance(result, list) else [result]


def _entry(stage: str) -> str:
    return {"train": "fit", "validate": "validate", "test": "test", "predict": "predict"}[stage]


#: The module method each entry point other than fit runs on every batch.
STAGE_STEPS = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}


def _only_datamodule(entry: str, positional: DataModule, datamodule: DataModule | None) -> DataModule:
    if datamodule is not None:
        raise ConfigError(f"trainer.{entry}() was given two data modules (one in the dataloaders' place, one as "
                          "datamodule=); pass one.")
    return positional


def _check_data_args(entry: str, datamodule: Any, **loaders: Any) -> None:
    """A data module and dataloaders exclude each other, as in Lightning; a data module must be a DataModule."""
    if datamodule is None:
        return
    if not isinstance(datamodule, DataModule):
        raise ConfigError(f"trainer.{entry}(datamodule=...) needs a DataModule, got {type(datamodule).__name__}; "
                          "subclass statemachine_trainer.DataModule, or pass dataloaders instead.")
    given = [name for name, loader in loaders.items() if loader is not None]
    if given:
        raise ConfigError(f"trainer.{entry}() was given {' and '.join(given)} and a datamodule; pass the "
                          "dataloaders or the datamodule, not both.")


def _hyperparameters(model: TrainingModule, datamodule: DataModule | None) -> dict[str, Any]:
    """The module's and the data module's saved hyperparameters, for the loggers (Lightning merges them too)."""
    merged = model.hyperparameters_to_log()
    for name, value in (datamodule.hyperparameters_to_log() if datamodule is not None else {}).items():
        if name in merged and merged[name] != value:
            raise ConfigError(f"The hyperparameter {name!r} is {merged[name]!r} in {type(model).__name__} but "
                              f"{value!r} in {type(datamodule).__name__}; the loggers record one set, so rename "
                              "one of them.")
        merged[name] = value
    return merged


def _results_table(stage: str, results: dict[str, float]) -> str:
    """What validate/test print with ``verbose=True`` (Lightning's results table, as plain text)."""
    title = f"{stage.capitalize()} metric"
    width = max(len(title), *(len(name) for name in results)) + 4
    rule = "-" * (width + 14)
    rows = [f"{name.ljust(width)}{float(value):.6g}" for name, value in sorted(results.items())]
    return "\n".join([rule, title.ljust(width) + "DataLoader 0", rule, *rows, rule])


def _manual_progress(run: Run) -> Any:
    """Where a manual optimizer counts its steps: the fit loop's manual optimization loop."""
    def progress() -> Any:
        return run.fit_loop.epoch_loop.batch_loop.manual_loop.progress
    return progress


#: Every flag ``Trainer()`` takes, for the did-you-mean of a misspelt one.
_TRAINER_FLAGS = tuple(name for name in inspect.signature(Trainer.__init__).parameters if name not in ("self", "unknown"))
