"""``TrainerState``: what ``trainer.state`` is -- the entry point under way, readable the Lightning way too.

Our code compares ``trainer.state == "fit"`` (``"validate"``, ``"test"``,
``"predict"``; ``"idle"`` before and after a run), so the state is that
string.  Ported Lightning code reads ``trainer.state.fn`` / ``.status`` /
``.stage`` instead; those are its attributes here, with Lightning's values:

* ``fn``: the entry point of the latest run (``"fit"``...), kept after it
  ended; None before any;
* ``status``: ``"initializing"`` before any run, ``"running"``, then
  ``"finished"``, or ``"interrupted"`` when the run raised;
* ``stage``: what runs now -- ``"train"``, ``"sanity_check"``,
  ``"validate"`` (also inside ``fit``), ``"test"``, ``"predict"`` -- read from
  the run's loops when asked (it changes inside one run); None outside one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainerState"]


class TrainerState(str):
    """A ``str`` (the entry point, or "idle") with Lightning's ``fn``, ``status`` and ``stage``; see the module doc."""

    fn: str | None
    _status: str
    _stage: Any  # () -> the stage now: the run's ``stage`` property, bound

    def __new__(cls, value: str, fn: str | None, status: str, stage: Any) -> TrainerState:  # noqa: PYI034
        state = super().__new__(cls, value)
        state.fn, state._status, state._stage = fn, status, stage
        return state

    def __getnewargs__(self) -> tuple[str, str | None, str, Any]:  # type: ignore[override]
        # copy and pickle rebuild it through __new__
        return str(self), self.fn, self._status, self._stage

    def ended(self, interrupted: bool) -> TrainerState:
        """This state once its run is over: "idle", status "finished" (or "interrupted": it raised), ``fn`` kept."""
        return TrainerState("idle", self.fn, "interrupted" if interrupted else "finished", self._stage)

    @property
    def status(self) -> str:
        return self._status

    @property
    def stage(self) -> str | None:
        return None if self == "idle" else self._stage()

    @property
    def finished(self) -> bool:
        return self._status == "finished"
