"""``BatchSource``: a dataloader seen by a loop -- how many batches, and the next one.

The batch comes back as the loader yields it: moving it to the device is the
module's ``transfer_batch_to_device`` hook, which the loops fire after
``on_before_batch_transfer`` (see ``loops/_fetch.py``).  A stage with several
dataloaders (validation, test, prediction) has one source per loader, keyed
by :func:`source_key`.

Limits (``limit_*_batches``) are resolved here once per run, so loops only ask
"is there another batch?" by comparing a counter with ``num_batches``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .._optim import ConfigError

__all__ = ["BatchSource", "count_batches", "is_loader_collection", "move_to_device", "source_key"]


def source_key(stage: str, dataloader_idx: int) -> str:
    """Where a stage's ``dataloader_idx``-th source is kept (and its position in checkpoints): "validate/1"."""
    return stage if dataloader_idx == 0 else f"{stage}/{dataloader_idx}"


def is_loader_collection(value: Any) -> bool:
    """Whether ``value`` is several dataloaders (a list, tuple or dict of them) rather than one loader.

    A list of batches is a loader too, so a list counts as several loaders
    only when each item is itself iterable and not a batch-like value.
    """
    items = list(value.values()) if isinstance(value, Mapping) else value
    if not isinstance(items, (list, tuple)) or not items:
        return False
    return all(_looks_like_loader(item) for item in items)


def _looks_like_loader(item: Any) -> bool:
    return (hasattr(item, "__iter__") and not isinstance(item, (torch.Tensor, list, tuple, Mapping, str, bytes))
            and not hasattr(item, "shape"))


def count_batches(loader: Any, limit: float | None, what: str) -> int:
    """The number of batches a loop takes from ``loader`` per epoch, given a ``limit_*_batches`` value."""
    try:
        length = len(loader)
    except TypeError:
        length = None
    if limit is None or (isinstance(limit, float) and limit == 1.0):
        if length is None:
            raise ConfigError(f"The {what} dataloader has no len(); set limit_{what}_batches=N (an int) so the "
                              "loop knows where an epoch ends.")
        return length
    if isinstance(limit, float):
        if not 0.0 <= limit <= 1.0:
            raise ConfigError(f"limit_{what}_batches={limit} must be a fraction in [0, 1] or an int.")
        if length is None:
            raise ConfigError(f"limit_{what}_batches={limit} is a fraction, but the {what} dataloader has no len(); "
                              "give an int instead.")
        return int(length * limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit_{what}_batches must be an int >= 0 or a float in [0, 1], got {limit!r}.")
    return limit if length is None else min(length, limit)


def move_to_device(batch: Any, device: Any) -> Any:
    """Move every tensor in a (nested) batch to ``device``; other values pass through."""
    if hasattr(batch, "to") and callable(batch.to):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(x, device) for x in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    return batch


class BatchSource:
    """One loader, with its per-epoch batch count and the device batches go to.

    A loader with a position of its own (``state_dict`` / ``load_state_dict``,
    e.g. :class:`statemachine_trainer.data.ResumableLoader`) makes the source
    *resumable*: its position goes into checkpoints, and a resume continues the
    epoch where it was instead of restarting the loader.
    """

    def __init__(self, loader: Any, num_batches: int, device: Any, shown: Any = None) -> None:
        self.loader, self.num_batches, self.device = loader, num_batches, device
        #: What ``trainer.train_dataloader`` & co. return: the user's loader when ``loader`` was built from it
        #: only to be resumable (``Trainer(resumable_data=True)``), else ``loader``.
        self.shown = loader if shown is None else shown
        self._iterator: Iterator[Any] | None = None
        self.resumable = callable(getattr(loader, "state_dict", None)) and callable(
            getattr(loader, "load_state_dict", None))
        # A position, but no way to serve the last batch again (torchdata's StatefulDataLoader): see loops/_fetch.py.
        self.cannot_step_back = self.resumable and not hasattr(loader, "rewind")
        self.positioned = False  # a checkpoint's position was loaded into it (False: it starts its epoch afresh)

    def start_epoch(self, epoch: int) -> None:
        if self.resumable and hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)  # the loader's own epoch: keeps its position if it is this epoch
        else:
            sampler = getattr(self.loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # e.g. DistributedSampler reshuffles per epoch
        self._iterator = iter(self.loader)

    def next_batch(self) -> Any:
        if self._iterator is None:  # after a resume: a resumable loader starts at its position
            self._iterator = self._resumed_iterator()
        return next(self._iterator)

    def _resumed_iterator(self) -> Iterator[Any]:
        """``iter(loader)`` after a resume, without drawing from torch's global RNG.

        ``iter`` of a DataLoader draws its workers' base seed (and a
        ``RandomSampler`` without a generator its seed) from torch's global
        generator.  The uninterrupted run drew them at the start of the
        epoch, before the checkpoint's RNG state; drawing them again here
        would shift every later draw (dropout) by one.
        """
        with torch.random.fork_rng(devices=[]):
            return iter(self.loader)

    def refetch(self) -> None:
        """Make the next batch the one in flight when the checkpoint was taken (a resumable loader only)."""
        if self.resumable and hasattr(self.loader, "rewind"):
            self._iterator = None
            self.loader.rewind(1)

    def end_epoch(self) -> None:
        self._iterator = None  # let worker processes of the finished epoch shut down

    def state_dict(self) -> Any:
        return self.loader.state_dict() if self.resumable else None

    def load_state_dict(self, state: Any) -> None:
        if state is not None and self.resumable:
            self._iterator = None
            self.loader.load_state_dict(state)
            self.positioned = True
