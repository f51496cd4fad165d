"""Lightning's names this library does not have -- Trainer flags and attributes, callbacks -- each with what to use.

A ported script that passes one of those flags gets a :class:`ConfigError`
naming the flag and the replacement, never a bare ``TypeError``; one that
reads such an attribute gets an :class:`UnsupportedAttributeError` (still an
``AttributeError``, so ``getattr(trainer, name, default)`` keeps working)
with the replacement; one that imports such a callback gets an
:class:`UnsupportedError`.  A name that is not Lightning's either gets a
did-you-mean error.  The advice is data (these tables), so the README and
the errors say the same thing, and ``tests/test_lightning_api_probe.py``
checks a table of Lightning calls against it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from ._optim import ConfigError

__all__ = ["ATTRIBUTE_ADVICE", "CALLBACK_ADVICE", "FLAG_ADVICE", "LOGGER_ADVICE", "STRATEGY_ADVICE", "VALUE_ADVICE", "UnsupportedAttributeError",
           "UnsupportedError", "missing_attribute", "refuse_flags", "refused_name", "value_advice"]


class UnsupportedError(NotImplementedError):
    """A Lightning API this library does not have; the message says what to use instead."""


class UnsupportedAttributeError(UnsupportedError, AttributeError):
    """Reading a Lightning attribute this library does not have: also an ``AttributeError``, so ``hasattr`` and
    ``getattr(obj, name, default)`` see it as missing; the message says what to read instead."""

#: Trainer flag (Lightning 1.x or 2.x) -> what to do instead here.
FLAG_ADVICE: dict[str, str] = {
    "resume_from_checkpoint": "pass the checkpoint to fit: trainer.fit(module, ckpt_path=...) (or ckpt_path='latest')",
    "gpus": "use accelerator='cuda', devices=N (and strategy='ddp' for N > 1)",
    "tpu_cores": "TPUs are not supported; use accelerator='cuda' or 'cpu'",
    "ipus": "IPUs are not supported; use accelerator='cuda' or 'cpu'",
    "hpus": "HPUs are not supported; use accelerator='cuda' or 'cpu'",
    "num_processes": "use devices=N with strategy='ddp'",
    "auto_select_gpus": "use devices=N; set CUDA_VISIBLE_DEVICES to pick the GPUs",
    "auto_lr_find": "there is no tuner; pick the learning rate in configure_optimizers (e.g. from a sweep)",
    "auto_scale_batch_size": "there is no tuner; set the DataLoader's batch_size yourself",
    "replace_sampler_ddp": "it is named use_distributed_sampler in Lightning 2 and here",
    "track_grad_norm": "log it yourself in on_before_optimizer_step, e.g. with torch.nn.utils.get_total_norm",
    "move_metrics_to_cpu": "logged values stay on their device until a logger reads them; nothing to set",
    "multiple_trainloader_mode": "pass one training dataloader (combine several in your own Dataset or sampler)",
    "amp_backend": "use precision='16-mixed' or 'bf16-mixed' (torch.autocast)",
    "amp_level": "use precision='16-mixed' or 'bf16-mixed' (torch.autocast); apex is not supported",
    "weights_save_path": "use default_root_dir, or ModelCheckpoint(dirpath=...)",
    "weights_summary": "use enable_model_summary=True/False, or callbacks=[ModelSummary(max_depth=...)]",
    "flush_logs_every_n_steps": "loggers flush at epoch ends and every log_every_n_steps; nothing to set",
    "progress_bar_refresh_rate": "use enable_progress_bar=True/False",
    "process_position": "use enable_progress_bar=True/False",
    "checkpoint_callback": "use enable_checkpointing=True/False",
    "stochastic_weight_avg": "SWA is not built in; use torch.optim.swa_utils in your module",
    "terminate_on_nan": "use detect_anomaly=True, or check the loss yourself in on_train_batch_end",
    "prepare_data_per_node": "set prepare_data_per_node on the module or data module, as in Lightning 2",
    "reload_dataloaders_every_epoch": "use reload_dataloaders_every_n_epochs=1",
    "log_gpu_memory": "log torch.cuda.memory_allocated() yourself with self.log",
    "truncated_bptt_steps": "split the sequence yourself in training_step (manual optimization)",
    "overfit_pct": "use overfit_batches=<fraction>",
    "train_percent_check": "use limit_train_batches=<fraction>",
    "val_percent_check": "use limit_val_batches=<fraction>",
    "test_percent_check": "use limit_test_batches=<fraction>",
    "distributed_backend": "use strategy='ddp'",
    "accelerator_backend": "use strategy='ddp'",
    "log_save_interval": "use log_every_n_steps",
    "row_log_interval": "use log_every_n_steps",
    "enable_pl_optimizer": "optimizers are wrapped as needed; nothing to set",
    "plugins": "plugins are not supported; use precision=..., strategy='ddp' and callbacks instead",
    "enable_autolog_hparams": "hyperparameters saved with save_hyperparameters() are always logged; nothing to set",
    "model_registry": "the model registry is not supported; keep the checkpoint directory",
}

#: (flag, Lightning value) -> what to pass instead, for values of flags we have.
VALUE_ADVICE: dict[tuple[str, str], str] = {
    ("strategy", "ddp_spawn"): "use strategy='ddp' (our launcher starts the workers from a plain `python script.py`)",
    ("strategy", "ddp_fork"): "use strategy='ddp' (our launcher starts the workers from a plain `python script.py`)",
    ("strategy", "ddp_notebook"): "use strategy='ddp' from a script; notebooks cannot fork workers here",
    ("strategy", "ddp_find_unused_parameters_true"): "use strategy='ddp': several backwards per step already "
                                                     "find unused parameters",
    ("strategy", "ddp_find_unused_parameters_false"): "use strategy='ddp'",
    ("strategy", "deepspeed"): "DeepSpeed is not supported; use strategy='fsdp' (torch FSDP2) or 'ddp'",
    ("strategy", "dp"): "DataParallel is gone from Lightning 2 too; use strategy='ddp'",
    ("accelerator", "tpu"): "TPUs are not supported; use 'cuda' or 'cpu'",
    ("accelerator", "mps"): "Apple's MPS is not supported yet; use 'cpu'",
    ("accelerator", "hpu"): "HPUs are not supported; use 'cuda' or 'cpu'",
    ("accelerator", "ipu"): "IPUs are not supported; use 'cuda' or 'cpu'",
}


def value_advice(flag: str, value: Any) -> str:
    """`` (advice)`` for a Lightning value of ``flag`` we lack, or "" (callers append it to their error)."""
    advice = VALUE_ADVICE.get((flag, value)) if isinstance(value, str) else None
    return f" ({value!r} is Lightning's: {advice})" if advice else ""


#: Lightning Trainer attribute -> what to read instead (only reached for names the Trainer lacks).
ATTRIBUTE_ADVICE: dict[str, str] = {
    "tuner": "there is no tuner; set the learning rate and batch size yourself",
    "accelerator": "trainer.device (a torch.device)",
    "received_sigterm": "SIGTERM writes a checkpoint and exits with PREEMPTED_EXIT_CODE; nothing to poll",
    "accumulation_scheduler": "accumulate_grad_batches (an int)",
    "scaler": "trainer.precision.scaler (a torch.amp.GradScaler under precision='16-mixed', else None)",
    "barebones": "the flags it sets: enable_checkpointing, enable_progress_bar, enable_model_summary, logger",
    "ckpt_connector": "fit(ckpt_path=...) and trainer.save_checkpoint(path)",
    "lr_find": "there is no tuner; pick the learning rate in configure_optimizers (e.g. from a sweep)",
    "precision_plugin": "trainer.precision (its autocast() and scaler)",
    "distributed_sampler_kwargs": "the sharding is the strategy's: trainer.world_size and trainer.global_rank",
    "enable_validation": "whether validation runs follows from the data: trainer.num_val_batches",
}

#: Lightning callback (``lightning.pytorch.callbacks.<name>``) -> what to do instead here.
CALLBACK_ADVICE: dict[str, str] = {
    "GradientAccumulationScheduler": "a schedule is not supported; use Trainer(accumulate_grad_batches=N)",
    "StochasticWeightAveraging": "SWA is not built in; use torch.optim.swa_utils (AveragedModel, SWALR) in your "
                                 "module's hooks",
    "BackboneFinetuning": "freeze the backbone yourself (module.freeze() on it, or requires_grad_(False)) and "
                          "unfreeze it in on_train_epoch_start, adding its parameters to the optimizer",
    "BaseFinetuning": "freeze and unfreeze layers yourself in on_train_epoch_start (requires_grad_)",
    "LearningRateFinder": "there is no tuner; pick the learning rate in configure_optimizers (e.g. from a sweep)",
    "BatchSizeFinder": "there is no tuner; set the DataLoader's batch_size yourself",
    "DeviceStatsMonitor": "log torch.cuda.memory_allocated() and friends yourself with self.log",
    "ModelPruning": "prune with torch.nn.utils.prune in your module's hooks",
    "OnExceptionCheckpoint": "every ModelCheckpoint save is atomic, and SIGTERM writes a checkpoint; resume with "
                             "fit(ckpt_path='latest')",
    "SpikeDetection": "check the loss yourself in on_train_batch_end",
    "ThroughputMonitor": "time the steps yourself (e.g. time.perf_counter in on_train_batch_start/end)",
    "WeightAveraging": "use torch.optim.swa_utils.AveragedModel in your module's hooks",
    "EMAWeightAveraging": "use torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn in your module's hooks",
    "RichModelSummary": "use ModelSummary(max_depth=...)",
}


#: Lightning logger (``lightning.pytorch.loggers.<name>``) -> what to do instead here.
LOGGER_ADVICE: dict[str, str] = {
    name: f"use CSVLogger or TensorBoardLogger, or write a Logger subclass (log_metrics, log_hyperparams) that sends "
          f"to {service}"
    for name, service in (("WandbLogger", "Weights & Biases (wandb.log)"), ("MLFlowLogger", "MLflow (mlflow.log_metrics)"),
                          ("CometLogger", "Comet"), ("NeptuneLogger", "Neptune"))
}

#: ``lightning.pytorch.strategies.<name>`` -> what to pass instead.
STRATEGY_ADVICE: dict[str, str] = {
    "DDPStrategy": "pass Trainer(strategy='ddp'); several backwards per step already find unused parameters, and "
                   "DDP's other settings are not configurable here",
    "DeepSpeedStrategy": "DeepSpeed is not supported; use strategy='ddp'",
    "SingleDeviceStrategy": "leave strategy='auto' (one process) and pick the device with accelerator=",
    "ModelParallelStrategy": "tensor parallelism is not supported; use strategy='ddp'",
}


def refused_name(where: str, name: str, advice: dict[str, str]) -> UnsupportedError:
    """The error for importing ``where.<name>``, a Lightning name in ``advice`` we lack (raise it from a module's
    ``__getattr__``: not an AttributeError, which ``from x import name`` would turn into a bare ImportError)."""
    return UnsupportedError(f"{where}.{name} is Lightning API that statemachine_trainer does not have: "
                            f"{advice[name]}.")


def refuse_flags(unknown: dict[str, Any], known: Iterable[str]) -> None:
    """Raise ConfigError for the first flag in ``unknown``: Lightning's with its replacement, else did-you-mean."""
    if not unknown:
        return
    name = next(iter(unknown))
    if name in FLAG_ADVICE:
        raise ConfigError(f"Trainer({name}=...) is a Lightning flag this Trainer does not have: {FLAG_ADVICE[name]}.")
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"Trainer() got an unknown flag {name!r}.{hint} See the README's \"Trainer flags\" table.")


def missing_attribute(owner: str, name: str, known: Iterable[str]) -> AttributeError:
    """The error for ``trainer.<name>`` that does not exist: Lightning's replacement, or did-you-mean."""
    if name in ATTRIBUTE_ADVICE:
        return UnsupportedAttributeError(f"trainer.{name} is a Lightning Trainer attribute this Trainer does not "
                                         f"have; use {ATTRIBUTE_ADVICE[name]}.")
    if name in FLAG_ADVICE:
        return UnsupportedAttributeError(f"trainer.{name} is a Lightning flag this Trainer does not have: "
                                         f"{FLAG_ADVICE[name]}.")
    close = difflib.get_close_matches(name, [k for k in known if not k.startswith("_")], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return AttributeError(f"'{owner}' object has no attribute {name!r}.{hint}")
