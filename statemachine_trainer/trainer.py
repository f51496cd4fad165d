"""``Trainer``: the flags, the entry points and the checkpoint paths; it assembles a run and runs a loop tree.

The Trainer owns no training logic.  Each entry point checks its arguments
-- the module's steps, dataloaders or a
:class:`~statemachine_trainer.datamodule.DataModule` (not both) -- before
anything runs (the flags were checked once, in ``__init__``, into a
:class:`TrainerConfig`; ``ConfigError`` names the problem and the fix), begins
a :class:`~statemachine_trainer._run.Run` the module and data module see as
``trainer`` from their first hook on, and runs the stage's entry loop
(:mod:`._entry`, ``trainer.entry_loops``): a table whose rows are the run's
lifecycle in Lightning's order -- ``configure_callbacks``, ``prepare_data``,
``setup``, ``configure_model``, the data, ``configure_optimizers``, the
assembly, the stage's loop tree (``fit_loop`` for fit, observed so checkpoints
are written at its transition boundaries), ``teardown`` (also after a
failure).

The tree is plain attributes (``trainer.fit_loop.epoch_loop.batch_loop...``),
so ``trainer.fit_loop = MyLoop()``, ``connect`` and ``replace`` swap parts of
it.  Lightning's read-only names (``trainer.current_epoch``,
``trainer.global_step``, ``trainer.callback_metrics``...) read the latest run.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from . import _run_state
from ._boundary import BoundaryWriter
from ._compile import from_compiled
from ._config import (
    check_module,
    check_optimization_mode,
    default_callbacks,
    default_loggers,
    resolve_device,
)
from ._entry import EntryCall, EntryLoop, FitEntryLoop, configure_optimization, request_loader
from ._flag_effects import RunModes, add_flag_callbacks, set_torch_flags
from ._flags import FLAG_NAMES, TrainerConfig
from ._optim import ConfigError, configure_optimizers
from ._precision import Precision
from ._refused import missing_attribute, refuse_flags
from ._run import Run
from ._strategy import launched_rank_zero
from ._strategy_flag import make_strategy
from .datamodule import DataModule
from .loops import EvaluationLoop, FitLoop, PredictionLoop
from .machine import Loop
from .module import TrainingModule
from .utilities import rank_zero_only

__all__ = ["Trainer", "TrainerConfig", "seed_everything"]


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) with ``seed``; return it.

    Lightning's signature.  ``seed=None`` takes ``PL_GLOBAL_SEED`` from the
    environment (Lightning's variable), else 0, with a warning.  ``workers``
    is accepted for ported code: dataloader workers are always seeded here
    (per batch, from the run's seed, see ``data/_seeding.py``), which is what
    Lightning's ``workers=True`` asks for.  ``verbose`` logs the seed (the
    ``statemachine_trainer`` logger, INFO).
    """
    if seed is None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        warnings.warn(f"seed_everything() was given no seed; seed set to {seed}.", stacklevel=2)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}.")
    if verbose:
        logging.getLogger("statemachine_trainer").info("Seed set to %d", seed)
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
        strategy: Any = "auto",
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
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int | None = None,
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
        save_on_exception: bool = False,
        resumable_data: bool = True,
        global_batch_size: int | None = None,
        **unknown: Any,
    ) -> None:
        """Lightning 2's flags (see the README's "Trainer flags" table); ``seed``, ``save_on_exception``,
        ``resumable_data`` and ``global_batch_size`` are ours.

        ``accumulate_grad_batches`` defaults to 1 (None: not given); with
        ``global_batch_size=G`` it is derived at fit start as ``G //
        (batch_size * world size)`` and refused when given (README "Elastic
        resume").

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
            barebones=barebones, save_on_exception=save_on_exception, resumable_data=resumable_data,
            global_batch_size=global_batch_size)
        self.device = resolve_device(accelerator)
        self.strategy = make_strategy(strategy, devices, self.device.type, self.config.num_nodes,
                                      self.config.sync_batchnorm, self.config.use_distributed_sampler)
        if self.config.save_on_exception and self.strategy.distributed:
            raise ConfigError("save_on_exception=True runs in one process only: under DDP an exception on one rank "
                              "leaves the others waiting inside a collective, with no common boundary to save. "
                              "Use ModelCheckpoint(every_n_train_steps=...) and resume with ckpt_path='latest'.")
        if not launched_rank_zero(self.strategy):  # loggers and the progress bar live on rank 0 only
            self.config = attrs.evolve(self.config, logger=False, enable_progress_bar=False)
        self.strategy.root_device = self.device
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
        # Each entry point's lifecycle as a table (setup, configure_optimizers, teardown... as rows), with the
        # stage's tree as its child: `statemachine-trainer diagram` of a Trainer draws the fit one.
        self.entry_loops: dict[str, EntryLoop] = {"fit": FitEntryLoop(self), **{
            stage: EntryLoop(stage, self) for stage in ("validate", "test", "predict")}}

        self.run_id: str | None = None  # the run this trainer's fits belong to; in every checkpoint (_run_dir)
        self._writer: Any = None  # the AsyncCheckpointWriter, made at the first asynchronous save
        self._boundaries = BoundaryWriter(self.save_checkpoint, self._preemption_path, self.strategy,
                                          write_async=self._save_async, flush=self._flush_writes)
        if self.config.save_on_exception:
            self._boundaries.save_on_exception(self._snapshot, self._write_snapshot)
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
        call = EntryCall(model, datamodule, {"train": train_dataloaders, "validate": val_dataloaders}, ckpt_path)
        self._begin("fit", call)
        self.entry_loops["fit"].run(call)

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
        call = EntryCall(model, datamodule, {stage: dataloaders}, ckpt_path)
        self._begin(stage, call)
        return self.entry_loops[stage].run(call)

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
    ckpt_path = _FromRun()
    model = _FromRun()
    training = _FromRun()
    validating = _FromRun()
    testing = _FromRun()
    predicting = _FromRun()
    evaluating = _FromRun()
    interrupted = _FromRun()
    num_val_batches = _FromRun()
    num_test_batches = _FromRun()
    num_predict_batches = _FromRun()
    num_sanity_val_batches = _FromRun()
    val_check_interval = _FromRun()
    train_dataloader = _FromRun()
    val_dataloaders = _FromRun()
    test_dataloaders = _FromRun()
    predict_dataloaders = _FromRun()
    device_ids = _FromRun()
    early_stopping_callback = _FromRun()
    early_stopping_callbacks = _FromRun()
    progress_bar_callback = _FromRun()

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0, above a progress bar that is drawing (Lightning's ``trainer.print``)."""
        self.run.print(*args, **kwargs)

    @contextlib.contextmanager
    def init_module(self, empty_init: bool | None = None) -> Iterator[None]:
        """Build the model inside it to create its tensors on this trainer's device, as Lightning's.

        ``empty_init=True`` (skip the initialisation, for sharded strategies)
        is refused: every strategy here needs initialised weights.
        """
        if empty_init:
            raise ConfigError("trainer.init_module(empty_init=True) skips weight initialisation for sharded "
                              "strategies, which this Trainer does not have; use trainer.init_module().")
        with torch.device(self.device):
            yield

    @property
    def should_stop(self) -> bool:
        return self.run.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.run.should_stop = value

    def callback(self, cls: type) -> Any:
        """The first callback that is an instance of ``cls``, or None."""
        return self.run.callback(cls)  # the run holds this trainer's callbacks

    @property
    def accumulate_grad_batches(self) -> int:
        """Batches per optimizer step: the flag, or with ``global_batch_size`` the one derived at fit start."""
        return self.run.accumulate_grad_batches

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found normally: the flags, read from the checked config.
        if name in FLAG_NAMES:
            return getattr(self.config, name)
        raise missing_attribute("Trainer", name, [*dir(type(self)), *FLAG_NAMES])

    # -- checkpoints --------------------------------------------------------------------------------
    def request_checkpoint(self, path: str | os.PathLike[str], on_written: Any = None, async_save: bool = False) -> None:
        """Write a checkpoint at the next transition boundary (now, outside fit); see ``Run.request_checkpoint``."""
        self.run.request_checkpoint(path, on_written, async_save=async_save)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write the run's state as a checkpoint directory at ``path`` (atomically, checksummed).

        Module, optimizers, schedulers, grad scaler, the loop tree's state set,
        callback state, RNG states and what the module's and callbacks'
        ``on_save_checkpoint`` add.  See :mod:`statemachine_trainer.checkpoint`.
        """
        from .checkpoint import save_checkpoint_dir

        if self._writer is not None:
            self._writer.wait()  # an asynchronous write in flight goes first (in order; its failure raised here)
        self._check_saveable()
        metadata = self._metadata()
        if not self.strategy.distributed:
            return save_checkpoint_dir(path, self.capture_state(), metadata)
        from .checkpoint import save_checkpoint_parts

        replicated, rank_local = _run_state.split(self.capture_state())  # every rank writes its own part
        return save_checkpoint_parts(path, replicated, rank_local, metadata)

    def _save_async(self, targets: list[tuple[Path, Any]]) -> None:
        """Copy the run's state to host memory now and write it to every target in the background (one process:
        ``BoundaryWriter.request`` refuses asynchronous requests under DDP before they reach here)."""
        self._check_saveable()
        if self._writer is None:
            from .checkpoint import AsyncCheckpointWriter

            self._writer = AsyncCheckpointWriter()
        optimization = self.run.optimization  # the optimizers' state is copied in the background, before they step
        self._writer.save(targets, self.capture_state(), self._metadata(),
                          until_step=optimization.optimizers if optimization is not None else ())

    def _flush_writes(self, close: bool = False) -> BaseException | None:
        """Wait for the asynchronous write in flight, if any; return its failure instead of raising it.

        ``close`` (a run's end) also frees the host copy kept for the next save, deletes the spare tensors file
        kept for the next save to write over, and waits for the background deletes of replaced and pruned
        checkpoints: when ``fit`` returns, the checkpoint directory is as it stays.
        """
        from .checkpoint import AsyncWriteError, release_spares

        try:
            if self._writer is not None and close:
                self._writer.close()
            elif self._writer is not None:
                self._writer.wait()
        except AsyncWriteError as exc:
            return exc
        finally:
            if close:
                release_spares()  # and waits for the background deletes
        return None

    def _check_saveable(self) -> None:
        from .checkpoint import CheckpointError

        stopped = self.fit_loop.active_path() if self.run.state == "idle" else ()
        if stopped:
            raise CheckpointError(f"Cannot save a checkpoint of this trainer: its last fit stopped inside a transition "
                                  f"({stopped[-1]}) when an exception escaped it, so its state is half of one "
                                  "transition and would not resume exactly. Resume from a checkpoint written before "
                                  "the failure (ckpt_path='latest').")

    def capture_state(self) -> dict[str, Any]:
        """The run's state set as a checkpoint holds it (tensors not copied: write or compare it right away)."""
        return _run_state.capture(self.run, self.fit_loop)

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The run's state now, copied (``save_on_exception``): what a checkpoint written here would hold."""
        return copy.deepcopy(self.capture_state()), self._metadata()

    def _metadata(self) -> dict[str, Any]:
        """What a checkpoint's manifest records: step and epoch (for ordering), the stage, and the run id."""
        run = self.run
        metadata = {"step": run.global_step, "epoch": run.current_epoch, "stage": run.state}
        if self.run_id is not None:
            metadata["run"] = self.run_id
        return metadata

    def _write_snapshot(self, snapshot: tuple[dict[str, Any], dict[str, Any]]) -> Path:
        from .checkpoint import save_checkpoint_dir

        failure = self._flush_writes()  # never two writes at once (a save cleans this process's temp directories)
        if failure is not None:
            warnings.warn(str(failure), stacklevel=2)
        state, metadata = snapshot
        path = self._checkpoint_dir() / f"exception-epoch={metadata['epoch']}-step={metadata['step']}.ckpt"
        return save_checkpoint_dir(path, state, metadata)

    def _checkpoint_path(self, ckpt_path: str | os.PathLike[str]) -> Path:
        """The checkpoint ``ckpt_path`` names ("best", "last", "latest" or a path), the same on every rank."""
        if not self.strategy.distributed:
            return self._resolve_ckpt_path(ckpt_path)
        from .distributed import broadcast_object

        # Rank 0 picks ("latest" may skip a checkpoint another rank would not see yet): all load the same one.
        return broadcast_object(self._resolve_ckpt_path(ckpt_path) if self.strategy.is_rank_zero else None)

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
    def _reload_loader(self, stage: str) -> Any:
        """The loader ``*_dataloader()`` returns now (``reload_dataloaders_every_n_epochs``); None if given to fit."""
        if not self._requested_data.get(stage):
            return None
        return request_loader(self, self.run, None, stage, required=False)

    def _new_run(self, stage: str) -> Run:
        run = Run(self.config, stage, self.strategy, self.precision, self.device, self.callbacks, self.loggers,
                  request_checkpoint=self._boundaries.request, save_checkpoint=self.save_checkpoint,
                  configure_optimization=self._reconfigure_optimization, reload_data=self._reload_loader)
        run.fit_loop = next((node for _, node in self.fit_loop.walk() if isinstance(node, FitLoop)), None)
        return run

    def _begin(self, stage: str, call: EntryCall) -> None:
        """A new run with the module and data module attached (``self.trainer`` works from the first hook on).

        "best" and "last" are resolved here, before ``configure_callbacks``
        may replace the ModelCheckpoint that names them (Lightning resolves
        them first too); "latest" and paths in the entry loop's
        ``find_checkpoint``, so the module's own ModelCheckpoint directory is
        the one searched.
        """
        config = self.config
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
        self.device = self.strategy.setup(self.device)
        self.strategy.root_device = self.device
        rank_zero_only.rank = self.strategy.rank  # ported @rank_zero_only code sees this process's rank
        if config.seed is not None:  # + rank: each rank draws its own dropout masks (its data shard differs anyway)
            seed_everything(config.seed + self.strategy.rank)
        if call.ckpt_path in ("best", "last"):
            call.checkpoint = self._checkpoint_path(call.ckpt_path)
        run = self.run = self._new_run(stage)
        run.module, run.datamodule = call.module, call.datamodule
        run.ckpt_path = None if call.checkpoint is None else str(call.checkpoint)
        call.module.trainer = run
        if call.datamodule is not None:
            call.datamodule.trainer = run

    def _reconfigure_optimization(self, run: Run) -> None:
        """``run.reset_optimizers()``: configure_optimizers() again, checked, keeping the strategy's step."""
        setup = configure_optimizers(run.module)
        check_optimization_mode(run.module, setup, self.config)
        if len(setup.optimizers) != len(run.optimization.optimizers):
            raise ConfigError(f"reset_optimizers(): configure_optimizers() returned {len(setup.optimizers)} "
                              f"optimizer(s) this time but {len(run.optimization.optimizers)} at fit start; "
                              "return the same number every time.")
        configure_optimization(self, run, setup, run.optimization.forward_step)

    def _roots(self) -> dict[str, Loop]:
        return {"fit": self.fit_loop, "validate": self.validate_loop, "test": self.test_loop,
                "predict": self.predict_loop}


def _per_dataloader(result: Any) -> list[dict[str, float]]:
    """An evaluation loop returns a dict for one dataloader and a list of dicts for several."""
    return result if isinstance(result, list) else [result]


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


def _results_table(stage: str, results: dict[str, float]) -> str:
    """What validate/test print with ``verbose=True`` (Lightning's results table, as plain text)."""
    title = f"{stage.capitalize()} metric"
    width = max(len(title), *(len(name) for name in results)) + 4
    rule = "-" * (width + 14)
    rows = [f"{name.ljust(width)}{float(value):.6g}" for name, value in sorted(results.items())]
    return "\n".join([rule, title.ljust(width) + "DataLoader 0", rule, *rows, rule])


#: Every flag ``Trainer()`` takes, for the did-you-mean of a misspelt one.
_TRAINER_FLAGS = tuple(name for name in inspect.signature(Trainer.__init__).parameters if name not in ("self", "unknown"))
