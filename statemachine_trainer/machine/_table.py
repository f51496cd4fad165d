"""Transition tables: the data that *is* a loop's behaviour.

A table is a tuple of states and a tuple of rows.  Every row says: "when
``trigger`` fires in ``source``, if every condition holds and no ``unless``
holds, run ``hooks`` in order, then move to ``dest``".  Rows are plain frozen
values, so a table can be written in Python, loaded from JSON/TOML, compared
with the contract in ``specs/``, and drawn -- all from the same data.

Structural mistakes are caught when the table is built (``Table(...)`` raises
:class:`TableError`); names that must resolve to methods are checked when a
loop class adopts the table (see ``_loop.py``), because only then is it known
which methods exist.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = [
    "ADVANCE",
    "END",
    "RESTARTING",
    "STANDARD_STATES",
    "START",
    "Row",
    "Table",
    "TableError",
]

#: Every run begins here; ``run()`` on a fresh or finished loop starts from START.
START = "START"
#: The conventional working state of a loop: it repeats ``advance`` until ``done``.
ADVANCE = "ADVANCE"
#: Terminal for a run: ``run()`` returns once the loop reaches END.
END = "END"
#: Where a loop sits after ``load_state_dict`` restored a mid-run position and
#: before ``run()`` resumes it.  It is the UML *history* pseudostate: the only
#: way out is the built-in ``restart`` trigger, back to the saved state.  Tables
#: never list rows out of it; the dispatcher owns those.
RESTARTING = "RESTARTING"
#: The states every table has.  RESTARTING is implied and must not be listed.
STANDARD_STATES = (START, ADVANCE, END, RESTARTING)
#: The dispatcher's own trigger out of RESTARTING; tables may not use it.
RESTART_TRIGGER = "restart"


class TableError(ValueError):
    """A transition table is malformed.  Raised when the table or the loop class is defined."""


def _names(value: Any, what: str) -> tuple[str, ...]:
    """Accept one name or an iterable of names; reject anything else early."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        names = tuple(value)
        if all(isinstance(n, str) for n in names):
            return names
    raise TypeError(f"{what} must be a name or a sequence of names, got {value!r}.")


def _identifier(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
        raise TableError(f"{what} {value!r} is not a valid Python identifier; use names like 'advance' or 'TRAIN'.")
    return value


@attrs.frozen
class Row:
    """One transition: ``source --trigger [conditions, not unless] / hooks--> dest``.

    ``hooks`` are names of loop methods called in order; ``conditions`` and
    ``unless`` name boolean properties or zero-argument methods.  ``str(row)``
    is the form error messages and diagrams use.
    """

    trigger: str = attrs.field(validator=lambda _, __, v: _identifier(v, "Trigger"))
    source: str
    dest: str
    hooks: tuple[str, ...] = attrs.field(default=(), converter=lambda v: _names(v, "hooks"))
    conditions: tuple[str, ...] = attrs.field(default=(), converter=lambda v: _names(v, "conditions"))
    unless: tuple[str, ...] = attrs.field(default=(), converter=lambda v: _names(v, "unless"))

    @property
    def guarded(self) -> bool:
        """Whether the row can decline to fire (it has conditions or unless-guards)."""
        return bool(self.conditions or self.unless)

    def guard_text(self) -> str:
        parts = list(self.conditions) + [f"not {name}" for name in self.unless]
        return f" [{' and '.join(parts)}]" if parts else ""

    def label(self) -> str:
        """``trigger [guards] / hooks``: the row without its states, as diagrams print it."""
        hooks = f" / {', '.join(self.hooks)}" if self.hooks else ""
        return f"{self.trigger}{self.guard_text()}{hooks}"

    def __str__(self) -> str:
        return f"{self.source} -> {self.dest}: {self.label()}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data; empty lists are omitted so specs stay short."""
        out: dict[str, Any] = {"trigger": self.trigger, "source": self.source, "dest": self.dest}
        for key in ("hooks", "conditions", "unless"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Row:
        extra = set(data) - {"trigger", "source", "dest", "hooks", "conditions", "unless"}
        if extra:
            raise TableError(f"Row {dict(data)!r} has unknown keys {sorted(extra)}; "
                             "allowed are trigger, source, dest, hooks, conditions, unless.")
        return cls(**data)


def _row_label(index: int, row: Row) -> str:
    return f"row {index} ({row})"


@attrs.frozen
class Table:
    """A loop's states and transition rows, validated on construction.

    ``states`` lists every state the table uses, START and END included;
    RESTARTING is implied (``load_state_dict`` enters it, the dispatcher leaves
    it).  The *driving trigger* of a state -- the one ``run()`` fires while the
    loop sits there -- is the trigger of that state's first row; other triggers
    are events fired from hooks with ``loop.fire(name)``.
    """

    states: tuple[str, ...] = attrs.field(converter=lambda v: _names(v, "states"))
    rows: tuple[Row, ...] = attrs.field(converter=tuple)
    name: str = ""

    def __attrs_post_init__(self) -> None:
        _validate_structure(self)

    # -- derived views (cheap; tables are small and built once) -------------------------
    def driving_trigger(self, state: str) -> str | None:
        """The trigger ``run()`` fires in ``state``: that of the state's first row."""
        for row in self.rows:
            if row.source == state:
                return row.trigger
        return None

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.trigger for r in self.rows))

    @property
    def hook_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h for r in self.rows for h in r.hooks))

    @property
    def condition_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for r in self.rows for c in (*r.conditions, *r.unless)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "states": list(self.states), "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Table:
        """Build a table from plain data (JSON, TOML, YAML), validating it like any other."""
        extra = set(data) - {"name", "states", "rows"}
        if extra:
            raise TableError(f"Table data has unknown keys {sorted(extra)}; allowed are name, states, rows.")
        rows = [r if isinstance(r, Row) else Row.from_dict(r) for r in data.get("rows", ())]
        return cls(states=data.get("states", ()), rows=rows, name=data.get("name", ""))

    def __str__(self) -> str:
        lines = [f"Table {self.name or '<unnamed>'}: states {', '.join(self.states)}"]
        lines += [f"  {_row_label(i, r)}" for i, r in enumerate(self.rows)]
        return "\n".join(lines)


def _validate_structure(table: Table) -> None:
    """Reject tables that cannot work, naming the offending row and the fix."""
    where = f"Table {table.name!r}: " if table.name else "Table: "
    _check_states(table, where)
    _check_rows(table, where)
    _check_reachability(table, where)


def _check_states(table: Table, where: str) -> None:
    seen: set[str] = set()
    for state in table.states:
        _identifier(state, f"{where}state")
        if state in seen:
            raise TableError(f"{where}state {state!r} is listed twice; list each state once.")
        seen.add(state)
    if RESTARTING in seen:
        raise TableError(f"{where}RESTARTING is implied by every table and owned by the dispatcher; "
                         "remove it from `states`.")
    for required in (START, END):
        if required not in seen:
            raise TableError(f"{where}states must include {required}; add {required!r} to `states`.")
    if not table.rows:
        raise TableError(f"{where}has no rows; add at least a row from START that leads to END.")


def _check_rows(table: Table, where: str) -> None:
    states = set(table.states)
    for i, row in enumerate(table.rows):
        label = _row_label(i, row)
        for end, state in (("source", row.source), ("dest", row.dest)):
            if state not in states:
                hint = ("RESTARTING cannot appear in rows: the dispatcher leaves it by itself"
                        if state == RESTARTING else f"add {state!r} to `states` or fix the spelling")
                raise TableError(f"{where}{label} has unknown {end} state {state!r}; {hint}.")
        if row.source == END:
            raise TableError(f"{where}{label} leaves END, but END is terminal for a run; "
                             "run() restarts a finished loop from START by itself, so drop this row.")
        if row.trigger == RESTART_TRIGGER:
            raise TableError(f"{where}{label} uses the reserved trigger 'restart'; pick another trigger name.")
        for name in (*row.hooks, *row.conditions, *row.unless):
            _identifier(name, f"{where}{label}: hook or condition name")
    # A row that follows an unguarded row with the same trigger and source can never fire.
    unguarded: dict[tuple[str, str], int] = {}
    for i, row in enumerate(table.rows):
        key = (row.trigger, row.source)
        if key in unguarded:
            first = unguarded[key]
            kind = "a second unconditional row" if not row.guarded else "a row that can never fire"
            raise TableError(
                f"{where}{_row_label(i, row)} is {kind}: {_row_label(first, table.rows[first])} has no "
                f"conditions and always wins for trigger {row.trigger!r} in {row.source}. Give the earlier "
                "row conditions, or move the unconditional row last.")
        if not row.guarded:
            unguarded[key] = i


def _check_reachability(table: Table, where: str) -> None:
    succ: dict[str, set[str]] = {s: set() for s in table.states}
    pred: dict[str, set[str]] = {s: set() for s in table.states}
    for row in table.rows:
        succ[row.source].add(row.dest)
        pred[row.dest].add(row.source)
    # After a resume the dispatcher may place the loop in any state, but a state
    # no run can reach from START could never have been saved either.
    reachable = _closure(START, succ)
    for state in table.states:
        if state not in reachable:
            sources = ", ".join(sorted(pred[state])) or "no state"
            raise TableError(f"{where}state {state!r} is unreachable from START (rows into it come from "
                             f"{sources}); add a row from a reachable state into {state!r}, or remove it.")
    finishing = _closure(END, pred)
    for state in table.states:
        if state not in finishing:
            rows = [(i, r) for i, r in enumerate(table.rows) if r.source == state]
            detail = ("it has no outgoing rows" if not rows else
                      "its rows lead only to " + ", ".join(sorted(succ[state])))
            raise TableError(f"{where}state {state!r} has no path to END ({detail}); add a row from "
                             f"{state!r} towards END.")


def _closure(start: str, edges: Mapping[str, set[str]]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen
