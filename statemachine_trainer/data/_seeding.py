"""Per-batch seeding of the global RNGs a dataset's ``__getitem__`` draws from.

Theory of operation
-------------------
Random augmentations call ``torch.rand``, ``random.random`` or ``np.random.*``
inside ``__getitem__``.  With worker processes, which worker fetches which
batch -- and so which RNG stream a sample draws from -- depends on timing and
on where the epoch started; after a resume it is different.  To make the
draws a function of *what* is fetched rather than *who* fetches it, every batch
carries a key derived from ``(seed, epoch, rank, batch index)``
(:class:`TaggedBatch`), and :class:`SeededDataset` seeds each chosen global RNG
from that key before fetching the batch's samples.

In the main process (``num_workers=0``) the same global RNGs also drive the
training step (dropout, ...).  There the caller's states are saved before the
fetch and put back after it, so loading data never moves the training
stream.  In a worker there is no caller stream to protect, so only the seeding
is paid.  Measured on this project's 2-core CPU machines (torch 2.13, NumPy
2.4): seeding costs ~2 µs (torch) + ~9 µs (random) + ~4 µs (numpy) per batch;
the main-process save/restore adds ~3 µs (torch), ~26 µs (random) and ~190 µs
(numpy: its state getter and setter are slow).  Datasets that use fewer
libraries name only those (``rngs=("torch",)``), or none (``rngs=()``).

The CUDA generators are never touched: a dataset that draws on the GPU in
``__getitem__`` is not made reproducible by this module.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

__all__ = ["ALL_RNGS", "SeededDataset", "TaggedBatch", "batch_key", "check_rngs"]

#: The global RNGs that can be seeded per batch, by name.
ALL_RNGS: tuple[str, ...] = ("torch", "random", "numpy")

_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """SplitMix64's finalizer: a cheap bijection that scatters nearby inputs across 64 bits."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def batch_key(seed: int, epoch: int, rank: int, batch: int) -> int:
    """The 64-bit key that fixes the random draws made while fetching one batch."""
    key = _mix(seed & _MASK64)
    for part in (epoch, rank, batch):
        key = _mix(key ^ (part & _MASK64))
    return key


class TaggedBatch(list):
    """A batch's sample indices plus ``key``, the seed of the draws made while fetching them.

    It is a ``list`` so that any dataset or fetcher that expects a list of
    indices takes it unchanged; it pickles to worker processes with its key.
    """

    key: int

    def __init__(self, indices: Sequence[int], key: int) -> None:
        super().__init__(indices)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        # One constructor call on unpickling instead of list-append + __dict__ restore.
        return (TaggedBatch, (list(self), self.key))


# name -> (save the state, restore a state, seed from a 64-bit key).  Each library gets its own
# derived seed: Python's and NumPy's Mersenne Twisters seeded with the same integer yield the same
# stream, which would correlate two augmentations.
_RNGS: dict[str, tuple[Callable[[], Any], Callable[[Any], None], Callable[[int], None]]] = {
    "torch": (torch.default_generator.get_state, torch.default_generator.set_state,
              lambda key: torch.default_generator.manual_seed(_mix(key ^ 1))),
    "random": (random.getstate, random.setstate, lambda key: random.seed(_mix(key ^ 2))),
    "numpy": (np.random.get_state, np.random.set_state, lambda key: np.random.seed(_mix(key ^ 3) >> 32)),
}


def check_rngs(rngs: Sequence[str]) -> tuple[str, ...]:
    """``rngs`` as a tuple, or a ValueError naming the unknown entry."""
    rngs = tuple(rngs)
    for name in rngs:
        if name not in _RNGS:
            raise ValueError(f"rngs contains {name!r}, which is not a global RNG this adapter can seed; "
                             f"use a subset of {ALL_RNGS}.")
    return rngs


class SeededDataset(Dataset):
    """Wraps a map-style dataset so a :class:`TaggedBatch` is fetched with the global RNGs seeded by its key.

    DataLoader's map-style fetcher calls ``__getitems__(indices)`` when the
    dataset defines it; that is the one place a whole batch, with its key,
    reaches the dataset -- in the main process or in a worker alike.
    """

    def __init__(self, dataset: Any, rngs: Sequence[str] = ALL_RNGS) -> None:
        self.dataset = dataset
        self.rngs = check_rngs(rngs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        key = getattr(indices, "key", None)
        if key is None or not self.rngs:
            return self._fetch(indices)
        if get_worker_info() is not None:
            self._seed(key)  # a worker's RNGs serve only the data; nothing to put back
            return self._fetch(indices)
        saved = [_RNGS[name][0]() for name in self.rngs]
        try:
            self._seed(key)
            return self._fetch(indices)
        finally:
            for name, state in zip(self.rngs, saved):
                _RNGS[name][1](state)

    def _seed(self, key: int) -> None:
        for name in self.rngs:
            _RNGS[name][2](key)

    def _fetch(self, indices: Sequence[int]) -> list[Any]:
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems:
            return getitems(indices)  # keep a dataset's own batched fetch (e.g. one query per batch)
        return [self.dataset[i] for i in indices]
