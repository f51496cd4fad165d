"""A fixed global batch: the data order and randomness of every optimizer step, whatever the world size.

Theory of operation
-------------------
Under DDP the samples a step trains on normally depend on the world size:
each rank takes every ``W``-th index of the permutation, and its batches are
keyed by ``(seed, epoch, rank, batch)``.  Resuming a checkpoint at another
world size would change both.  With a fixed **global batch** ``G`` (samples
per optimizer step, ``Trainer(global_batch_size=G)``) the order is defined
without ``W``, then split:

* the epoch's permutation ``perm_e`` is one seeded permutation of the whole
  dataset (DistributedSampler's seeding rule, unpadded, unsharded);
* it is cut into **global micro-batches** of the per-rank batch size ``b``:
  micro-batch ``J`` is ``perm_e[J*b : (J+1)*b]``; optimizer step ``s`` of the
  epoch consumes micro-batches ``s*m ... s*m + m - 1`` with ``m = G // b``, so
  its sample set is ``perm_e[s*G : (s+1)*G]``;
* at world size ``W`` the accumulation is ``a = G // (b * W)`` (an integer,
  else the run is refused), and rank ``r``'s ``i``-th micro-batch of step
  ``s`` (its local batch ``k = s*a + i``) is ``J = s*m + i*W + r``;
* the epoch has ``len(dataset) // G`` steps; the last ``len(dataset) % G``
  samples of ``perm_e`` are not used that epoch (every rank then has the same
  number of micro-batches, and no step is partial at one world size and whole
  at another);
* every random draw is keyed by ``(seed, epoch, J)`` -- the key a single
  process would give its batch ``J`` (``batch_key(seed, epoch, 0, J)``):
  the augmentations of the fetch (the data stream) and, when the batch is
  handed over, torch's CPU generator (and the current CUDA device's, once
  CUDA is initialized) as well as Python's and NumPy's (the training stream:
  dropout masks).  Unlike the default mode, torch's stream does not run on
  across batches: it restarts from each micro-batch's key.

So an optimizer step sees the same samples, with the same augmentations and
dropout masks, at any world size; with DDP's mean over ranks and the loss
divided by ``a`` its gradient is the mean over the same ``G`` samples, summed
in another order.

The position.  At a step boundary every rank has consumed ``s*a`` local
batches, i.e. ``P = s*a*W = s*m`` global micro-batches: a global quantity.
The loader's state records its world size and global batch, so a state saved
at ``N`` ranks loads at ``M`` ranks as position ``P // M`` -- refused inside
an accumulation window (``P`` not a multiple of ``m``), where each rank's
partial gradient is its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._optim import ConfigError
from ._sampler import ResumableSampler
from ._seeding import TaggedBatch, epoch_key, key_of_batch, seeder

__all__ = ["GLOBAL_STATE_KEYS", "GlobalBatchSampler", "accumulation", "global_position", "training_seeder"]

#: A global-batch loader's state: the plain loader's, plus what a resume at another world size needs.
GLOBAL_STATE_KEYS = ("epoch", "position", "seed", "global_batch_size", "batch_size", "world_size")

_MASK32 = (1 << 32) - 1


def accumulation(global_batch_size: int, batch_size: int, world_size: int) -> int:
    """``a = G // (b * W)``: micro-batches per rank per optimizer step; a ConfigError naming G, b, W if inexact."""
    for name, value in (("global_batch_size", global_batch_size), ("batch_size", batch_size),
                        ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} must be an int >= 1.")
    per_step = batch_size * world_size
    if global_batch_size % per_step:
        raise ConfigError(
            f"global_batch_size={global_batch_size} cannot be kept with a per-rank batch_size={batch_size} at world "
            f"size {world_size}: each optimizer step takes batch_size * world_size * accumulation samples, and "
            f"{global_batch_size} is not a multiple of {batch_size} * {world_size} = {per_step}. Choose a "
            f"global_batch_size that is, a batch_size that divides {global_batch_size} // {world_size}, or "
            "another number of processes.")
    return global_batch_size // per_step


def global_position(state: dict[str, Any], batch_size: int, global_batch_size: int, world_size: int) -> int:
    """This rank's position (local batches) for a global-batch state saved at any world size; ValueError if none.

    The saved state holds its rank's local position ``p`` at world size
    ``N``: ``P = p * N`` global micro-batches were consumed (every rank holds
    the same ``p`` at a step boundary).  At ``world_size`` it is ``P //
    world_size``, defined only at a step boundary when the world size changes.
    """
    if state["global_batch_size"] != global_batch_size or state["batch_size"] != batch_size:
        raise ValueError(f"the state was saved with global_batch_size={state['global_batch_size']} and a per-rank "
                         f"batch_size={state['batch_size']}, but this loader has {global_batch_size} and "
                         f"{batch_size}; resume with the same global_batch_size and DataLoader batch_size.")
    saved_world = state["world_size"]
    if saved_world == world_size:
        return state["position"]
    consumed = state["position"] * saved_world
    per_step = global_batch_size // batch_size
    if consumed % per_step:
        raise ValueError(f"the state was saved at world size {saved_world} inside an accumulation window (each rank "
                         f"had consumed {state['position']} micro-batches, not a multiple of {per_step // saved_world}"
                         f" per step); each rank's partial gradient is its own, so it resumes only at world size "
                         f"{saved_world}. Resume at another world size from a checkpoint taken at a step boundary.")
    return consumed // world_size


def training_seeder(rngs: Sequence[str]) -> Callable[[int], None] | None:
    """Seeds every RNG of ``rngs`` (torch's CPU generator included) and the current CUDA device's from a key.

    CUDA's generator is seeded only once CUDA is initialized (a CPU run never
    pays for it, nor initializes CUDA); with ``rngs`` lacking ``"torch"`` no
    torch generator is seeded and dropout depends on the world size again.
    """
    seed = seeder(rngs)
    if seed is None or "torch" not in rngs:
        return seed

    def seed_all(key: int) -> None:
        seed(key)
        if torch.cuda.is_initialized():
            torch.cuda.default_generators[torch.cuda.current_device()].manual_seed(key & _MASK32)

    return seed_all


class GlobalBatchSampler(ResumableSampler):
    """Rank ``rank``'s micro-batches of the global-batch order (see the module docstring), with their keys.

    ``len`` is ``(num_items // global_batch_size) * accumulation``; batch
    ``k`` is global micro-batch :meth:`micro_batch` ``(k)``.  Sharding is the
    order's own, so DistributedSampler's padding and ``drop_last`` do not apply.
    """

    def __init__(self, num_items: int, batch_size: int, global_batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(num_items, batch_size, shuffle=shuffle, drop_last=True, seed=seed, rank=rank,
                         world_size=world_size)
        self.accumulation = accumulation(global_batch_size, batch_size, world_size)
        self.global_batch_size = global_batch_size
        self.micro_batches = global_batch_size // batch_size  # global micro-batches per optimizer step (m)

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch: whole global batches only."""
        return self.num_items // self.global_batch_size

    def __len__(self) -> int:
        return self.steps * self.accumulation

    def micro_batch(self, index: int) -> int:
        """The global micro-batch ``J`` that this rank's batch ``index`` of the epoch is."""
        step, i = divmod(index, self.accumulation)
        return step * self.micro_batches + i * self.world_size + self.rank

    def _epoch_cache(self) -> tuple[tuple[int, int], list[int], int]:
        tag = (self.seed, self.epoch)
        if self._order is None or self._order[0] != tag:
            # The whole permutation, and rank 0's epoch key for every rank: nothing of it depends on the rank.
            self._order = (tag, self._permutation().tolist(), epoch_key(self.seed, self.epoch, 0))
        return self._order

    def _permutation(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        generator = torch.Generator()
        generator.manual_seed((self.seed + self.epoch) & ((1 << 64) - 1))  # DistributedSampler's seeding rule
        return torch.randperm(self.num_items, generator=generator)

    def batch(self, index: int) -> list[int]:
        _, order, epoch_part = self._epoch_cache()
        j = self.micro_batch(index)
        start = j * self.batch_size
        indices = order[start:start + self.batch_size]
        return TaggedBatch(indices, key_of_batch(epoch_part, j)) if self.tagged else indices

    def key_function(self) -> Callable[[int], int]:
        epoch_part, micro_batch = self._epoch_cache()[2], self.micro_batch
        return lambda index: key_of_batch(epoch_part, micro_batch(index))
