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
transfer hooks on it again, as the interrupted run did.
"""

from __future__ import annotations

from typing import Any

from .._hook_spec import TRANSFER_HOOKS
from ._base import TrainerLoop

__all__ = ["FETCH", "FetchingLoop"]

#: The hooks that produce the batch an ADVANCE row's ``advance`` works on, in order.
FETCH: tuple[str, ...] = ("fetch", *TRANSFER_HOOKS)

_NOTHING = object()  # no batch held (None is a batch a loader may yield)


class FetchingLoop(TrainerLoop, abstract=True):
    """A loop whose per-batch rows begin with :data:`FETCH`; subclasses define ``fetch`` with ``hold``."""

    _held: Any = _NOTHING  # the batch between fetch and advance; _NOTHING otherwise
    _held_dataloader_idx: int = 0  # which of the stage's dataloaders it came from

    def skip_transfer_hooks(self) -> None:
        """Leave out, for this run, the transfer hooks that would not change the batch (worked out once)."""
        run = self.context
        idle = {name for name in TRANSFER_HOOKS if not run.hooks.overrides(name)}
        if str(run.device) != "cpu":
            idle.discard("transfer_batch_to_device")  # its default moves the batch: needed
        self.skip_hooks(idle)

    @property
    def checkpointable(self) -> bool:
        return self._held is _NOTHING

    def hold(self, batch: Any, dataloader_idx: int) -> None:
        """Keep a fetched batch for the transfer hooks and ``advance``."""
        self._held, self._held_dataloader_idx = batch, dataloader_idx

    def take_batch(self) -> Any:
        """The batch the transfer hooks produced; the loop holds nothing after this."""
        batch, self._held = self._held, _NOTHING
        return batch

    def transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """All three transfer hooks at once, for a batch fetched again on resume."""
        self.hold(batch, dataloader_idx)
        self.on_before_batch_transfer()
        self.transfer_batch_to_device()
        self.on_after_batch_transfer()
        return self.take_batch()

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
        super().teardown()
