"""The Loop API: Lightning-style subclasses, table-defined loops, trees, and resume from any boundary."""

from __future__ import annotations

import json
import subprocess
import sys

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine_trainer import ADVANCE, END, START, Loop, Row, StateError, Table
from statemachine_trainer.machine import RESTARTING, FinishedRunWarning


@attrs.define
class Counter:
    i: int = 0  # advances done in the current run; 0 <= i <= n
    trace: list[str] = attrs.Factory(list)  # every hook call, in order, across runs


class Recorded(Loop):
    """A Lightning 1.5-style loop overriding every hook."""

    fields_class = Counter

    def __init__(self, n: int = 2) -> None:
        super().__init__()
        self.n = n
        self.skip_next = False

    def _log(self, name: str) -> None:
        self.fields.trace.append(name)

    @property
    def skip(self) -> bool:
        return self.skip_next

    @property
    def done(self) -> bool:
        return self.fields.i >= self.n

    def on_skip(self) -> str:
        self._log("on_skip")
        return "skipped"

    def reset(self) -> None:
        self._log("reset")
        self.fields.i = 0

    def on_run_start(self, *args, **kwargs) -> None:
        self._log(f"on_run_start{args}{sorted(kwargs.items())}")

    def on_advance_start(self, *args, **kwargs) -> None:
        self._log("on_advance_start")

    def advance(self, *args, **kwargs) -> None:
        self._log(f"advance{args}")
        self.fields.i += 1

    def on_advance_end(self) -> None:
        self._log("on_advance_end")

    def on_run_end(self) -> str:
        self._log("on_run_end")
        return f"ran {self.fields.i}"


def test_lightning_style_subclass_runs_hooks_in_order():
    loop = Recorded(n=2)
    assert loop.run(7, key="v") == "ran 2"
    assert loop.fields.trace == [
        "reset", "on_run_start(7,)[('key', 'v')]",
        "on_advance_start", "advance(7,)", "on_advance_end",
        "on_advance_start", "advance(7,)", "on_advance_end",
        "on_run_end",
    ]
    assert loop.state == END


def test_run_again_starts_a_new_run_and_skip_short_circuits():
    loop = Recorded(n=1)
    loop.run()
    loop.run()
    assert loop.fields.trace.count("reset") == 2
    loop.skip_next = True
    assert loop.run() == "skipped"
    assert loop.fields.trace[-1] == "on_skip"


def test_only_overridden_hooks_are_dispatched():
    class Minimal(Loop):
        done = property(lambda self: True)

        def advance(self) -> None: ...

    rows = Minimal()._machine.rows
    assert [len(b.hooks) for b in rows] == [0, 0, 0, 1]  # only `advance` is kept
    assert len(Recorded()._machine.rows[3].hooks) == 3


# -- a table-defined loop with states of its own --------------------------------------------
LABELLING = Table(name="Labelling", states=(START, "TRAIN", "LABEL", END), rows=(
    Row("run", START, "TRAIN", hooks="reset"),
    Row("next", "TRAIN", END, conditions="pool_empty", hooks="finish"),
    Row("next", "TRAIN", "LABEL", hooks="train"),
    Row("next", "LABEL", "TRAIN", hooks="label"),
    Row("abort", "TRAIN", END, hooks="finish"),
    Row("abort", "LABEL", END, hooks="finish"),
))


@attrs.define
class PoolFields:
    pool: list[int] = attrs.Factory(lambda: list(range(7)))  # unlabelled items; shrinks by 2 per round
    labelled: list[int] = attrs.Factory(list)  # labelled items, in labelling order
    rounds: int = 0  # completed train->label rounds


class Labelling(Loop):
    table = LABELLING
    fields_class = PoolFields

    def __init__(self, abort_after: int | None = None) -> None:
        super().__init__()
        self.abort_after = abort_after

    @property
    def pool_empty(self) -> bool:
        return not self.fields.pool

    def reset(self) -> None:
        self.fields = PoolFields()

    def train(self) -> None:
        self.fields.rounds += 1
        if self.abort_after is not None and self.fields.rounds >= self.abort_after:
            self.fire("abort")  # queued: the LABEL transition completes first

    def label(self) -> None:
        self.fields.labelled += self.fields.pool[:2]
        del self.fields.pool[:2]

    def finish(self) -> int:
        return len(self.fields.labelled)


def test_table_defined_loop_with_custom_states_and_events():
    assert Labelling().run() == 7
    loop = Labelling(abort_after=2)
    assert loop.run() == 2  # aborted from LABEL after the second round's training
    assert loop.fields.rounds == 2


# -- trees -----------------------------------------------------------------------------------
class Inner(Loop):
    fields_class = Counter

    def __init__(self, n: int = 2) -> None:
        super().__init__()
        self.n = n

    @property
    def done(self) -> bool:
        return self.fields.i >= self.n

    def reset(self) -> None:
        self.fields.i = 0

    def advance(self, outer: int) -> None:
        self.fields.i += 1
        self.fields.trace.append(f"{outer}.{self.fields.i}")


class Outer(Loop):
    fields_class = Counter

    def __init__(self, n: int = 3, inner: int = 2) -> None:
        super().__init__()
        self.n = n
        self.inner = Inner(inner)

    @property
    def done(self) -> bool:
        return self.fields.i >= self.n

    def reset(self) -> None:
        self.fields.i = 0

    def on_advance_start(self) -> None:
        self.fields.trace.append("start")

    def advance(self) -> None:
        self.inner.run(self.fields.i)  # a hook that runs a child does nothing else (it is re-entered on resume)

    def on_advance_end(self) -> None:
        self.fields.i += 1

    def on_save_checkpoint(self) -> dict:
        return {"note": f"outer at {self.fields.i}"}

    def on_load_checkpoint(self, state: dict) -> None:
        self.loaded_note = state.get("note")


def test_walk_children_and_active_path():
    outer = Outer()
    assert [path for path, _ in outer.walk()] == ["outer", "outer.inner"]
    seen = []
    outer.observe(lambda loop: seen.append(outer.active_path()))
    outer.run()
    assert ("outer.ADVANCE(row 3, hook 1)", "outer.inner.ADVANCE") in seen


def observed(root: Loop) -> list[str]:
    """Observe ``root``'s tree; the list fills with ``name.position`` at every boundary."""
    seen: list[str] = []
    root.observe(lambda loop: seen.append(f"{loop.name}.{loop.position}"))
    return seen


@pytest.mark.parametrize("engine", ["direct", "transitions"])
def test_the_end_of_a_run_is_a_boundary_of_the_observed_root_only(engine):
    Outer.engine = Inner.engine = engine
    try:
        alone, outer = Inner(2), Outer(n=1, inner=2)
    finally:
        Outer.engine = Inner.engine = "direct"
    seen = observed(alone)
    alone.run(0)
    assert seen == ["inner.ADVANCE"] * 3 + ["inner.END"]  # the root of its own tree: its END is a boundary
    seen = observed(outer)
    outer.run()
    assert seen == [
        "outer.ADVANCE", "outer.ADVANCE(row 3, hook 1)",
        "inner.ADVANCE", "inner.ADVANCE", "inner.ADVANCE",  # the same class as a child: no END boundary, since
        "outer.ADVANCE(row 3, hook 2)",  # a resume from there would re-enter outer's advance and rerun the child
        "outer.ADVANCE", "outer.END",
    ]


class Host(Loop):
    """Runs a loop that is not its sub-loop (``_guest``) in its hook, as a loop that calls Trainer.fit does."""

    table = Table(states=(START, END), rows=(Row("run", START, END, hooks="advance"),))

    def __init__(self, guest: Loop) -> None:
        super().__init__()
        self._guest = guest  # private: not a sub-loop, so not part of this loop's tree

    def advance(self) -> None:
        self._guest.run(0)


def test_nesting_follows_the_observed_tree_not_the_call_stack():
    outer = Outer(n=1, inner=2)
    seen = observed(outer)
    outer.connect(inner=Inner(1))  # connected into an observed tree: a sub-loop like the one it replaced
    outer.run()
    assert "inner.ADVANCE" in seen and "inner.END" not in seen and seen[-1] == "outer.END"
    seen = observed(outer.inner)  # the same instance, now the root of the observed tree
    outer.inner.run(0)
    assert seen[-1] == "inner.END"
    guest = Inner(1)
    host, guest_seen = Host(guest), observed(guest)
    host_seen = observed(host)
    host.run()  # guest runs inside host's hook, but it is the root of its own observed tree
    assert guest_seen == ["inner.ADVANCE", "inner.ADVANCE", "inner.END"]
    assert host_seen == ["host.END"]


def test_connect_swaps_a_sub_loop_and_rejects_unknown_names():
    outer = Outer()
    new = Inner(5)
    outer.connect(inner=new)
    assert outer.inner is new
    outer.run()
    assert new.fields.i == 5
    with pytest.raises(AttributeError, match="has no sub-loop named 'epoch_loop'"):
        outer.connect(epoch_loop=Inner())
    with pytest.raises(TypeError, match="needs a Loop instance"):
        outer.connect(inner=Inner)


class LoudInner(Inner):
    def advance(self, outer: int) -> None:
        super().advance(outer)
        self.fields.trace.append("loud")


class WrongSignature(Inner):
    def __init__(self, n: int, extra: str) -> None:
        super().__init__(n)


def test_replace_builds_the_class_with_the_old_arguments():
    outer = Outer(n=1, inner=4)
    outer.replace(inner=LoudInner)
    assert isinstance(outer.inner, LoudInner) and outer.inner.n == 4
    outer.run()
    assert outer.inner.fields.trace.count("loud") == 4


def test_replace_rejects_a_different_signature():
    with pytest.raises(TypeError) as info:
        Outer().replace(inner=WrongSignature)
    assert "same parameters as Inner.__init__ (n), but it takes (n, extra)" in str(info.value)


def test_trainer_style_attribute_assignment_is_part_of_the_tree():
    outer = Outer()
    outer.inner = LoudInner(1)
    assert isinstance(dict(outer.walk())["outer.inner"], LoudInner)


# -- state and resume ----------------------------------------------------------------------
def final_state(loop: Loop) -> str:
    return json.dumps(loop.state_dict(), sort_keys=True)


def boundaries_of(make, engine: str) -> tuple[list[dict], str]:
    """Every state set seen at a transition boundary of an uninterrupted run, and its final state."""
    loop = make(engine)
    snaps: list[dict] = []
    loop.observe(lambda _: snaps.append(json.loads(json.dumps(loop.state_dict()))))
    loop.run()
    return snaps, final_state(loop)


def make_outer(engine: str, n: int = 3, inner: int = 2) -> Outer:
    Outer.engine = Inner.engine = engine
    try:
        return Outer(n, inner)
    finally:
        Outer.engine = Inner.engine = "direct"


@pytest.mark.filterwarnings("ignore::statemachine_trainer.machine.FinishedRunWarning")  # the last boundary is END
@pytest.mark.parametrize("engine", ["direct", "transitions"])
def test_resume_from_every_boundary_matches_the_uninterrupted_run(engine):
    snaps, want = boundaries_of(lambda e: make_outer(e), engine)
    assert len(snaps) > 10
    for snap in snaps:
        loop = make_outer(engine)
        loop.load_state_dict(snap)
        loop.run()
        assert final_state(loop) == want, snap


@pytest.mark.filterwarnings("ignore::statemachine_trainer.machine.FinishedRunWarning")  # a cut may fall at END
@given(n=st.integers(0, 3), inner=st.integers(0, 3), cut=st.integers(0, 60),
       engine=st.sampled_from(["direct", "transitions"]))
def test_interrupt_anywhere_then_resume_is_exact(n, inner, cut, engine):
    snaps, want = boundaries_of(lambda e: make_outer(e, n, inner), engine)
    if not snaps:
        return
    loop = make_outer(engine, n, inner)
    loop.load_state_dict(snaps[cut % len(snaps)])
    loop.run()
    assert final_state(loop) == want


@pytest.mark.parametrize("engine", ["direct", "transitions"])
def test_between_transitions_says_what_the_position_says_at_every_boundary(engine):
    """The cheap read the DDP preemption vote makes at every boundary agrees with the position, loop by loop."""
    outer, seen = make_outer(engine), []
    outer.observe(lambda _: seen.extend((node.between_transitions, node.position.row is None)
                                        for _, node in outer.walk()))
    outer.run()
    assert seen and all(cheap == exact for cheap, exact in seen)
    assert {exact for _, exact in seen} == {True, False}  # both cases were seen


def _saved_between_two_transitions(snap: dict) -> bool:
    """The innermost loop under way in ``snap`` stood between two of its transitions, nothing queued."""
    under_way = [p for _, p in sorted((name.count("."), loop["position"]) for name, loop in snap["loops"].items())
                 if p["row"] is not None or p["queue"] or p["state"] not in (START, END)]
    return bool(under_way) and under_way[-1]["row"] is None and not under_way[-1]["queue"]


@pytest.mark.parametrize("engine", ["direct", "transitions"])
def test_a_run_resumed_between_two_transitions_meets_that_boundary_first(engine):
    """Its first boundary is the saved one, so a checkpoint asked for while resuming holds the state loaded.

    (Before, the resumed loop took its next transition -- in a Trainer, a whole batch -- before an observer could
    act: a preemption or a request in ``on_train_start`` of a resumed fit was written one step late.)
    """
    snaps, _ = boundaries_of(lambda e: make_outer(e), engine)
    between = [snap for snap in snaps if _saved_between_two_transitions(snap)]
    assert any(snap["loops"]["outer"]["position"]["row"] is not None for snap in between)  # an inner loop's too
    for snap in between:
        loop, first = make_outer(engine), []
        loop.load_state_dict(snap)
        loop.observe(lambda _, loop=loop, first=first: first.append(json.loads(json.dumps(loop.state_dict()))))
        loop.run()
        assert first[0] == snap


def test_restarting_and_on_restart():
    events = []

    class Watch(Inner):
        def on_restart(self) -> None:
            events.append(("on_restart", self.restarting, self.state))

        def advance(self, outer: int) -> None:
            events.append(("advance", self.restarting))
            super().advance(outer)

    loop, snaps = Watch(3), []
    loop.observe(lambda _: snaps.append(loop.state_dict()))
    loop.run(0)
    mid = next(s for s in snaps if s["loops"]["watch"]["position"]["state"] == "ADVANCE")
    resumed = Watch(3)
    resumed.load_state_dict(mid)
    assert resumed.state == RESTARTING and resumed.restarting
    events.clear()
    resumed.run(0)
    assert events[0] == ("on_restart", True, RESTARTING)
    assert events[1] == ("advance", False)  # the resumed transition had completed before this one
    assert not resumed.restarting


def test_checkpoint_hooks_round_trip_extra_state():
    outer = Outer()
    outer.run()
    state = outer.state_dict()
    assert state["loops"]["outer"]["extra"] == {"note": "outer at 3"}
    fresh = Outer()
    fresh.load_state_dict(state)
    assert fresh.loaded_note == "outer at 3"


def test_state_that_does_not_fit_the_tree_is_refused_before_anything_changes():
    outer = Outer()
    state = outer.state_dict()
    state["loops"]["outer.inner"]["fields"]["i"] = "three"
    fresh = Outer()
    fresh.fields.i = 99
    with pytest.raises(StateError, match=r"\$\.loops\['outer\.inner'\]\.fields\.i"):
        fresh.load_state_dict(state)
    assert fresh.fields.i == 99  # nothing was applied
    state = outer.state_dict()
    del state["loops"]["outer.inner"]
    with pytest.raises(StateError, match=r"missing key\(s\) \['outer\.inner'\]"):
        fresh.load_state_dict(state)


def test_a_position_from_another_table_is_refused():
    state = Outer().state_dict()
    state["loops"]["outer"]["position"] = {"state": "TRAIN", "row": None, "hook": 0, "queue": []}
    with pytest.raises(StateError, match="'TRAIN' is not a state of Outer's table"):
        Outer().load_state_dict(state)
    state["loops"]["outer"]["position"] = {"state": "ADVANCE", "row": 1, "hook": 0, "queue": []}
    with pytest.raises(StateError, match="row 1 is not a transition out of ADVANCE"):
        Outer().load_state_dict(state)


def test_non_json_extra_state_is_refused_with_its_path():
    class Bad(Outer):
        def on_save_checkpoint(self) -> dict:
            return {"ok": [1, 2], "bad": {"obj": object()}}

    with pytest.raises(StateError, match=r"\$\.loops\['bad'\]\.extra\['bad'\]\['obj'\]: object is not JSON-able"):
        Bad().state_dict()


def test_exception_in_a_child_leaves_every_loop_in_a_defined_state():
    class Boom(Inner):
        def advance(self, outer: int) -> None:
            if self.fields.i == 1:
                raise KeyError("boom")
            super().advance(outer)

    outer = Outer()
    outer.inner = Boom(3)
    with pytest.raises(KeyError):
        outer.run()
    assert outer.position.row is None and outer.state == "ADVANCE"
    assert outer.inner.position.row is None and outer.inner.state == "ADVANCE"


def test_machine_core_imports_no_torch():
    code = ("import sys, statemachine_trainer, statemachine_trainer.machine, statemachine_trainer.state, "
            "statemachine_trainer.machine.diagram, statemachine_trainer.machine.recording; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_start_and_end_positions_need_no_restart():
    loop = Recorded()
    loop.run()
    fresh = Recorded()
    fresh.load_state_dict(loop.state_dict())
    assert fresh.state == END and not fresh.restarting
    with pytest.warns(FinishedRunWarning, match="loaded from a checkpoint of a run that had ended"):
        assert fresh.run() is None  # a finished run stays finished: resuming it does nothing, and says so
    assert fresh.fields.trace == loop.fields.trace
    assert fresh.run() == "ran 2"  # and a later run() starts a new run
    assert fresh.position.state == END and START in fresh.table.states


def test_teardown_reaches_every_sub_loop():
    torn = []

    class Tracked(Inner):
        def teardown(self) -> None:
            torn.append(self.n)
            super().teardown()

    outer = Outer()
    outer.inner = Tracked(4)
    outer.teardown()
    assert torn == [4]


@pytest.mark.parametrize("engine", ["direct", "transitions"])
def test_skip_hooks_leaves_hooks_out_between_runs_and_positions_keep_table_indices(engine):
    calls = []

    class Three(Loop):
        table = Table(states=(START, ADVANCE, END), rows=(
            Row("run", START, ADVANCE, hooks="reset"),
            Row("advance", ADVANCE, END, conditions="done"),
            Row("advance", ADVANCE, ADVANCE, hooks=("first", "second", "third")),
        ))

        def reset(self):
            self.progress.reset_on_run()

        @property
        def done(self):
            return self.progress.current.completed == 1

        def first(self):
            calls.append("first")

        def second(self):
            calls.append("second")

        def third(self):
            calls.append("third")
            self.progress.increment_completed()

    Three.engine = engine
    loop = Three()
    positions = []
    loop.observe(lambda _: positions.append(loop.position))
    loop.skip_hooks({"second"})
    loop.run()
    assert calls == ["first", "third"]
    assert [p.hook for p in positions if p.row == 2] == [1]  # the boundary after `first`: table index 1 is next
    loop.skip_hooks(())
    calls.clear()
    loop.run()
    assert calls == ["first", "second", "third"]
    with pytest.raises(ValueError, match="'fourth'"):
        loop.skip_hooks({"fourth"})

    def skip_while_running():
        loop.skip_hooks({"first"})

    loop.second = skip_while_running
    loop.skip_hooks(())  # rebinds to the instance attribute
    with pytest.raises(RuntimeError, match="between runs"):
        loop.run()
