"""Resumable data: a loader whose position is one integer and whose resume is a jump, not a replay.

- :class:`ResumableLoader` -- wraps a torch ``DataLoader`` (or a map-style
  dataset): same batches, plus ``state_dict()`` / ``load_state_dict()`` /
  ``set_epoch()`` / ``rewind()``; delegates to loaders that implement
  torchdata's ``StatefulDataLoader`` protocol themselves.
- :class:`ResumableSampler` -- the batch sampler underneath: seeded epoch
  permutations, DistributedSampler-compatible sharding, O(1) jumps.
- :class:`SeededDataset` / :class:`TaggedBatch` -- per-batch seeding of the
  global RNGs, so random augmentations replay exactly with any ``num_workers``.

The global RNGs named in ``rngs`` (default: torch's CPU generator, Python's
``random``, NumPy's ``np.random``) are seeded from batch ``k``'s key
(:func:`batch_key`) before its samples are fetched, in whichever process
fetches them.  In the main process torch's generator is then put back (its
stream runs on, unmoved by loading), and Python's and NumPy's are seeded
from :func:`training_key` of the key when ``next()`` hands the batch to its
consumer.  So what a step draws is the same with any ``num_workers`` and
after a resume; a batch served again (``rewind``: the batch in flight at a
checkpoint) leaves every RNG as it is.  The contract and its costs:
``_seeding`` and ``_loader``.
"""

from ._loader import ResumableLoader, StaleIteratorError
from ._sampler import ResumableSampler
from ._seeding import ALL_RNGS, SeededDataset, TaggedBatch, batch_key, training_key

__all__ = [
    "ALL_RNGS",
    "ResumableLoader",
    "ResumableSampler",
    "SeededDataset",
    "StaleIteratorError",
    "TaggedBatch",
    "batch_key",
    "training_key",
]
