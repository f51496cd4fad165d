"""Lightning's Trainer flags and attributes this Trainer does not have, each with what to use instead.

A ported script that passes one of them gets a :class:`ConfigError` naming
the flag and the replacement, never a bare ``TypeError``; a name that is not
Lightning's either gets a did-you-mean error.  The advice is data (two
tables), so the README's flag table and the errors say the same thing.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from ._optim import ConfigError

__all__ = ["ATTRIBUTE_ADVICE", "FLAG_ADVICE", "VALUE_ADVICE", "missing_attribute", "refuse_flags", "value_advice"]

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
    ("strategy", "fsdp"): "FSDP is not supported by the Trainer; use strategy='ddp'",
    ("strategy", "deepspeed"): "DeepSpeed is not supported; use strategy='ddp'",
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
    "model": "trainer.module (DDP's wrapper is trainer.strategy.ddp)",
    "interrupted": "catch KeyboardInterrupt around trainer.fit; preemption exits with PREEMPTED_EXIT_CODE",
    "received_sigterm": "SIGTERM writes a checkpoint and exits with PREEMPTED_EXIT_CODE",
    "ckpt_path": "the path you passed to fit(ckpt_path=...)",
    "num_val_batches": "trainer.sources['validate'].num_batches inside a run (trainer.run.sources from outside)",
    "num_test_batches": "trainer.sources['test'].num_batches inside a run (trainer.run.sources from outside)",
    "num_predict_batches": "trainer.sources['predict'].num_batches inside a run (trainer.run.sources from outside)",
    "num_sanity_val_batches": "trainer.num_sanity_val_steps",
    "training": "trainer.state == 'fit'",
    "validating": "trainer.state == 'validate'",
    "testing": "trainer.state == 'test'",
    "predicting": "trainer.state == 'predict'",
    "early_stopping_callback": "trainer.callback(EarlyStopping)",
    "early_stopping_callbacks": "[cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]",
    "checkpoint_callbacks": "[cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]",
    "progress_bar_callback": "trainer.callback(ProgressBar)",
    "accumulation_scheduler": "accumulate_grad_batches (an int)",
    "scaler": "trainer.precision",
}


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
        return AttributeError(f"'{owner}' has no attribute {name!r} (a Lightning Trainer attribute); use "
                              f"{ATTRIBUTE_ADVICE[name]}.")
    if name in FLAG_ADVICE:
        return AttributeError(f"'{owner}' has no attribute {name!r} (a Lightning flag this Trainer does not have): "
                              f"{FLAG_ADVICE[name]}.")
    close = difflib.get_close_matches(name, [k for k in known if not k.startswith("_")], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return AttributeError(f"'{owner}' object has no attribute {name!r}.{hint}")
