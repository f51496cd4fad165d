"""What every built-in loop shares: a way to reach the run it belongs to.

Built-in loops are created without arguments (so ``trainer.fit_loop =
MyLoop()`` works as in Lightning 1.5) and are attached to a trainer at the
start of each fit/validate/test/predict: ``Trainer`` sets ``_trainer`` on
every loop of the tree it is about to run.  The attribute is private, so it is
not a sub-loop and not part of the state set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..machine import Loop

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["TrainerLoop", "move_to_device"]


class TrainerLoop(Loop, abstract=True):
    #: Set by the Trainer before a run.  The per-batch loops read ``self._trainer`` directly (a
    #: property call per access adds up on the hot path); everything else uses ``self.trainer``.
    _trainer: Trainer | None = None

    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer: assign it to a trainer "
                               "(trainer.fit_loop = loop) and run trainer.fit(...), or run it from a loop that is.")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def on_attach(self) -> None:
        """Called when a trainer is about to run this loop: resolve per-run choices here, once."""

    @property
    def checkpointable(self) -> bool:
        """Whether a checkpoint written now could be resumed exactly; requests wait for a point where it can."""
        return True


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
