"""What a ``ResumableLoader`` takes over from a torch ``DataLoader`` (or assumes for a bare dataset).

The adapter replaces only the sampler.  Everything else that shapes a batch
(collate_fn, workers, pinning, ...) is copied from the given loader, and the
order-defining settings (shuffle, seed, sharding) are read off its sampler.
Samplers whose order cannot be reproduced from a seed are refused here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

__all__ = ["dataset_settings", "is_stateful", "loader_settings", "refuse_iterable"]

#: DataLoader arguments copied as they are; the adapter owns batch_sampler, generator and in_order.
_PASSED_THROUGH = ("collate_fn", "num_workers", "pin_memory", "timeout", "worker_init_fn",
                   "multiprocessing_context", "prefetch_factor", "persistent_workers", "pin_memory_device")


def is_stateful(obj: Any) -> bool:
    """Whether ``obj`` keeps its own position: torchdata ``StatefulDataLoader``'s protocol, duck-typed.

    It must also be iterable, so a map-style dataset that happens to be an ``nn.Module`` is not mistaken for one.
    """
    return hasattr(obj, "__iter__") and callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def refuse_iterable(dataset: Any) -> None:
    """An IterableDataset has no index to jump to; say what works instead."""
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            f"ResumableLoader got an IterableDataset ({type(dataset).__name__}): it has no indices, so a position "
            "inside the epoch cannot be jumped to. Give a loader that saves its own position instead -- one with "
            "state_dict()/load_state_dict(), such as torchdata's StatefulDataLoader -- and ResumableLoader will "
            "delegate to it; or use a map-style dataset (__len__ and __getitem__).")


def dataset_settings(dataset: Any) -> dict[str, Any]:
    """Defaults for a bare map-style dataset: DataLoader's own defaults, no shuffling."""
    refuse_iterable(dataset)
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"ResumableLoader needs a torch DataLoader or a map-style dataset (__len__ and "
                        f"__getitem__), got {type(dataset).__name__}.")
    return {"dataset": dataset, "batch_size": 1, "shuffle": False, "drop_last": False, "seed": None,
            "rank": None, "world_size": None, "shard_drop_last": None, "epoch": 0,
            "collate_fn": None, "num_workers": 0}


def loader_settings(loader: DataLoader) -> dict[str, Any]:
    """The settings of ``loader`` that the adapter keeps, with its sampler translated to ours."""
    refuse_iterable(loader.dataset)
    if loader.batch_size is None:
        raise TypeError("ResumableLoader cannot take over a DataLoader built with a custom batch_sampler or "
                        "batch_size=None: it cannot reproduce that order from a seed. Build the DataLoader with "
                        "batch_size (and shuffle or a DistributedSampler), or give it state_dict()/"
                        "load_state_dict() so it can be delegated to.")
    settings = {"dataset": loader.dataset, "batch_size": loader.batch_size, "drop_last": loader.drop_last,
                "rank": None, "world_size": None, "shard_drop_last": None, "epoch": 0}
    settings.update(_sampler_settings(loader))
    settings.update({name: getattr(loader, name) for name in _PASSED_THROUGH})
    return settings


def _sampler_settings(loader: DataLoader) -> dict[str, Any]:
    sampler = loader.sampler
    if type(sampler) is SequentialSampler:
        return {"shuffle": False, "seed": None}
    if type(sampler) is RandomSampler:
        if sampler.replacement or sampler.num_samples != len(loader.dataset):
            raise TypeError("ResumableLoader shuffles without replacement over the whole dataset; this DataLoader's "
                            "RandomSampler draws with replacement or a different num_samples. Use shuffle=True "
                            "without those options, or a loader with state_dict()/load_state_dict().")
        generator: torch.Generator | None = sampler.generator
        return {"shuffle": True, "seed": None if generator is None else generator.initial_seed()}
    if isinstance(sampler, DistributedSampler):
        return {"shuffle": sampler.shuffle, "seed": sampler.seed, "rank": sampler.rank,
                "world_size": sampler.num_replicas, "shard_drop_last": sampler.drop_last, "epoch": sampler.epoch}
    raise TypeError(f"ResumableLoader cannot reproduce the order of a {type(sampler).__name__}: it knows "
                    "SequentialSampler, RandomSampler and DistributedSampler. Build the DataLoader with shuffle "
                    "True/False (or a DistributedSampler), or give it state_dict()/load_state_dict() so it can "
                    "be delegated to.")
