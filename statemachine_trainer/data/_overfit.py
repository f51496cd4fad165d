"""``overfit_batches``: the training and validation loaders without shuffling, as Lightning does.

Lightning's rule (``_resolve_overfit_batches``): when ``overfit_batches > 0``
the fit's train and val loaders take that many batches (``limit_*_batches``)
and a loader that shuffles is rebuilt with a sequential order, with a
warning, so every epoch sees the same first batches.  Training and
validation each keep their own data (since Lightning 1.5 validation is not
the training set).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.utils.data import DataLoader, SequentialSampler

from .._optim import ConfigError
from ._loader import ResumableLoader
from ._settings import loader_settings

__all__ = ["without_shuffling"]

_KEPT = ("collate_fn", "num_workers", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
         "prefetch_factor", "persistent_workers", "pin_memory_device", "generator")


def without_shuffling(loader: Any, stage: str) -> Any:
    """``loader`` in its sequential order (a new loader when it shuffled; the same one otherwise)."""
    if isinstance(loader, ResumableLoader):
        if loader.delegate is None and loader.batch_sampler.shuffle:
            _warn(stage)
            return loader.unshuffled()
        return loader
    if isinstance(loader, DataLoader):
        if loader.batch_size is None or isinstance(loader.sampler, SequentialSampler):
            return loader
        _warn(stage)
        loader_settings(loader)  # refuses what cannot be rebuilt (an IterableDataset), with the reason
        kept = {name: getattr(loader, name) for name in _KEPT}
        if not kept["num_workers"]:
            kept["prefetch_factor"], kept["persistent_workers"] = None, False
        return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, drop_last=loader.drop_last,
                          **kept)
    if not hasattr(loader, "__iter__"):
        raise ConfigError(f"overfit_batches: the {stage} data is a {type(loader).__name__}, not an iterable loader.")
    return loader  # a loader of another kind: its order is its own


def _warn(stage: str) -> None:
    prefix = "train" if stage == "train" else "val"
    warnings.warn(f"You requested to overfit but enabled {prefix} dataloader shuffling. We are turning off the "
                  f"{prefix} dataloader shuffling for you.", stacklevel=4)
