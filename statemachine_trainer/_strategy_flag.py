"""The ``strategy=`` flag as a strategy object: "auto", "ddp", "fsdp" or an ``FSDPStrategy(...)``, checked.

Its own module because it knows every strategy: ``_fsdp`` builds on
``_strategy``'s DDP, so the choice between them can live in neither.
"""

from __future__ import annotations

from typing import Any

from ._fsdp import FSDP, FSDPStrategy
from ._optim import ConfigError
from ._strategy import DDP, SingleProcess, resolve_devices

__all__ = ["make_strategy"]


def make_strategy(strategy: Any, devices: int, accelerator: str, num_nodes: int = 1,
                  sync_batchnorm: bool = False, use_distributed_sampler: bool = True) -> SingleProcess:
    """The strategy a ``strategy=`` flag names: "auto", "ddp", "fsdp" or an ``FSDPStrategy(...)`` (fsdp, configured)."""
    options = strategy if isinstance(strategy, FSDPStrategy) else None
    if options is not None:
        strategy = "fsdp"
    devices = resolve_devices(devices, accelerator, strategy)
    if strategy in (None, "auto", "single"):
        if devices != 1:
            raise ConfigError(f"devices={devices!r} needs strategy='ddp' or 'fsdp' (one process per device); or use "
                              "devices=1.")
        if num_nodes != 1:
            raise ConfigError(f"num_nodes={num_nodes} needs strategy='ddp' or 'fsdp' (launched with torchrun on every "
                              "node); or use num_nodes=1.")
        return SingleProcess()  # sync_batchnorm and use_distributed_sampler only matter with several processes
    if strategy in ("ddp", "fsdp"):
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            raise ConfigError(f"devices={devices!r} must be an int >= 1: the number of processes on this machine.")
        if sync_batchnorm and accelerator != "cuda":
            raise ConfigError("sync_batchnorm=True needs CUDA devices: torch's SyncBatchNorm runs on GPUs only. Use "
                              "accelerator='cuda', or drop sync_batchnorm on CPU.")
        if strategy == "fsdp":
            return FSDP(devices, accelerator, num_nodes, sync_batchnorm, use_distributed_sampler, options)
        return DDP(devices, accelerator, num_nodes, sync_batchnorm, use_distributed_sampler)
    from ._refused import value_advice

    raise ConfigError(f"strategy={strategy!r}: use 'auto' (one process), 'ddp' (torch DistributedDataParallel) or "
                      f"'fsdp' (torch FSDP2, sharded parameters){value_advice('strategy', strategy)}.")
