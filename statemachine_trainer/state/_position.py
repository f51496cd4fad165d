"""Where a loop's machine is: the one value a checkpoint needs to resume it."""

from __future__ import annotations

import attrs

__all__ = ["Position"]


def _check_hook(instance: Position, attribute: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise ValueError(f"Position.hook must be >= 0, got {value}.")
    if instance.row is None and value != 0:
        raise ValueError("Position.hook must be 0 between transitions (row is None).")


@attrs.frozen
class Position:
    """A loop machine's exact place, saved so a resume continues rather than guesses.

    Between transitions ``row`` is None and the loop is simply in ``state``.
    While a transition runs -- which, for a parent, lasts as long as the child
    loop its hook runs -- ``state`` is the transition's *source* (the state only
    changes once every hook has returned), ``row`` is the table index of the
    transition and ``hook`` the table index of the hook running now or next.
    Resuming runs that row's hooks from ``hook`` on, then enters the row's dest.
    """

    state: str  # current FSM state; during a transition, its source state
    row: int | None = None  # table index of the transition under way; None between transitions
    hook: int = attrs.field(default=0, validator=_check_hook)  # next (or running) hook of `row`; 0 if row is None
    queue: tuple[str, ...] = attrs.field(default=(), converter=tuple)  # triggers raised by hooks, FIFO, not yet run

    def __str__(self) -> str:
        if self.row is None:
            return self.state
        return f"{self.state}(row {self.row}, hook {self.hook})"
