"""What every built-in loop shares: the run it takes part in.

Built-in loops are created without arguments (so ``trainer.fit_loop =
MyLoop()`` works as in Lightning 1.5) and are attached to a run at the start
of each fit/validate/test/predict: the Trainer sets ``context`` (a
:class:`~statemachine_trainer._run.Run`) on every loop of its trees.  A
``Run`` is not a ``Loop``, so it is not a sub-loop and not part of the state
set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..machine import Loop

if TYPE_CHECKING:
    from .._run import Run

__all__ = ["TrainerLoop"]


class TrainerLoop(Loop, abstract=True):
    #: Set before a run: the module, data sources, hook relay, results, optimization and services.
    context: Run | None

    def __init__(self) -> None:
        super().__init__()
        # On the instance, not as a class default: Python 3.11 caches no read of an attribute that the class
        # also defines, and the loops read ``context`` several times a step.
        self.context = None

    @property
    def trainer(self) -> Run:
        """The run (Lightning's ``trainer`` names); the same object as ``self.context`` once attached."""
        if self.context is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a run: assign it to a trainer "
                               "(trainer.fit_loop = loop) and run trainer.fit(...), or run it from a loop that is.")
        return self.context

    def on_attach(self) -> None:
        """Called when a run is about to run this loop: resolve per-run choices here, once."""

    @property
    def checkpointable(self) -> bool:
        """Whether a checkpoint written now could be resumed exactly; requests wait for a point where it can."""
        return True
