"""Per-batch seeding of the global RNGs: a dataset's augmentations, and the training step that follows.

Theory of operation
-------------------
Random augmentations call ``torch.rand``, ``random.random`` or ``np.random.*``
inside ``__getitem__``, and the training step draws from the same global
generators (dropout, noise, ...).  With worker processes, which worker
fetches which batch -- and so which RNG stream a sample draws from --
depends on timing and on where the epoch started; after a resume it is
different.  So every batch carries a 64-bit key derived from
``(seed, epoch, rank, batch index)`` (:class:`TaggedBatch`), and
:class:`SeededDataset` seeds the RNGs named in ``rngs`` from it before it
fetches the batch's samples, in whichever process fetches them: the **data
stream** is a function of *what* is fetched, not of *who* fetches it.

In the main process (``num_workers=0``) that seeding would hand the training
step a stream that depends on how many numbers the augmentations drew, and
on ``num_workers``.  What the step draws from until the next batch -- the
**training stream** -- is therefore fixed by the loader
(:class:`~statemachine_trainer.data.ResumableLoader`), per generator, by what
its state costs to save (timeit on this project's 2-core VMs, torch 2.13,
NumPy 2.4, Python 3.11):

* torch's CPU generator: get + set state ~1 µs, so a main-process fetch puts
  it back.  Its stream runs on across batches as in a plain loop, unmoved by
  loading: dropout draws from it, checkpoints save it, and
  ``torch.initial_seed()`` keeps the seed the program set (the loader's own
  default seed reads it).
* Python's ``random`` (~15 µs) and NumPy's global ``RandomState`` (~50 µs:
  its getter and setter build and parse 624-word tuples) are not saved:
  when ``next()`` hands the batch to its consumer, the loader seeds them
  from :func:`training_key` of the batch key (~3 µs and ~1 µs).

Either way the step's draws are the same with any ``num_workers`` and after
a resume; per batch the main process pays one torch save/restore plus the
seedings with ``num_workers=0``, and the training stream's seedings alone
with workers (``benchmarks/data.py``).

The one exception is a batch served *again* (``rewind``): the batch in
flight when a checkpoint was taken.  The checkpoint restored the RNGs to a
point inside its step, so nothing may move them: the data stream is seeded
for the fetch as before (the same augmentations) and, in the main process,
every named RNG is saved around it and put back -- once per resume -- and
the training stream is not seeded again.

A fetch that provably draws no random numbers -- torch's own datasets of
tensors (``TensorDataset``, and ``Subset``/``ConcatDataset``/``StackDataset``
of them, by exact type) with the default collate -- moves no generator, in
the main process or in a worker, so there is nothing to make independent of
``num_workers``: the loader seeds nothing for it (:func:`fetch_draws_nothing`),
neither the fetch, nor torch's put-back, nor the training stream after it.
The step's draws then run on from batch to batch as in a plain loop, and a
checkpoint's RNG states (which hold Python's and NumPy's generators as well
as torch's) replay them on resume (tested, with workers and a rewound
batch).  Exact data then costs only the loader's bookkeeping
(``benchmarks/overhead.py --instructions --loaders``).  A dataset of any
other type may draw (augmentations): it is seeded, and so is the training
stream after it.

torch's generator is seeded through ``torch.default_generator.manual_seed``,
not ``torch.manual_seed`` (~90 µs: it also seeds the CUDA, MPS, XPU and
custom devices' generators).  The CUDA generators are never touched: GPU
dropout continues its own stream, which checkpoints capture; a dataset that
draws on the GPU in ``__getitem__`` is not made reproducible by this module.
"""

from __future__ import annotations

import _random
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, StackDataset, Subset, TensorDataset, default_collate

__all__ = ["ALL_RNGS", "KEPT_RNGS", "RngStates", "SeededDataset", "TaggedBatch", "batch_key", "check_rngs",
           "epoch_key", "fetch_draws_nothing", "key_of_batch", "seeder", "training_key"]

#: The global RNGs that can be seeded per batch, by name.
ALL_RNGS: tuple[str, ...] = ("torch", "random", "numpy")

#: Those whose state is cheap enough to save and put back around a main-process fetch (the rest are seeded
#: for the training stream instead).
KEPT_RNGS: tuple[str, ...] = ("torch",)

_MASK64 = (1 << 64) - 1
_TRAINING = 0x5EED_7EA1_7EA1_5EED  # tells the training stream's key from the data stream's


def _mix(x: int) -> int:
    """SplitMix64's finalizer: a cheap bijection that scatters nearby inputs across 64 bits."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def epoch_key(seed: int, epoch: int, rank: int) -> int:
    """The part of every batch key that is fixed for one epoch of one rank (computed once per epoch)."""
    return _mix(_mix(_mix(seed & _MASK64) ^ (epoch & _MASK64)) ^ (rank & _MASK64))


def key_of_batch(epoch_part: int, batch: int) -> int:
    """Batch ``batch``'s key, given :func:`epoch_key` of its epoch: one mix per batch."""
    return _mix(epoch_part ^ (batch & _MASK64))


def batch_key(seed: int, epoch: int, rank: int, batch: int) -> int:
    """The 64-bit key that fixes the random draws made while fetching one batch."""
    return key_of_batch(epoch_key(seed, epoch, rank), batch)


def training_key(key: int) -> int:
    """The key of the training stream (Python's and NumPy's generators) that follows the batch with key ``key``."""
    return _mix(key ^ _TRAINING)


class TaggedBatch(list):
    """A batch's sample indices plus ``key``, the seed of the draws made while fetching them.

    It is a ``list`` so that any dataset or fetcher that expects a list of
    indices takes it unchanged; it pickles to worker processes with its key.
    """

    __slots__ = ("key",)  # no per-batch __dict__: one of these is made for every batch
    key: int

    def __init__(self, indices: Sequence[int], key: int) -> None:
        list.__init__(self, indices)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        # One constructor call on unpickling instead of list-append + __dict__ restore.
        return (TaggedBatch, (list(self), self.key))


_MASK32 = (1 << 32) - 1
_seed_torch = torch.default_generator.manual_seed
_seed_numpy = np.random.seed
# Python's module-level generator, seeded through its C method: what random.seed(int) does once its Python
# wrapper has checked the argument's type (an int here, always) -- less than half the bytecodes, twice per batch.
_python_random = random._inst  # type: ignore[attr-defined]
_seed_python_c = _random.Random.seed


def _seed_python(key: int) -> None:
    """``random.seed(key)`` for an int ``key``: the same state (tested), without the wrapper's type dispatch."""
    _seed_python_c(_python_random, key)
    _python_random.gauss_next = None  # as random.seed does: no cached normal deviate survives a reseed

# name -> (seed it from a 64-bit key, save its state, restore a state).  Each library takes its own part of the
# (already mixed) key, so no two share a stream: torch its low 32 bits and NumPy its high 32 bits (both take
# 32-bit seeds, through MT19937's init_genrand), Python's random the whole key (through init_by_array, another
# initialisation).  No further mixing: it would cost ~0.4 µs a library per batch.
_RNGS: dict[str, tuple[Callable[[int], Any], Callable[[], Any], Callable[[Any], Any]]] = {
    "torch": (lambda key: _seed_torch(key & _MASK32), torch.default_generator.get_state,
              torch.default_generator.set_state),
    "random": (_seed_python, random.getstate, random.setstate),
    "numpy": (lambda key: _seed_numpy(key >> 32), np.random.get_state, np.random.set_state),
}


def _seed_all(key: int) -> None:
    """Every RNG of ALL_RNGS seeded from ``key`` (the default ``rngs``, written out: no loop on the hot path)."""
    _seed_torch(key & _MASK32)
    _seed_python_c(_python_random, key)
    _python_random.gauss_next = None
    _seed_numpy(key >> 32)


def check_rngs(rngs: Sequence[str]) -> tuple[str, ...]:
    """``rngs`` as a tuple; a TypeError for a bare string, a ValueError naming an unknown entry."""
    if isinstance(rngs, str):
        raise TypeError(f"rngs={rngs!r} must be a sequence of names, e.g. ({rngs!r},); a bare string is not.")
    rngs = tuple(rngs)
    for name in rngs:
        if name not in _RNGS:
            raise ValueError(f"rngs contains {name!r}, which is not a global RNG this adapter can seed; "
                             f"use a subset of {ALL_RNGS}.")
    return rngs


def seeder(rngs: Sequence[str]) -> Callable[[int], None] | None:
    """One function that seeds the RNGs named in ``rngs`` from a key; None when there are none."""
    names = check_rngs(rngs)
    if not names:
        return None
    if sorted(set(names)) == sorted(ALL_RNGS):
        return _seed_all
    seeds = tuple(_RNGS[name][0] for name in dict.fromkeys(names))

    def seed(key: int) -> None:
        for one in seeds:
            one(key)

    return seed


def fetch_draws_nothing(dataset: Any, collate_fn: Any) -> bool:
    """Whether fetching a batch of ``dataset`` with ``collate_fn`` provably draws no random numbers.

    True only for torch's own datasets whose items are tensor indexing, by
    exact type (a subclass may override ``__getitem__``), and the default
    collate (``None``: a DataLoader's default); anything else may augment.
    """
    return collate_fn in (None, default_collate) and _indexes_tensors(dataset)


def _indexes_tensors(dataset: Any) -> bool:
    kind = type(dataset)
    if kind is TensorDataset:
        return True
    if kind is Subset:
        return _indexes_tensors(dataset.dataset)
    if kind is ConcatDataset:
        return all(_indexes_tensors(part) for part in dataset.datasets)
    if kind is StackDataset:
        parts = dataset.datasets
        return all(_indexes_tensors(part) for part in (parts.values() if isinstance(parts, dict) else parts))
    return False


class RngStates:
    """The states of some global RNGs, taken now and put back by :meth:`restore` (a replayed fetch's guard)."""

    def __init__(self, rngs: Sequence[str]) -> None:
        self._saved = [(_RNGS[name][2], _RNGS[name][1]()) for name in dict.fromkeys(check_rngs(rngs))]

    def restore(self) -> None:
        for set_state, state in self._saved:
            set_state(state)


class SeededDataset(Dataset):
    """Wraps a map-style dataset so a :class:`TaggedBatch` is fetched with the global RNGs seeded by its key.

    DataLoader's map-style fetcher calls ``__getitems__(indices)`` when the
    dataset defines it; that is the one place a whole batch, with its key,
    reaches the dataset -- in the main process or in a worker alike.  The
    RNGs are left where the fetch left them: in the main process the loader
    puts torch's back and seeds the others for the training stream (see the
    module docstring).
    """

    def __init__(self, dataset: Any, rngs: Sequence[str] = ALL_RNGS) -> None:
        self.dataset = dataset
        self.rngs = check_rngs(rngs)
        self._bind()

    def _bind(self) -> None:
        """What every fetch calls, looked up once: the seeder, and the dataset's own batched fetch (or None)."""
        self._seed = seeder(self.rngs)
        self._getitems = getattr(self.dataset, "__getitems__", None)

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "rngs": self.rngs}  # the seeder may be a closure: rebuilt, not pickled

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dataset, self.rngs = state["dataset"], state["rngs"]
        self._bind()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        key = getattr(indices, "key", None)
        if key is not None and self._seed is not None:
            self._seed(key)
        if self._getitems:
            return self._getitems(indices)  # keep a dataset's own batched fetch (e.g. one query per batch)
        dataset = self.dataset
        return [dataset[i] for i in indices]
