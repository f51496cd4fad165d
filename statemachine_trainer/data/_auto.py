"""Exact by default: a plain map-style ``DataLoader`` is read through a :class:`ResumableLoader`.

Theory of operation
-------------------
``Trainer(resumable_data=True)`` (the default) hands every loader a run
reads -- training, validation (during fit too), test -- to :func:`resumable`
when its source is built.  A loader that is exactly a torch ``DataLoader``
over a map-style dataset, batched by ``batch_size`` from a
``SequentialSampler``, a ``RandomSampler`` (without replacement, over the
whole dataset) or a ``DistributedSampler``, is rebuilt as a
``ResumableLoader`` with the same dataset, batch size, shuffling, drop_last,
collate_fn, workers and the rest of its settings (``_settings``).  Its
position then goes into every checkpoint and a mid-epoch kill resumes
exactly, with no code change.

What changes for the user is the order: a shuffled epoch is our seeded
permutation (DistributedSampler's rule, ``_sampler``), not the one
``RandomSampler`` would draw from torch's global generator, and the global
RNGs are seeded per batch (``_seeding``).  The seed (:func:`data_seed`): the
loader's own ``generator``, else a ``DistributedSampler``'s ``seed``, else
``Trainer(seed=...)``, else ``torch.initial_seed()`` -- the same on every
rank, so DDP's shards partition the data.  The loader's ``state_dict`` holds
the seed, so a resume serves the same order whatever the new process seeds.

Left alone (iterated as given) is every loader whose order we cannot
reproduce from a seed or whose iteration we would change: a ``DataLoader``
subclass, an ``IterableDataset``, a custom ``sampler``/``batch_sampler``, a
``RandomSampler`` with replacement or ``num_samples``, ``in_order=False``, a
dataset without ``len()``.  :func:`left_alone` names the reason, which the
run prints once (a mid-epoch resume of such a loader is not exact).  A
loader that keeps its own position (a ``ResumableLoader``, torchdata's
``StatefulDataLoader``) and anything that is not a ``DataLoader`` (a list
of batches, a generator) are used as they are, silently: they are what the
user chose.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from ._loader import ResumableLoader
from ._settings import is_stateful

__all__ = ["data_seed", "left_alone", "resumable"]


def resumable(loader: Any, run_seed: int | None) -> tuple[Any, str | None]:
    """``(loader to read, reason)``: a ResumableLoader for a plain DataLoader, else ``loader`` itself.

    ``reason`` is None unless ``loader`` is a DataLoader left alone, and then
    says why (a mid-epoch resume of it cannot be exact).
    """
    if not isinstance(loader, DataLoader) or is_stateful(loader):
        return loader, None
    reason = left_alone(loader)
    if reason is not None:
        return loader, reason
    return ResumableLoader(loader, seed=data_seed(loader, run_seed)), None


def left_alone(loader: DataLoader) -> str | None:
    """Why ``loader`` is iterated as given instead of through a ResumableLoader (None: it can be rebuilt)."""
    if type(loader) is not DataLoader:
        return f"it is a {type(loader).__name__}, a DataLoader subclass (its iteration may be its own)"
    if isinstance(loader.dataset, IterableDataset):
        return f"its dataset is an IterableDataset ({type(loader.dataset).__name__}): it has no index to jump to"
    try:
        len(loader.dataset)
    except TypeError:
        return "its dataset has no len()"
    if loader.batch_size is None or type(loader.batch_sampler) is not BatchSampler:
        return "it has a custom batch_sampler (or batch_size=None)"
    if not getattr(loader, "in_order", True):
        return "it was built with in_order=False (batches come in the order workers finish them)"
    return _sampler_reason(loader)


def _sampler_reason(loader: DataLoader) -> str | None:
    sampler = loader.sampler
    if type(sampler) is RandomSampler:
        if sampler.replacement or sampler.num_samples != len(loader.dataset):
            return "its RandomSampler draws with replacement or a num_samples other than the dataset's length"
        return None
    if type(sampler) in (SequentialSampler, DistributedSampler):
        return None
    return f"it has a custom sampler ({type(sampler).__name__}): its order is not a function of a seed we know"


def data_seed(loader: DataLoader, run_seed: int | None) -> int:
    """The seed of ``loader``'s order and per-batch keys: its generator, its DistributedSampler's seed, the run's
    seed (``Trainer(seed=...)``), else ``torch.initial_seed()`` -- never a per-rank seed, so every rank shuffles
    alike and the shards partition the data."""
    sampler = loader.sampler
    generator = getattr(sampler, "generator", None) or loader.generator
    if generator is not None:
        return generator.initial_seed()
    if isinstance(sampler, DistributedSampler):
        return sampler.seed
    return torch.initial_seed() if run_seed is None else run_seed
