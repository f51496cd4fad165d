"""A probe of the Lightning 2 API that ported code touches: each call works here, or is refused by our own error.

:data:`ROWS` is the probe, as data: one row per Lightning call a ported
``LightningModule`` / ``Trainer`` / ``Callback`` / ``LightningDataModule``
program commonly makes -- Trainer attributes and properties, module methods,
callback and logger attributes, utilities -- with where it is made (after a
fit, or inside a hook of a fit: a training batch, a validation batch, the
sanity check, a manual-optimization step) and what it must do:

* ``works``: it returns the expected value (checked here), and when Lightning
  is installed the same row run against Lightning 2.6.6 on the same program
  must pass the same check, so the expectation is Lightning's, not ours;
* ``refused``: it raises one of *our* exception types whose message names the
  call and says what to use instead (and the call works under Lightning, so
  the row is real Lightning API).  A bare ``AttributeError``, ``TypeError``,
  ``ImportError`` or ``NameError`` fails the row.

Each library fits the same small program once (module-scoped fixtures); the
rows of a hook run inside that hook and their outcomes are recorded, so the
whole probe costs two tiny fits per library.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

#: Where a row is evaluated: after the fit, or inside one hook of it.
AFTER, TRAIN, VAL, SANITY, MANUAL, FRESH = "after", "train", "val", "sanity", "manual", "fresh"
REFUSED = object()


@attrs.frozen
class Row:
    call: str  # the Lightning call, as ported code writes it (also the test id)
    where: str  # AFTER, TRAIN (on_train_batch_end, epoch 1, batch 1), VAL, SANITY, MANUAL (training_step), FRESH
    fn: Callable[[Any], Any]  # runs the call against a context (see Context)
    expect: Any  # the value, a predicate (a callable), or REFUSED
    name: str = ""  # refused rows: the name the error must mention (default: the call's last identifier)
    lightning_raises: bool = False  # refused rows: Lightning may raise too (to_onnx without the onnx package)


def works(call: str, where: str, fn: Callable[[Any], Any], expect: Any) -> Row:
    return Row(call, where, fn, expect)


def refused(call: str, where: str, fn: Callable[[Any], Any], name: str = "", lightning_raises: bool = False) -> Row:
    return Row(call, where, fn, REFUSED, name or re.findall(r"[A-Za-z_]\w*", call.split("(")[0])[-1],
               lightning_raises)


def is_(cls_name: str) -> Callable[[Any], bool]:
    return lambda value: any(c.__name__ == cls_name for c in type(value).__mro__)


def _catching(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# -- the probe ---------------------------------------------------------------------------------------------
ROWS: tuple[Row, ...] = (
    # Trainer, after fit: counters and flags
    works("trainer.current_epoch", AFTER, lambda c: c.trainer.current_epoch, 2),
    works("trainer.global_step", AFTER, lambda c: c.trainer.global_step, 8),
    works("trainer.max_epochs", AFTER, lambda c: c.trainer.max_epochs, 2),
    works("trainer.max_steps", AFTER, lambda c: c.trainer.max_steps, -1),
    works("trainer.min_epochs", AFTER, lambda c: c.trainer.min_epochs, 0),
    works("trainer.num_training_batches", AFTER, lambda c: c.trainer.num_training_batches, 4),
    works("trainer.num_val_batches", AFTER, lambda c: c.trainer.num_val_batches, [2]),
    works("trainer.num_sanity_val_steps", AFTER, lambda c: c.trainer.num_sanity_val_steps, 2),
    works("trainer.val_check_interval", AFTER, lambda c: c.trainer.val_check_interval, 1.0),
    works("trainer.check_val_every_n_epoch", AFTER, lambda c: c.trainer.check_val_every_n_epoch, 1),
    works("trainer.log_every_n_steps", AFTER, lambda c: c.trainer.log_every_n_steps, 1),
    works("trainer.accumulate_grad_batches", AFTER, lambda c: c.trainer.accumulate_grad_batches, 1),
    works("trainer.gradient_clip_val", AFTER, lambda c: c.trainer.gradient_clip_val, None),
    works("trainer.estimated_stepping_batches", AFTER, lambda c: c.trainer.estimated_stepping_batches, 8),
    works("trainer.should_stop", AFTER, lambda c: c.trainer.should_stop, False),
    works("trainer.sanity_checking", AFTER, lambda c: c.trainer.sanity_checking, False),
    works("trainer.state.fn", AFTER, lambda c: c.trainer.state.fn, "fit"),
    works("trainer.state.status", AFTER, lambda c: c.trainer.state.status, "finished"),
    works("trainer.training", AFTER, lambda c: c.trainer.training, False),
    works("trainer.fit_loop.epoch_progress.current.completed", AFTER,
          lambda c: c.trainer.fit_loop.epoch_progress.current.completed, 2),
    works("trainer.fit_loop.epoch_loop.batch_progress.total.completed", AFTER,
          lambda c: c.trainer.fit_loop.epoch_loop.batch_progress.total.completed, 8),
    works("trainer.fit_loop.max_epochs", AFTER, lambda c: c.trainer.fit_loop.max_epochs, 2),
    # Trainer, after fit: metrics, callbacks, loggers, paths
    works("trainer.callback_metrics", AFTER, lambda c: sorted(c.trainer.callback_metrics),
          ["probe", "probe2", "train_loss", "val_loss"]),
    works("trainer.logged_metrics", AFTER, lambda c: sorted(c.trainer.logged_metrics),
          ["probe", "probe2", "train_loss", "val_loss"]),
    works("trainer.progress_bar_metrics", AFTER, lambda c: sorted(c.trainer.progress_bar_metrics), ["val_loss"]),
    works("trainer.callbacks", AFTER, lambda c: c.ckpt in c.trainer.callbacks and c.es in c.trainer.callbacks, True),
    works("trainer.checkpoint_callback", AFTER, lambda c: c.trainer.checkpoint_callback is c.ckpt, True),
    works("trainer.checkpoint_callbacks", AFTER, lambda c: c.trainer.checkpoint_callbacks == [c.ckpt], True),
    works("trainer.early_stopping_callback", AFTER, lambda c: c.trainer.early_stopping_callback is c.es, True),
    works("trainer.early_stopping_callbacks", AFTER, lambda c: c.trainer.early_stopping_callbacks == [c.es], True),
    works("trainer.logger", AFTER, lambda c: c.trainer.logger is c.logger, True),
    works("trainer.loggers", AFTER, lambda c: c.trainer.loggers == [c.logger], True),
    works("trainer.log_dir", AFTER, lambda c: c.rel(c.trainer.log_dir), "probe/version_0"),
    works("trainer.default_root_dir", AFTER, lambda c: c.rel(c.trainer.default_root_dir), "."),
    works("trainer.ckpt_path", AFTER, lambda c: c.trainer.ckpt_path, None),
    works("trainer.lightning_module", AFTER, lambda c: c.trainer.lightning_module is c.module, True),
    works("trainer.model", AFTER, lambda c: c.trainer.model is c.module, True),
    works("trainer.datamodule", AFTER, lambda c: c.trainer.datamodule is c.dm, True),
    works("trainer.optimizers", AFTER, lambda c: [type(o).__name__ for o in c.trainer.optimizers], ["SGD"]),
    works("trainer.lr_scheduler_configs", AFTER,
          lambda c: [(type(s.scheduler).__name__, s.interval, s.frequency) for s in c.trainer.lr_scheduler_configs],
          [("StepLR", "epoch", 1)]),
    works("trainer.precision", AFTER, lambda c: c.trainer.precision, "32-true"),
    works("trainer.strategy.root_device", AFTER, lambda c: c.trainer.strategy.root_device, torch.device("cpu")),
    works("trainer.device_ids", AFTER, lambda c: c.trainer.device_ids, [0]),
    works("trainer.num_devices", AFTER, lambda c: c.trainer.num_devices, 1),
    works("trainer.num_nodes", AFTER, lambda c: c.trainer.num_nodes, 1),
    works("trainer.world_size", AFTER, lambda c: c.trainer.world_size, 1),
    works("trainer.global_rank", AFTER, lambda c: c.trainer.global_rank, 0),
    works("trainer.local_rank", AFTER, lambda c: c.trainer.local_rank, 0),
    works("trainer.node_rank", AFTER, lambda c: c.trainer.node_rank, 0),
    works("trainer.is_global_zero", AFTER, lambda c: c.trainer.is_global_zero, True),
    works("trainer.train_dataloader", AFTER, lambda c: c.trainer.train_dataloader.batch_size, 4),
    works("trainer.val_dataloaders", AFTER, lambda c: c.trainer.val_dataloaders.batch_size, 4),
    works("trainer.test_dataloaders", AFTER, lambda c: c.trainer.test_dataloaders, None),
    works("trainer.interrupted", AFTER, lambda c: c.trainer.interrupted, False),
    works("trainer.save_checkpoint(path)", AFTER,
          lambda c: (c.trainer.save_checkpoint(c.tmp / "manual.ckpt"), (c.tmp / "manual.ckpt").exists())[1], True),
    works("trainer.init_module()", AFTER, lambda c: _in_init_module(c), "cpu"),
    works("trainer.print(...)", AFTER, lambda c: c.trainer.print("probe"), None),
    works("trainer.progress_bar_callback", AFTER, lambda c: c.trainer.progress_bar_callback, None),
    refused("trainer.accelerator", AFTER, lambda c: c.trainer.accelerator),
    refused("trainer.received_sigterm", AFTER, lambda c: c.trainer.received_sigterm),
    # Trainer, inside hooks
    works("trainer.training (in on_train_batch_end)", TRAIN, lambda c: c.trainer.training, True),
    works("trainer.validating (in on_train_batch_end)", TRAIN, lambda c: c.trainer.validating, False),
    works("trainer.state.stage (in on_train_batch_end)", TRAIN, lambda c: c.trainer.state.stage, "train"),
    works("trainer.state.status (in on_train_batch_end)", TRAIN, lambda c: c.trainer.state.status, "running"),
    works("trainer.is_last_batch (in on_train_batch_end)", TRAIN, lambda c: c.trainer.is_last_batch, False),
    works("trainer.current_epoch (in on_train_batch_end)", TRAIN, lambda c: c.trainer.current_epoch, 1),
    works("trainer.global_step (in on_train_batch_end)", TRAIN, lambda c: c.trainer.global_step, 6),
    works("trainer.fit_loop.epoch_progress.current.completed (in on_train_batch_end)", TRAIN,
          lambda c: c.trainer.fit_loop.epoch_progress.current.completed, 1),
    works("trainer.fit_loop.epoch_loop.batch_progress.current.ready (in on_train_batch_end)", TRAIN,
          lambda c: c.trainer.fit_loop.epoch_loop.batch_progress.current.ready, 2),
    works("trainer.optimizers[0].param_groups (in on_train_batch_end)", TRAIN,
          lambda c: c.trainer.optimizers[0].param_groups[0]["lr"], 0.05),
    works("trainer.validating (in on_validation_batch_end)", VAL, lambda c: c.trainer.validating, True),
    works("trainer.training (in on_validation_batch_end)", VAL, lambda c: c.trainer.training, False),
    works("trainer.state.stage (in on_validation_batch_end)", VAL, lambda c: c.trainer.state.stage, "validate"),
    works("trainer.evaluating (in on_validation_batch_end)", VAL, lambda c: c.trainer.evaluating, True),
    works("trainer.sanity_checking (in the sanity check)", SANITY, lambda c: c.trainer.sanity_checking, True),
    works("trainer.state.stage (in the sanity check)", SANITY, lambda c: c.trainer.state.stage, "sanity_check"),
    works("trainer.num_sanity_val_batches (in the sanity check)", SANITY,
          lambda c: c.trainer.num_sanity_val_batches, [2]),
    # LightningModule
    works("self.current_epoch (in on_train_batch_end)", TRAIN, lambda c: c.module.current_epoch, 1),
    works("self.global_step (in on_train_batch_end)", TRAIN, lambda c: c.module.global_step, 6),
    works("self.trainer (in on_train_batch_end)", TRAIN, lambda c: c.module.trainer.current_epoch, 1),
    works("self.log (in on_train_batch_end)", TRAIN, lambda c: c.module.log("probe", 1.0), None),
    works("self.log_dict (in on_train_batch_end)", TRAIN, lambda c: c.module.log_dict({"probe2": 2.0}), None),
    works("self.optimizers() (in on_train_batch_end)", TRAIN,
          lambda c: c.module.optimizers().param_groups[0]["lr"], 0.05),
    works("self.lr_schedulers() (in on_train_batch_end)", TRAIN,
          lambda c: type(c.module.lr_schedulers()).__name__, "StepLR"),
    works("self.clip_gradients (in on_train_batch_end)", TRAIN,
          lambda c: c.module.clip_gradients(c.module.optimizers(), gradient_clip_val=1.0), None),
    works("self.all_gather (in on_train_batch_end)", TRAIN, lambda c: c.module.all_gather(torch.tensor(1.0)).item(),
          1.0),
    works("self.device", AFTER, lambda c: c.module.device, torch.device("cpu")),
    works("self.dtype", AFTER, lambda c: c.module.dtype, torch.float32),
    works("self.hparams", AFTER, lambda c: (c.module.hparams.hidden, c.module.hparams["lr"]), (8, 0.1)),
    works("self.hparams_initial", AFTER, lambda c: dict(c.module.hparams_initial), {"hidden": 8, "lr": 0.1}),
    works("self.automatic_optimization", AFTER, lambda c: c.module.automatic_optimization, True),
    works("self.example_input_array", AFTER, lambda c: c.module.example_input_array, None),
    works("self.on_gpu", AFTER, lambda c: c.module.on_gpu, False),
    works("self.local_rank", AFTER, lambda c: c.module.local_rank, 0),
    works("self.logger", AFTER, lambda c: c.module.logger is c.logger, True),
    works("self.print", AFTER, lambda c: c.module.print("probe"), None),
    works("self.configure_callbacks()", AFTER, lambda c: list(c.module.configure_callbacks()), []),
    works("self.on_save_checkpoint(checkpoint)", AFTER, lambda c: c.module.on_save_checkpoint({}), None),
    works("self.on_load_checkpoint(checkpoint)", AFTER, lambda c: c.module.on_load_checkpoint({}), None),
    works("self.freeze() / unfreeze()", AFTER,
          lambda c: (c.module.freeze(), any(p.requires_grad for p in c.module.parameters()), c.module.unfreeze(),
                     all(p.requires_grad for p in c.module.parameters()))[1::2], (False, True)),
    works("Model.load_from_checkpoint(best_model_path)", AFTER,
          lambda c: dict(type(c.module).load_from_checkpoint(c.ckpt.best_model_path).hparams), {"hidden": 8, "lr": 0.1}),
    refused("self.to_onnx(path)", AFTER, lambda c: c.module.to_onnx(c.tmp / "m.onnx", torch.zeros(1, 4)),
            lightning_raises=True),
    refused("self.to_torchscript()", AFTER, lambda c: _catching(c.module.to_torchscript)),
    refused("self.fabric", AFTER, lambda c: c.module.fabric),
    # manual optimization, inside training_step
    works("self.manual_backward(loss)", MANUAL, lambda c: (c.module.manual_backward(c.loss),
                                                           c.module.layer.weight.grad is not None)[1], True),
    works("utilities.grad_norm(self, norm_type=2)", MANUAL,
          lambda c: "grad_2.0_norm_total" in c.pl.utilities.grad_norm(c.module, norm_type=2), True),
    works("self.toggle_optimizer(opt) / untoggle_optimizer(opt)", MANUAL,
          lambda c: (c.module.toggle_optimizer(c.module.optimizers()),
                     c.module.untoggle_optimizer(c.module.optimizers())), (None, None)),
    works("opt.step() / opt.zero_grad() (manual)", MANUAL,
          lambda c: (c.module.optimizers().step(), c.module.optimizers().zero_grad()), (None, None)),
    # Callbacks
    works("ModelCheckpoint.best_model_path", AFTER, lambda c: bool(re.fullmatch(
        r"epoch=\d-val_loss=\d\.\d\d\.ckpt", os.path.basename(c.ckpt.best_model_path))), True),
    works("ModelCheckpoint.best_model_score", AFTER, lambda c: c.ckpt.best_model_score.item() > 0, True),
    works("ModelCheckpoint.last_model_path", AFTER, lambda c: os.path.basename(c.ckpt.last_model_path), "last.ckpt"),
    works("ModelCheckpoint.best_k_models", AFTER, lambda c: len(c.ckpt.best_k_models), 2),
    works("ModelCheckpoint.kth_best_model_path", AFTER,
          lambda c: c.ckpt.kth_best_model_path in c.ckpt.best_k_models, True),
    works("ModelCheckpoint.CHECKPOINT_NAME_LAST", AFTER, lambda c: c.ckpt.CHECKPOINT_NAME_LAST, "last"),
    works("ModelCheckpoint.FILE_EXTENSION", AFTER, lambda c: c.ckpt.FILE_EXTENSION, ".ckpt"),
    works("ModelCheckpoint.format_checkpoint_name(metrics)", AFTER,
          lambda c: os.path.basename(c.ckpt.format_checkpoint_name({"epoch": 3, "val_loss": torch.tensor(0.5)})),
          "epoch=3-val_loss=0.50.ckpt"),
    works("ModelCheckpoint.monitor / mode / save_top_k / save_last", AFTER,
          lambda c: (c.ckpt.monitor, c.ckpt.mode, c.ckpt.save_top_k, c.ckpt.save_last), ("val_loss", "min", 2, True)),
    works("ModelCheckpoint.dirpath", AFTER, lambda c: c.rel(c.ckpt.dirpath), "ckpts"),
    works("ModelCheckpoint.state_dict()", AFTER,
          lambda c: {"best_model_path", "best_model_score", "last_model_path"} <= set(c.ckpt.state_dict()), True),
    works("EarlyStopping.patience / min_delta / mode", AFTER,
          lambda c: (c.es.patience, c.es.min_delta, c.es.mode), (5, 0.0, "min")),
    works("EarlyStopping.stopping_threshold / divergence_threshold / check_finite", AFTER,
          lambda c: (c.es.stopping_threshold, c.es.divergence_threshold, c.es.check_finite), (None, None, True)),
    works("EarlyStopping.wait_count / stopped_epoch", AFTER, lambda c: (c.es.wait_count, c.es.stopped_epoch), (0, 0)),
    works("EarlyStopping.best_score", AFTER, lambda c: c.es.best_score.item() > 0, True),
    works("EarlyStopping.state_key", AFTER, lambda c: c.es.state_key.startswith("EarlyStopping{"), True),
    works("Callback.state_key / state_dict() / load_state_dict()", AFTER,
          lambda c: (c.recorder.state_key, c.recorder.state_dict(), c.recorder.load_state_dict({})), lambda v: v[0].endswith("Recorder") and v[1:] == ({}, None)),
    works("LearningRateMonitor(logging_interval='epoch')", FRESH,
          lambda c: c.pl.callbacks.LearningRateMonitor(logging_interval="epoch").logging_interval, "epoch"),
    works("TQDMProgressBar(refresh_rate=10)", FRESH, lambda c: c.pl.callbacks.TQDMProgressBar(refresh_rate=10).refresh_rate,
          10),
    works("RichProgressBar()", FRESH, lambda c: is_("Callback")(c.pl.callbacks.RichProgressBar()), True),
    works("ModelSummary(max_depth=2)", FRESH, lambda c: is_("Callback")(c.pl.callbacks.ModelSummary(max_depth=2)), True),
    works("Timer(duration='00:12:00:00')", FRESH,
          lambda c: c.pl.callbacks.Timer(duration="00:12:00:00").time_remaining(), 43200.0),
    works("Timer.time_elapsed('train') / time_remaining('train')", FRESH,
          lambda c: (c.pl.callbacks.Timer(duration="00:00:01:00").time_elapsed("train"),
                     c.pl.callbacks.Timer(duration="00:00:01:00").time_remaining("train")), (0.0, 60.0)),
    works("from lightning.pytorch.callbacks.model_checkpoint import ModelCheckpoint", FRESH,
          lambda c: importlib.import_module(f"{c.pl.__name__}.callbacks.model_checkpoint").ModelCheckpoint.__name__,
          "ModelCheckpoint"),
    works("from lightning.pytorch.callbacks.progress import TQDMProgressBar", FRESH,
          lambda c: importlib.import_module(f"{c.pl.__name__}.callbacks.progress").TQDMProgressBar.__name__,
          "TQDMProgressBar"),
    works("Callback.on_exception / trainer.interrupted (a fit that raises)", FRESH, lambda c: _failing_fit(c),
          (["ValueError"], True, "interrupted")),
    works("LambdaCallback(on_train_start=fn)", FRESH,
          lambda c: callable(c.pl.callbacks.LambdaCallback(on_train_start=lambda trainer, module: None).on_train_start),
          True),
    refused("GradientAccumulationScheduler(scheduling={0: 2})", FRESH,
            lambda c: c.pl.callbacks.GradientAccumulationScheduler(scheduling={0: 2})),
    refused("StochasticWeightAveraging(swa_lrs=0.01)", FRESH,
            lambda c: c.pl.callbacks.StochasticWeightAveraging(swa_lrs=0.01)),
    refused("BackboneFinetuning(unfreeze_backbone_at_epoch=10)", FRESH,
            lambda c: c.pl.callbacks.BackboneFinetuning(unfreeze_backbone_at_epoch=10)),
    refused("LearningRateFinder()", FRESH, lambda c: c.pl.callbacks.LearningRateFinder()),
    refused("BatchSizeFinder()", FRESH, lambda c: c.pl.callbacks.BatchSizeFinder()),
    refused("from lightning.pytorch.tuner import Tuner", FRESH,
            lambda c: importlib.import_module(f"{c.pl.__name__}.tuner").Tuner, name="Tuner"),
    # Loggers
    refused("WandbLogger", FRESH, lambda c: c.pl.loggers.WandbLogger),
    refused("MLFlowLogger", FRESH, lambda c: c.pl.loggers.MLFlowLogger),
    refused("from lightning.pytorch.strategies import DDPStrategy", FRESH,
            lambda c: importlib.import_module(f"{c.pl.__name__}.strategies").DDPStrategy, name="DDPStrategy"),
    works("CSVLogger.log_hyperparams / log_metrics / save", FRESH, lambda c: _use_logger(c.pl.loggers.CSVLogger, c),
          ("probe_csv", 0, "probe_csv/version_0")),
    works("CSVLogger.experiment.log_metrics", FRESH,
          lambda c: c.pl.loggers.CSVLogger(c.tmp, name="x").experiment.log_metrics({"m": 1.0}, 0), None),
    works("TensorBoardLogger.log_hyperparams / log_metrics / save", FRESH,
          lambda c: _use_logger(c.pl.loggers.TensorBoardLogger, c), ("probe_tb", 0, "probe_tb/version_0")),
    works("TensorBoardLogger.experiment.add_scalar", FRESH,
          lambda c: c.pl.loggers.TensorBoardLogger(c.tmp, name="tb2").experiment.add_scalar("a", 1.0, 0), None),
    works("logger.finalize('success')", FRESH, lambda c: c.pl.loggers.CSVLogger(c.tmp, name="y").finalize("success"),
          None),
    # Utilities
    works("seed_everything(42)", FRESH, lambda c: c.pl.seed_everything(42), 42),
    works("seed_everything(42, workers=True)", FRESH, lambda c: c.pl.seed_everything(42, workers=True), 42),
    works("rank_zero_only(fn)", FRESH, lambda c: c.pl.utilities.rank_zero_only(lambda: 7)(), 7),
    works("from lightning.pytorch.utilities.rank_zero import rank_zero_only", FRESH,
          lambda c: importlib.import_module(f"{c.pl.__name__}.utilities.rank_zero").rank_zero_only(lambda: 7)(), 7),
    works("rank_zero_info / rank_zero_warn", FRESH,
          lambda c: (c.pl.utilities.rank_zero_info("probe"), _catching(lambda: c.pl.utilities.rank_zero_warn("p"))),
          (None, None)),
    works("utilities.types.STEP_OUTPUT", FRESH,
          lambda c: importlib.import_module(f"{c.pl.__name__}.utilities.types").STEP_OUTPUT is not None, True),
    # DataModule
    works("LightningDataModule.from_datasets", FRESH,
          lambda c: c.DataModule.from_datasets(train_dataset=_points(8), batch_size=4).train_dataloader().batch_size,
          4),
    works("datamodule.hparams / save_hyperparameters", AFTER, lambda c: dict(c.dm.hparams), {"batch_size": 4}),
    works("datamodule.state_dict()", AFTER, lambda c: c.dm.state_dict(), {}),
    works("datamodule.hparams_initial", AFTER, lambda c: dict(c.dm.hparams_initial), {"batch_size": 4}),
    refused("LightningDataModule.transfer_batch_to_device (defined on a data module)", FRESH,
            lambda c: type("Moving", (c.DataModule,), {"transfer_batch_to_device": lambda self, b, d, i: b}),
            name="transfer_batch_to_device"),
    works("datamodule.trainer", AFTER, lambda c: c.dm.trainer.current_epoch, 2),
    # Last (they start new runs of the fitted trainer): the other entry points
    works("trainer.validate(model, datamodule=dm)", AFTER,
          lambda c: [sorted(d) for d in c.trainer.validate(c.module, datamodule=c.dm, verbose=False)], [["val_loss"]]),
    works("trainer.state.fn (after validate)", AFTER, lambda c: (c.trainer.state.fn, c.trainer.state.status),
          ("validate", "finished")),
    works("trainer.predict(model, dataloaders)", AFTER,
          lambda c: [p.shape for p in c.trainer.predict(c.module, DataLoader(_points(8).tensors[0], batch_size=4))],
          [torch.Size([4, 2])] * 2),
)


# -- the program, written once against either library -----------------------------------------------------
@attrs.define
class Lib:
    name: str
    pl: Any  # lightning.pytorch, or statemachine_trainer
    Module: type  # LightningModule, or TrainingModule
    DataModule: type


def _lib(name: str) -> Lib:
    if name == "lightning":
        pl = importlib.import_module("lightning.pytorch")
        return Lib(name, pl, pl.LightningModule, pl.LightningDataModule)
    pl = importlib.import_module("statemachine_trainer")
    for sub in ("callbacks", "loggers", "utilities"):
        importlib.import_module(f"statemachine_trainer.{sub}")
    return Lib(name, pl, pl.TrainingModule, pl.DataModule)


def _points(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x.sum(1) > 0).long())


@attrs.define
class Context:
    lib: Lib
    tmp: Path
    trainer: Any = None
    module: Any = None
    dm: Any = None
    ckpt: Any = None
    es: Any = None
    logger: Any = None
    recorder: Any = None
    loss: Any = None

    @property
    def pl(self) -> Any:
        return self.lib.pl

    @property
    def DataModule(self) -> type:
        return self.lib.DataModule

    def rel(self, path: Any) -> str:
        return os.path.relpath(str(path), str(self.tmp))


def _run_rows(ctx: Context, where: str, outcomes: dict[str, Any]) -> None:
    for row in ROWS:
        if row.where == where and row.call not in outcomes:
            try:
                outcomes[row.call] = ("value", row.fn(ctx))
            except Exception as error:  # noqa: BLE001 - every outcome is recorded, the test judges it
                outcomes[row.call] = ("raised", error)


def _in_hook(ctx: Context, trainer: Any, module: Any, where: str, outcomes: dict[str, Any]) -> None:
    """Run ``where``'s rows with the hook's trainer and module, then give the context back its own."""
    saved = ctx.trainer, ctx.module
    ctx.trainer, ctx.module = trainer, module
    try:
        _run_rows(ctx, where, outcomes)
    finally:
        ctx.trainer, ctx.module = saved


def _in_init_module(ctx: Context) -> str:
    with ctx.trainer.init_module():
        layer = nn.Linear(2, 2)
    return layer.weight.device.type


def _failing_fit(ctx: Context) -> tuple[list[str], bool, str]:
    """A fit whose training_step raises: what on_exception saw, then trainer.interrupted and state.status."""
    seen: list[str] = []

    class Boom(ctx.lib.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            raise ValueError("boom")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    record = ctx.pl.callbacks.LambdaCallback(on_exception=lambda trainer, module, error: seen.append(
        type(error).__name__))
    flags = {**_flags(ctx.lib, ctx.tmp / "boom"), "logger": False, "enable_checkpointing": False,
             "num_sanity_val_steps": 0}
    trainer = ctx.pl.Trainer(callbacks=[record], **flags)
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(Boom(), DataLoader(_points(8), batch_size=4))
    return seen, trainer.interrupted, trainer.state.status


def _use_logger(cls: type, ctx: Context) -> tuple[str, Any, str]:
    logger = cls(ctx.tmp, name=f"probe_{'tb' if 'TensorBoard' in cls.__name__ else 'csv'}")
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"m": 1.0}, step=0)
    logger.save()
    return logger.name, logger.version, ctx.rel(logger.log_dir)


def _classes(lib: Lib, outcomes: dict[str, Any], ctx: Context) -> tuple[type, type, type]:
    class PointsData(lib.DataModule):
        def __init__(self, batch_size: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return DataLoader(_points(16), batch_size=self.hparams.batch_size)

        def val_dataloader(self):
            return DataLoader(_points(8, seed=1), batch_size=self.hparams.batch_size)

    class Net(lib.Module):
        def __init__(self, hidden: int = 8, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))

        def forward(self, x):
            return self.layer(x)

        def training_step(self, batch, batch_idx):
            loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]), prog_bar=True)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]

    class Recorder(lib.pl.callbacks.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                _in_hook(ctx, trainer, pl_module, TRAIN, outcomes)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if batch_idx == 0:
                _in_hook(ctx, trainer, pl_module, SANITY if trainer.sanity_checking else VAL, outcomes)

    return PointsData, Net, Recorder


def _manual_class(lib: Lib, outcomes: dict[str, Any], ctx: Context) -> type:
    class Manual(lib.Module):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.layer = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            loss = nn.functional.cross_entropy(self.layer(batch[0]), batch[1])
            if batch_idx == 1:
                ctx.module, ctx.loss = self, loss
                _run_rows(ctx, MANUAL, outcomes)
                return
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            return

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Manual


def _flags(lib: Lib, tmp: Path) -> dict[str, Any]:
    flags = {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
             "default_root_dir": tmp}
    return {**flags, "accelerator": "cpu"} if lib.name == "lightning" else flags


def observe(lib_name: str, tmp: Path) -> dict[str, Any]:
    """Every row's outcome, ``("value", v)`` or ``("raised", error)``, for one library."""
    lib = _lib(lib_name)
    outcomes: dict[str, Any] = {}
    ctx = Context(lib, tmp)
    PointsData, Net, Recorder = _classes(lib, outcomes, ctx)
    lib.pl.seed_everything(0)
    ctx.module, ctx.dm, ctx.recorder = Net(), PointsData(), Recorder()
    ctx.ckpt = lib.pl.callbacks.ModelCheckpoint(dirpath=tmp / "ckpts", filename="{epoch}-{val_loss:.2f}",
                                                monitor="val_loss", save_top_k=2, save_last=True)
    ctx.es = lib.pl.callbacks.EarlyStopping(monitor="val_loss", patience=5)
    ctx.logger = lib.pl.loggers.CSVLogger(tmp, name="probe")
    trainer = lib.pl.Trainer(callbacks=[ctx.ckpt, ctx.es, ctx.recorder], logger=ctx.logger, **_flags(lib, tmp))
    module = ctx.module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=ctx.dm)
    ctx.trainer, ctx.module = trainer, module
    with warnings.catch_warnings():  # rank_zero_warn, deprecations: the outcome is what the row checks
        warnings.simplefilter("ignore")
        _run_rows(ctx, AFTER, outcomes)
        _run_rows(ctx, FRESH, outcomes)
    manual = _manual_class(lib, outcomes, ctx)()
    flags = {**_flags(lib, tmp / "manual"), "max_epochs": 1, "logger": False, "enable_checkpointing": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib.pl.Trainer(**flags).fit(manual, DataLoader(_points(8), batch_size=4))
    return outcomes


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return observe("ours", tmp_path_factory.mktemp("ours"))


@pytest.fixture(scope="module")
def lightnings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("lightning", reason="the reference runs need Lightning: pip install -e '.[lightning]'")
    return observe("lightning", tmp_path_factory.mktemp("lightning"))


def _passes(row: Row, value: Any) -> bool:
    if callable(row.expect) and not isinstance(row.expect, type):
        return bool(row.expect(value))
    return value == row.expect


#: A refusal says what to do: one of these (the advice tables' verbs) must be in its message.
_FIX_WORDS = ("use ", "pass ", "call ", "set ", "read ", "log ", "export with", "freeze ", "move ", "instead", "there is no")


def _describe(outcome: Any) -> str:
    kind, value = outcome
    return f"{type(value).__module__}.{type(value).__name__}: {value}" if kind == "raised" else repr(value)


@pytest.mark.parametrize("row", ROWS, ids=[row.call for row in ROWS])
def test_the_call_works_or_is_refused_by_our_error(row: Row, ours: dict[str, Any]) -> None:
    assert row.call in ours, f"{row.call}: its hook never ran"
    kind, value = ours[row.call]
    if row.expect is REFUSED:
        assert kind == "raised", f"{row.call} should be refused, but returned {value!r}"
        assert type(value).__module__.startswith("statemachine_trainer."), \
            f"{row.call} raised a bare {_describe(ours[row.call])}"
        message = str(value)
        assert row.name in message and any(word in message for word in _FIX_WORDS), \
            f"{row.call}: the error should name {row.name!r} and the fix: {message}"
    else:
        assert kind == "value", f"{row.call} raised {_describe(ours[row.call])}"
        assert _passes(row, value), f"{row.call} returned {value!r}, expected {row.expect!r}"


@pytest.mark.parametrize("row", ROWS, ids=[row.call for row in ROWS])
def test_the_row_is_lightnings(row: Row, lightnings: dict[str, Any]) -> None:
    """The expectation is Lightning's: the same row passes against Lightning 2.6.6 (refused ones exist there)."""
    assert row.call in lightnings, f"{row.call}: its hook never ran under Lightning"
    kind, value = lightnings[row.call]
    if row.expect is REFUSED:
        if not row.lightning_raises:
            assert kind == "value", f"{row.call} is not Lightning API either: {_describe(lightnings[row.call])}"
        return
    assert kind == "value", f"{row.call} raised under Lightning: {_describe(lightnings[row.call])}"
    assert _passes(row, value), f"{row.call} returned {value!r} under Lightning, expected {row.expect!r}"


def test_the_probe_covers_about_eighty_calls() -> None:
    assert len(ROWS) >= 80 and len({row.call for row in ROWS}) == len(ROWS)
    assert {row.where for row in ROWS} == {AFTER, TRAIN, VAL, SANITY, MANUAL, FRESH}


def test_the_readme_counts_the_probe() -> None:
    text = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    refused_rows = sum(row.expect is REFUSED for row in ROWS)
    assert f"a table of {len(ROWS)} Lightning 2 calls" in text
    assert f"{len(ROWS) - refused_rows} work and return what Lightning 2.6.6 returns" in text
    assert f"{refused_rows} are refused by our own error" in text


