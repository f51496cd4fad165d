"""Fetching a batch as hooks of a loop's table, with the module's batch transfer hooks in Lightning's order.

::

    fetch -> on_before_batch_transfer -> transfer_batch_to_device -> on_after_batch_transfer -> advance

``FETCH`` is that sequence up to ``advance``: the training epoch, evaluation
and prediction loops put it at the head of their per-batch rows, so the
diagram shows where a batch is taken and moved, and every stage calls the
module's ``on_before_batch_transfer(batch, dataloader_idx)``,
``transfer_batch_to_device(batch, device, dataloader_idx)`` and
``on_after_batch_transfer(batch, dataloader_idx)`` in the same place.

Free when not overridden: ``skip_transfer_hooks`` (called in ``on_attach``)
leaves out of the rows, for one run, the hooks whose default would change
nothing -- both ``on_*_batch_transfer`` defaults return the batch, and the
default transfer of a batch to the CPU is a no-op for a CPU loader.

The batch travels between these hooks on the loop (``_held``).  A checkpoint
taken between them could not give it back, so the loop is not
``checkpointable`` while it holds one; a resume inside ``advance`` (in the
middle of the step) fetches the batch in flight again and runs the three
transfer hooks on it again, as the interrupted run did.  Hooks that draw
random numbers (GPU augmentation) must draw the same again: when the module
overrides a transfer hook, the torch RNG states (CPU and CUDA) from before the
hooks are kept while the batch is in flight and saved with the loop
(``on_save_checkpoint``); the replay runs on them, then the checkpoint's
states are put back.  (Python's and NumPy's generators are not replayed:
draw from torch in these hooks, or augment in the dataset.)

Fetching the batch in flight again needs a loader that can step back one
batch (``ResumableLoader.rewind``).  A loader with a position but no way back
-- torchdata's ``StatefulDataLoader``: its ``state_dict`` after a fetch counts
that batch as read -- *pins* the batch: the loop is not ``checkpointable``
from its fetch to the end of its ``advance``, so a checkpoint request or a
preemption signal waits for the batch to finish (one step at most) and the
checkpoint holds a position between two batches, which such a loader resumes
exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .._hook_spec import TRANSFER_HOOKS
from ._base import TrainerLoop

__all__ = ["FETCH", "FetchingLoop"]

#: The hooks that produce the batch an ADVANCE row's ``advance`` works on, in order.
FETCH: tuple[str, ...] = ("fetch", *TRANSFER_HOOKS)

_NOTHING = object()  # no batch held (None is a batch a loader may yield)


class FetchingLoop(TrainerLoop, abstract=True):
    """A loop whose per-batch rows begin with :data:`FETCH`; subclasses define ``fetch`` with ``hold``."""

    def __init__(self) -> None:
        super().__init__()
        # Instance attributes, not class defaults: Python 3.11 caches no read of an attribute the class also
        # defines, and these are read and written every batch.
        self._held: Any = _NOTHING  # the batch between fetch and advance; _NOTHING otherwise
        self._held_dataloader_idx = 0  # which of the stage's dataloaders it came from
        self._user_transfer = False  # the module overrides a transfer hook (so its random draws are replayed on resume)
        # The torch RNG states from before the transfer hooks of the batch in flight (from hold() to the end of
        # advance: done_with_batch()); None when no batch is in flight or no transfer hook is overridden.
        self._rng_in_flight: dict[str, Any] | None = None
        self._pinned = False  # the batch in flight came from a loader that cannot step back: no checkpoint till done

    def skip_transfer_hooks(self) -> None:
        """Leave out, for this run, the transfer hooks that would not change the batch (worked out once)."""
        run = self.context
        idle = {name for name in TRANSFER_HOOKS if not run.hooks.overrides(name)}
        self._user_transfer = len(idle) < len(TRANSFER_HOOKS)
        if str(run.device) != "cpu":
            idle.discard("transfer_batch_to_device")  # its default moves the batch: needed
        self.skip_hooks(idle)

    @property
    def checkpointable(self) -> bool:
        return self._held is _NOTHING and not self._pinned

    def fetch_from(self, source: Any, dataloader_idx: int) -> None:
        """Take ``source``'s next batch and hold it (pinned when the source cannot fetch it again on resume)."""
        # hold(), written out: this runs once per batch
        self._held, self._held_dataloader_idx = source.next_batch(), dataloader_idx
        if self._user_transfer and not self.restarting:
            self._rng_in_flight = _torch_rng()
        self._pinned = source.cannot_step_back

    def hold(self, batch: Any, dataloader_idx: int) -> None:
        """Keep a fetched batch for the transfer hooks and ``advance``."""
        self._held, self._held_dataloader_idx = batch, dataloader_idx
        if self._user_transfer and not self.restarting:
            self._rng_in_flight = _torch_rng()

    def done_with_batch(self) -> None:
        """The end of ``advance``: nothing of this batch is needed for a resume any more."""
        self._rng_in_flight = None
        self._pinned = False

    def take_batch(self) -> Any:
        """The batch the transfer hooks produced; the loop holds nothing after this."""
        batch, self._held = self._held, _NOTHING
        return batch

    def transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """All three transfer hooks at once, for a batch fetched again on resume (on the RNG they first ran on)."""
        self.hold(batch, dataloader_idx)
        with _replayed(self._rng_in_flight):
            self.on_before_batch_transfer()
            self.transfer_batch_to_device()
            self.on_after_batch_transfer()
        return self.take_batch()

    def on_save_checkpoint(self) -> dict[str, Any]:
        extra = super().on_save_checkpoint()
        if self._rng_in_flight is not None:
            extra = {**extra, "rng_before_transfer": {k: [s.tolist() for s in v] for k, v in self._rng_in_flight.items()}}
        return extra

    def on_load_checkpoint(self, state: dict[str, Any]) -> None:
        super().on_load_checkpoint(state)
        saved = state.get("rng_before_transfer")
        self._rng_in_flight = None if saved is None else {
            k: [torch.tensor(s, dtype=torch.uint8) for s in v] for k, v in saved.items()}

    # -- the hooks of FETCH after ``fetch`` ------------------------------------------------------
    def on_before_batch_transfer(self) -> None:
        self._held = self.context.hooks.on_before_batch_transfer(self._held, self._held_dataloader_idx)

    def transfer_batch_to_device(self) -> None:
        run = self.context
        self._held = run.hooks.transfer_batch_to_device(self._held, run.device, self._held_dataloader_idx)

    def on_after_batch_transfer(self) -> None:
        self._held = self.context.hooks.on_after_batch_transfer(self._held, self._held_dataloader_idx)

    def teardown(self) -> None:
        self._held = _NOTHING  # a run that failed mid-fetch leaves nothing behind
        self._pinned = False
        super().teardown()


def _torch_rng() -> dict[str, Any]:
    """torch's CPU generator state, and every CUDA device's once CUDA is in use (what GPU augmentation draws)."""
    states = {"cpu": [torch.get_rng_state()]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def _set_torch_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"][0])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def _replayed(states: dict[str, Any] | None) -> Iterator[None]:
    """Run on ``states`` (the draws of the first run), then put back the RNG states as they are now."""
    if states is None:
        yield
        return
    now = _torch_rng()
    _set_torch_rng(states)
    try:
        yield
    finally:
        _set_torch_rng(now)
