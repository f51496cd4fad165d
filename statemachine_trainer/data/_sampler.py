"""``ResumableSampler``: a batch sampler whose whole state is ``(epoch, position)``.

Epoch ``e``'s order is a function of ``seed`` and ``e`` alone: the permutation
comes from a private ``torch.Generator`` seeded with ``seed + e`` -- the same
rule, and so the same order, as ``torch.utils.data.DistributedSampler``, which
lets a run move from DistributedSampler without its data order changing.
(As there, ``(seed, e + 1)`` and ``(seed + 1, e)`` give the same order.)

Sharding follows DistributedSampler too: the permutation is padded by
wrapping around to a multiple of ``world_size`` (or its tail is dropped when
``shard_drop_last``), and rank ``r`` takes every ``world_size``-th index from
``r``.  Padding by wrap-around means padded slot ``j`` holds ``perm[j % n]``,
so rank ``r``'s ``i``-th sample is ``perm[(r + i * world_size) % n]`` and any
batch is computed directly from its index: jumping to ``position`` is O(1),
with no batch before it replayed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler

from ._seeding import TaggedBatch, epoch_key, key_of_batch

__all__ = ["ResumableSampler", "check_state"]

_MASK64 = (1 << 64) - 1


class ResumableSampler(Sampler[list[int]]):
    """Yields this rank's batches of epoch ``epoch``, starting at batch ``position``.

    ``position`` counts the batches this sampler has handed out in the epoch.
    With worker processes, DataLoader asks for batches ahead of the consumer,
    so when the consumer's count matters use :class:`ResumableLoader`, which
    keeps its own.  Iterating an epoch that iteration finished moves on to the
    next one, so a loop that never calls :meth:`set_epoch` still sees a new
    order each pass; but a position set from outside (:meth:`seek`,
    :meth:`load_state_dict`) is served as it is, so a state saved at the end of
    an epoch resumes to "nothing left in this epoch", not to a whole new one.
    """

    def __init__(self, data_source: Sized | int, batch_size: int, *, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 shard_drop_last: bool | None = None) -> None:
        self.num_items = data_source if isinstance(data_source, int) else len(data_source)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1.")
        if (rank is None) != (world_size is None):
            raise ValueError("Give both rank and world_size to shard the data, or neither to use all of it.")
        world_size = 1 if world_size is None else world_size
        rank = 0 if rank is None else rank
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size}); pass this process's rank.")
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        #: DistributedSampler's drop_last: drop the uneven tail instead of padding; defaults to drop_last.
        self.shard_drop_last = drop_last if shard_drop_last is None else shard_drop_last
        self.epoch = 0  # the epoch whose order is served; any int >= 0
        self.position = 0  # batches handed out this epoch; 0 <= position <= len(self)
        self._seeked = False  # position was set from outside since the last iter(): serve it, even at the end
        #: Whether batches carry their key (:class:`TaggedBatch`), which a seeded fetch reads; ResumableLoader
        #: turns it off for a fetch it does not seed, which then gets plain lists and no key is computed.
        self.tagged = True
        # ((seed, epoch), this rank's indices, the epoch's part of every batch key): computed once per epoch
        self._order: tuple[tuple[int, int], list[int], int] | None = None

    @property
    def num_samples(self) -> int:
        """How many samples this rank sees per epoch (DistributedSampler's ``num_samples``)."""
        if self.shard_drop_last:
            return self.num_items // self.world_size
        return math.ceil(self.num_items / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` from its first batch; the current epoch keeps its position (safe after a resume)."""
        if epoch != self.epoch:
            self.epoch, self.position, self._seeked = epoch, 0, False

    def seek(self, position: int) -> None:
        """Make the next iterator start at batch ``position`` of the current epoch; O(1)."""
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= len(self):
            raise ValueError(f"position={position!r} must be an int in [0, {len(self)}] (batches per epoch).")
        self.position, self._seeked = position, True

    def order(self) -> list[int]:
        """This rank's sample indices for the current epoch, computed once per epoch in O(len / world_size).

        A list rather than a tensor: slicing it per batch costs a third of slicing a tensor and calling tolist().
        """
        return self._epoch_cache()[1]

    def _epoch_cache(self) -> tuple[tuple[int, int], list[int], int]:
        tag = (self.seed, self.epoch)
        if self._order is None or self._order[0] != tag:
            self._order = (tag, self._rank_order().tolist(), epoch_key(self.seed, self.epoch, self.rank))
        return self._order

    def _rank_order(self) -> torch.Tensor:
        n = self.num_items
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed((self.seed + self.epoch) & _MASK64)  # DistributedSampler's seeding rule
            perm = torch.randperm(n, generator=generator)
        else:
            perm = torch.arange(n)
        if n == 0:
            return perm
        slots = self.rank + torch.arange(self.num_samples) * self.world_size
        return perm[slots % n]  # slot j of the padded order is perm[j % n]

    def batch(self, index: int) -> list[int]:
        """Batch ``index`` of the current epoch, in O(batch_size): the jump that makes resuming O(1)."""
        _, order, epoch_part = self._epoch_cache()
        start = index * self.batch_size
        indices = order[start:start + self.batch_size]
        return TaggedBatch(indices, key_of_batch(epoch_part, index)) if self.tagged else indices

    def key_function(self) -> Callable[[int], int]:
        """``index -> key of batch index`` for the current epoch (its epoch part computed once, here)."""
        return functools.partial(key_of_batch, self._epoch_cache()[2])

    def __iter__(self) -> Iterator[list[int]]:
        if self.position >= len(self) > 0 and not self._seeked:
            self.set_epoch(self.epoch + 1)
        self._seeked = False
        self.order()  # the permutation's cost is paid here, not inside the first fetch
        batches = len(self)  # fixed for the epoch (dataset size, batch size, world size): not asked per batch
        while self.position < batches:
            batch = self.batch(self.position)  # a subclass's own order (GlobalBatchSampler) overrides batch()
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, ("epoch", "position"), len(self))
        self.epoch = state["epoch"]
        self.seek(state["position"])


def check_state(state: dict[str, Any], keys: tuple[str, ...], num_batches: int) -> None:
    """Raise a TypeError or ValueError naming the problem unless ``state`` has exactly ``keys``, all ints, in range."""
    if not isinstance(state, dict) or set(state) != set(keys):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"A data-position state must have exactly the keys {list(keys)}, got {found}; pass the "
                         "dict that state_dict() returned.")
    for key in keys:
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"state[{key!r}]={value!r} must be an int; the checkpoint is damaged or not ours.")
    if state["epoch"] < 0 or not 0 <= state["position"] <= num_batches:
        raise ValueError(f"state {state} is out of range: position must be in [0, {num_batches}] (batches per "
                         "epoch) and epoch >= 0; was it saved with another dataset size, batch_size or world_size?")
