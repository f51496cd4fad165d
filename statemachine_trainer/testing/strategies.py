"""Hypothesis strategies for tables, transition points and state -- ours, and for your own tests.

- :func:`valid_tables` -- random tables that pass ``Table`` validation
  (reachable states, a path to END, one unguarded row per trigger and
  source), over the hooks :data:`HOOKS`, conditions :data:`CONDITIONS` and
  triggers :data:`TRIGGERS`;
- :func:`scripts` -- how a drawn table's conditions answer and which
  triggers its hooks fire, to run it with recording hooks;
- :func:`positions` -- legal positions (transition points) of a given
  table: between transitions, or inside a row at a hook -- what a
  checkpoint may record;
- :func:`progresses` -- progress trackers with arbitrary counts.
"""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from ..machine import ADVANCE, END, START, Row, Table
from ..state import Position, Progress

__all__ = ["CONDITIONS", "HOOKS", "TRIGGERS", "positions", "progresses", "scripts", "valid_tables"]

TRIGGERS = ("go", "step", "stop")
HOOKS = ("h0", "h1", "h2", "h3")
CONDITIONS = ("c0", "c1", "c2")


def _row(draw, source: str, dest: str) -> Row:
    return Row(
        trigger=draw(st.sampled_from(TRIGGERS)), source=source, dest=dest,
        hooks=draw(st.lists(st.sampled_from(HOOKS), max_size=3)),
        conditions=draw(st.lists(st.sampled_from(CONDITIONS), max_size=2, unique=True)),
        unless=draw(st.lists(st.sampled_from(CONDITIONS), max_size=1)),
    )


def _only_last_unguarded(rows: list[Row]) -> list[Row]:
    """Give every unguarded row a condition unless it is the last of its (trigger, source) group."""
    last = {}
    for i, row in enumerate(rows):
        last[(row.trigger, row.source)] = i
    return [row if row.guarded or last[(row.trigger, row.source)] == i
            else attrs.evolve(row, conditions=("c0",)) for i, row in enumerate(rows)]


@st.composite
def valid_tables(draw) -> Table:
    """A random valid table of 2-5 states."""
    middle = draw(st.lists(st.sampled_from((ADVANCE, "S1", "S2", "S3")), max_size=3, unique=True))
    states = [START, *middle, END]
    rows = []
    # Reachability: each middle state gets a row from some state before it.
    for k, state in enumerate(middle):
        rows.append(_row(draw, draw(st.sampled_from([START, *middle[:k]])), state))
    # A path to END: each state leads to a later state or END.
    for k, state in enumerate([START, *middle]):
        rows.append(_row(draw, state, draw(st.sampled_from([*middle[k:], END]))))
    for _ in range(draw(st.integers(0, 4))):
        rows.append(_row(draw, draw(st.sampled_from(states[:-1])), draw(st.sampled_from(states))))
    rows = draw(st.permutations(rows))
    return Table(states=states, rows=_only_last_unguarded(list(rows)), name="random")


@st.composite
def scripts(draw) -> dict:
    """Condition answers (cycled) and the triggers each hook fires when called."""
    return {
        "answers": {c: draw(st.lists(st.booleans(), min_size=1, max_size=6)) for c in CONDITIONS},
        "fires": {h: draw(st.lists(st.sampled_from(TRIGGERS), max_size=1)) for h in HOOKS},
    }


def progresses() -> st.SearchStrategy[Progress]:
    """Progress trackers with arbitrary total and current counts."""
    counts = st.integers(0, 10**6)
    tracker = st.fixed_dictionaries({k: counts for k in ("ready", "started", "processed", "completed")})
    return st.builds(lambda t, c: _progress(t, c), tracker, tracker)


def _progress(total: dict, current: dict) -> Progress:
    progress = Progress()
    for key, value in total.items():
        setattr(progress.total, key, value)
    for key, value in current.items():
        setattr(progress.current, key, value)
    return progress


def positions(table: Table) -> st.SearchStrategy[Position]:
    """Positions that are legal for ``table``: between transitions, or inside a row at a hook."""
    between = st.builds(Position, st.sampled_from([s for s in table.states]),
                        queue=st.lists(st.sampled_from(table.triggers), max_size=2))
    inside = st.sampled_from(list(enumerate(table.rows))).flatmap(
        lambda ir: st.builds(Position, st.just(ir[1].source), st.just(ir[0]), st.integers(0, len(ir[1].hooks)),
                             st.lists(st.sampled_from(table.triggers), max_size=2)))
    return st.one_of(between, inside)
