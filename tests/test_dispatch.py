"""The dispatcher: hook order, run-to-completion, illegal triggers, failures, and engine equivalence.

The property tests run random valid tables under random scripts through both
engines and through ``oracle`` -- an independent ten-line reading of the table
semantics written here -- and require identical hook sequences and states.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine_trainer.machine import (
    END,
    START,
    DirectDispatcher,
    IllegalTriggerError,
    LoopStuckError,
    Row,
    Table,
    TransitionsDispatcher,
)
from statemachine_trainer.machine.recording import record_hooks
from statemachine_trainer.state import Position
from statemachine_trainer.testing.strategies import CONDITIONS, HOOKS, TRIGGERS, scripts, valid_tables

ENGINES = [DirectDispatcher, TransitionsDispatcher]
BUDGET = 60


class OutOfBudget(Exception):
    """A hook was called more than BUDGET times: the script loops forever, stop it here."""


class Owner:
    """Hooks record themselves and fire scripted triggers; conditions cycle through scripted answers."""

    def __init__(self, script: dict) -> None:
        self.calls: list[str] = []
        self.script = script
        self.asked = {c: 0 for c in CONDITIONS}
        self.dispatcher = None

    def answer(self, name: str) -> bool:
        answers = self.script["answers"][name]
        self.asked[name] += 1
        return answers[(self.asked[name] - 1) % len(answers)]

    def call(self, name: str) -> None:
        if len(self.calls) >= BUDGET:
            raise OutOfBudget
        self.calls.append(name)
        for trigger in self.script["fires"][name]:
            self.dispatcher.fire(trigger)


for _h in HOOKS:
    setattr(Owner, _h, lambda self, _n=_h: self.call(_n))
for _c in CONDITIONS:
    setattr(Owner, _c, property(lambda self, _n=_c: self.answer(_n)))


def oracle(table: Table, script: dict, triggers: list[str]) -> list:
    """The table semantics, read directly: what every engine must do."""
    owner = Owner(script)
    state, queue, trace = START, [], []

    class Fire:
        def fire(self, trigger: str) -> None:
            queue.append(trigger)

    owner.dispatcher = Fire()

    def process(trigger: str) -> bool:
        nonlocal state
        rows = [r for r in table.rows if r.source == state and r.trigger == trigger]
        if not rows:
            raise IllegalTriggerError("random", state, trigger, ())
        for row in rows:
            if all(owner.answer(c) for c in row.conditions) and not any(owner.answer(u) for u in row.unless):
                for hook in row.hooks:
                    owner.call(hook)
                state = row.dest
                return True
        return False

    for trigger in triggers:
        try:
            taken = process(trigger)
            while queue:
                process(queue.pop(0))
            trace.append(("ok", taken, state))
        except (IllegalTriggerError, OutOfBudget) as exc:
            queue.clear()
            trace.append((type(exc).__name__, state))
    return [trace, owner.calls]


def run_engine(engine, table: Table, script: dict, triggers: list[str]) -> list:
    owner = Owner(script)
    owner.dispatcher = engine(table, owner, "random")
    trace = []
    for trigger in triggers:
        try:
            taken = owner.dispatcher.fire(trigger)
            trace.append(("ok", taken, owner.dispatcher.state))
        except (IllegalTriggerError, OutOfBudget) as exc:
            assert owner.dispatcher.position.row is None and not owner.dispatcher.position.queue
            trace.append((type(exc).__name__, owner.dispatcher.state))
    return [trace, owner.calls]


@given(valid_tables(), scripts(), st.lists(st.sampled_from(TRIGGERS), max_size=12))
def test_engines_fire_what_the_table_says(table, script, triggers):
    expected = oracle(table, script, triggers)
    for engine in ENGINES:
        assert run_engine(engine, table, script, triggers) == expected, engine.__name__


TRANSITION_BUDGET = 400


def _raise(exc: Exception) -> None:
    raise exc


@given(valid_tables(), scripts())
def test_run_drives_both_engines_identically(table, script):
    outcomes = []
    for engine in ENGINES:
        owner = Owner(script)
        owner.dispatcher = engine(table, owner, "random")
        # A random table may cycle forever through rows that have no hooks (so the hook budget never runs
        # out) -- e.g. A --t--> B --t--> A.  Count transition boundaries instead, the same way on both engines.
        boundaries = iter(range(TRANSITION_BUDGET))
        owner.dispatcher.observer = lambda _owner, _b=boundaries: next(_b, None) is None and _raise(OutOfBudget())
        try:
            owner.dispatcher.run((), {})
            outcome = "END"
        except (LoopStuckError, OutOfBudget, IllegalTriggerError) as exc:
            outcome = type(exc).__name__
        outcomes.append((outcome, owner.dispatcher.state, owner.calls))
    assert outcomes[0] == outcomes[1]


@given(valid_tables(), st.lists(st.sampled_from(TRIGGERS), min_size=1, max_size=8))
def test_illegal_triggers_change_nothing(table, triggers):
    owner = Owner({"answers": {c: [True] for c in CONDITIONS}, "fires": {h: [] for h in HOOKS}})
    dispatcher = DirectDispatcher(table, owner, "random")
    for trigger in triggers:
        before, calls = dispatcher.position, list(owner.calls)
        legal = any(r.source == dispatcher.state and r.trigger == trigger for r in table.rows)
        if legal:
            dispatcher.fire(trigger)
            continue
        with pytest.raises(IllegalTriggerError) as info:
            dispatcher.fire(trigger)
        assert dispatcher.position == before and owner.calls == calls
        assert info.value.state == before.state and info.value.trigger == trigger
        assert "random" in str(info.value) and repr(trigger) in str(info.value)


# -- example-based behaviour ---------------------------------------------------------------
TWO_STEP = Table(name="two", states=(START, "A", END), rows=(
    Row("go", START, "A", hooks=("first", "second")),
    Row("stop", "A", END, hooks="last"),
))


class Rec:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.dispatcher = None
        self.fail_on: str | None = None

    def _hook(self, name: str) -> str:
        self.calls.append(f"{name}@{self.dispatcher.state}")
        if name == self.fail_on:
            raise RuntimeError(f"{name} failed")
        return name

    def first(self) -> str:
        return self._hook("first")

    def second(self) -> str:
        self.dispatcher.fire("stop")  # queued: runs after this transition completes
        return self._hook("second")

    def last(self) -> str:
        return self._hook("last")


@pytest.mark.parametrize("engine", ENGINES)
def test_hooks_run_in_the_source_state_and_events_are_queued(engine):
    rec = Rec()
    rec.dispatcher = engine(TWO_STEP, rec, "two")
    assert rec.dispatcher.fire("go") is True
    # "stop" was fired inside "second" but ran only after go's transition finished (run-to-completion).
    assert rec.calls == ["first@START", "second@START", "last@A"]
    assert rec.dispatcher.state == END


@pytest.mark.parametrize("engine", ENGINES)
def test_exception_in_a_hook_leaves_the_source_state(engine):
    rec = Rec()
    rec.fail_on = "second"
    rec.dispatcher = engine(TWO_STEP, rec, "two")
    with pytest.raises(RuntimeError, match="second failed"):
        rec.dispatcher.fire("go")
    assert rec.dispatcher.position == Position(START)  # not half-way: no row, nothing queued
    rec.fail_on = None
    rec.dispatcher.fire("go")  # and it can be fired again
    assert rec.dispatcher.state == END


@pytest.mark.parametrize("engine", ENGINES)
def test_observer_sees_every_boundary_with_exact_positions(engine):
    rec = Rec()
    rec.dispatcher = engine(TWO_STEP, rec, "two")
    seen = []
    rec.dispatcher.observer = lambda owner: seen.append(rec.dispatcher.position)
    rec.dispatcher.fire("go")
    assert seen == [
        Position(START, row=0, hook=1, queue=()),  # between first and second
        Position("A", queue=("stop",)),  # go done; stop (fired by second) still queued
        Position(END),
    ]


@pytest.mark.parametrize("engine", ["direct", "transitions"])
def test_record_hooks_follows_scripted_conditions(engine):
    table = Table(states=(START, "A", END), rows=(
        Row("run", START, "A", hooks="begin"),
        Row("tick", "A", END, conditions="finished", hooks="end"),
        Row("tick", "A", "A", hooks="work"),
    ))
    hooks = record_hooks(table, {"finished": [False, False, True]}, engine=engine)
    assert hooks == ["begin", "work", "work", "end"]


def test_stuck_loop_is_reported():
    table = Table(states=(START, END), rows=(Row("run", START, END, conditions="never"),))

    class Owner2:
        never = property(lambda self: False)

    with pytest.raises(LoopStuckError, match="stuck in state START"):
        DirectDispatcher(table, Owner2(), "stuck").run((), {})


@pytest.mark.parametrize("engine", ENGINES)
def test_run_is_one_unit_so_a_trigger_fired_by_a_condition_waits_its_turn(engine):
    table = Table(states=(START, "A", END), rows=(
        Row("run", START, "A", conditions="ready", hooks="first"),
        Row("go", "A", END, hooks="last"),
        Row("stop", "A", END, hooks="stopped"),
    ))

    class Owner3:
        def __init__(self) -> None:
            self.calls: list[str] = []
            self.dispatcher = engine(table, self, "unit")

        @property
        def ready(self) -> bool:
            self.dispatcher.fire("stop")  # no row leaves START on "stop": it must wait for the transition
            return True

        def first(self) -> None:
            self.calls.append(f"first@{self.dispatcher.state}")

        def last(self) -> None:
            self.calls.append("last")

        def stopped(self) -> None:
            self.calls.append(f"stopped@{self.dispatcher.state}")

    owner = Owner3()
    owner.dispatcher.run((), {})
    assert owner.calls == ["first@START", "stopped@A"] and owner.dispatcher.state == END


def test_generated_transitions_name_the_hooks_so_a_traceback_shows_the_failing_call():
    """The direct engine runs each trigger's rows as generated code (``_codegen``): readable where it fails."""
    import traceback

    table = Table(states=(START, "A", END), rows=(
        Row("go", START, "A", hooks=("first", "result")),  # `result` is also a name of the generated code's own
        Row("stop", "A", END, hooks="last"),
    ))

    class Owner4:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def first(self) -> None:
            self.calls.append("first")

        def result(self) -> None:
            raise ValueError("result failed")

        def last(self) -> str:
            return "out"

    owner = Owner4()
    dispatcher = DirectDispatcher(table, owner, "named")
    with pytest.raises(ValueError, match="result failed") as info:
        dispatcher.fire("go")
    frames = traceback.extract_tb(info.value.__traceback__)
    generated = next(f for f in frames if f.filename.startswith("<statemachine_trainer Owner4 START --go-->"))
    assert generated.line.startswith("result_") and generated.line.endswith("()")  # renamed, and shown
    assert owner.calls == ["first"] and dispatcher.position == Position(START)  # as the rules say of a failure
