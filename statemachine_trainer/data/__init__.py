"""Resumable data: a loader whose position is one integer and whose resume is a jump, not a replay.

- :class:`ResumableLoader` -- wraps a torch ``DataLoader`` (or a map-style
  dataset): same batches, plus ``state_dict()`` / ``load_state_dict()`` /
  ``set_epoch()`` / ``rewind()``; delegates to loaders that implement
  torchdata's ``StatefulDataLoader`` protocol themselves.
- :class:`ResumableSampler` -- the batch sampler underneath: seeded epoch
  permutations, DistributedSampler-compatible sharding, O(1) jumps.
- :class:`SeededDataset` / :class:`TaggedBatch` -- per-batch seeding of the
  global RNGs, so random augmentations replay exactly with any ``num_workers``.
"""

from ._loader import ResumableLoader, StaleIteratorError
from ._sampler import ResumableSampler
from ._seeding import ALL_RNGS, SeededDataset, TaggedBatch, batch_key

__all__ = [
    "ALL_RNGS",
    "ResumableLoader",
    "ResumableSampler",
    "SeededDataset",
    "StaleIteratorError",
    "TaggedBatch",
    "batch_key",
]
