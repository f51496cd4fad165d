"""State as data: progress trackers, the converter's strictness, and state-set round trips."""

from __future__ import annotations

import enum
import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine_trainer.machine import LOOP_TABLE
from statemachine_trainer.state import (
    SCHEMA_VERSION,
    BatchProgress,
    LoopState,
    OptimizationProgress,
    Position,
    Progress,
    StateError,
    StateSet,
    dumps,
    structure_state_set,
    unstructure_state_set,
)
from statemachine_trainer.testing.strategies import positions, progresses, valid_tables

from .test_loop import Outer


@attrs.define
class FoldFields:
    fold: int = 0  # fold being trained; 0 <= fold <= k
    scores: list[float] = attrs.Factory(list)  # one score per finished fold
    best: float | None = None  # best score so far; None before the first fold ends
    tag: str = ""  # free text


fold_fields = st.builds(
    FoldFields, fold=st.integers(0, 100),
    scores=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4),
    best=st.none() | st.floats(allow_nan=False, allow_infinity=False), tag=st.text(max_size=8))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)

SCHEMA = {"fit": (Progress, FoldFields), "fit.epoch_loop": (Progress, FoldFields)}


@st.composite
def state_sets(draw) -> StateSet:
    loops = {}
    for path in SCHEMA:
        table = draw(valid_tables())
        loops[path] = LoopState(position=draw(positions(table)), progress=draw(progresses()),
                                fields=draw(fold_fields),
                                extra=draw(st.dictionaries(st.text(max_size=4), json_values, max_size=3)))
    return StateSet(loops=loops)


@given(state_sets())
def test_state_sets_round_trip_through_json(state_set):
    text = json.dumps(unstructure_state_set(state_set))
    assert structure_state_set(json.loads(text), SCHEMA) == state_set


@given(positions(LOOP_TABLE))
def test_positions_round_trip(position):
    data = unstructure_state_set(StateSet(loops={"fit": LoopState(position, Progress(), FoldFields())}))
    assert structure_state_set(data, {"fit": (Progress, FoldFields)}).loops["fit"].position == position


def _valid() -> dict:
    return unstructure_state_set(StateSet(loops={p: LoopState(Position("START"), Progress(), FoldFields())
                                                 for p in SCHEMA}))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["loops"]["fit"]["fields"].pop("fold"), r"required field missing @ \$\.loops\['fit'\]\.fields\.fold"),
    (lambda d: d["loops"]["fit"]["fields"].update(extra=1), r"extra fields found \(extra\) @ \$\.loops\['fit'\]\.fields"),
    (lambda d: d["loops"]["fit"]["fields"].update(fold="1"), r"\$\.loops\['fit'\]\.fields\.fold"),
    (lambda d: d["loops"]["fit"]["fields"].update(fold=True), r"expected int @ \$\.loops\[.fit.\]\.fields\.fold"),
    (lambda d: d["loops"]["fit.epoch_loop"]["progress"]["total"].update(ready=1.5),
     r"\$\.loops\['fit\.epoch_loop'\]\.progress\.total\.ready"),
    (lambda d: d["loops"]["fit"]["position"].update(hook=-1), r"\$\.loops\['fit'\]\.position"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), rf"schema version {SCHEMA_VERSION + 1}, but this statemachine_trainer reads"),
    (lambda d: d["loops"].pop("fit.epoch_loop"), r"\$\.loops: missing key\(s\) \['fit\.epoch_loop'\]"),
    (lambda d: d["loops"]["fit"].pop("extra"), r"\$\.loops\['fit'\]: missing key\(s\) \['extra'\]"),
    (lambda d: d["loops"].update(ghost={}), r"\$\.loops: unexpected key\(s\) \['ghost'\]"),
])
def test_bad_state_is_refused_naming_the_key_path(mutate, message):
    data = _valid()
    mutate(data)
    with pytest.raises(StateError, match=message):
        structure_state_set(data, SCHEMA)


def test_floats_accept_ints_but_ints_refuse_floats():
    data = _valid()
    data["loops"]["fit"]["fields"]["best"] = 3
    assert structure_state_set(data, SCHEMA).loops["fit"].fields.best == 3.0


def test_progress_increments_total_and_current_together():
    progress = BatchProgress()
    for _ in range(3):
        progress.increment_ready()
        progress.increment_started()
        progress.increment_processed()
        progress.increment_completed()
    progress.reset_on_run()
    progress.increment_ready()
    assert (progress.total.ready, progress.total.completed) == (4, 3)
    assert (progress.current.ready, progress.current.completed) == (1, 0)
    progress.reset()
    assert progress == BatchProgress()


def test_optimization_progress_counts_steps():
    progress = OptimizationProgress()
    progress.optimizer.step.increment_ready()
    progress.optimizer.step.increment_completed()
    progress.optimizer_position = 1
    assert progress.optimizer_steps == 1
    progress.reset_on_run()
    assert progress.optimizer_position == 0 and progress.optimizer_steps == 1


def test_dumps_is_canonical_json():
    state_set = StateSet(loops={"fit": LoopState(Position("START"), Progress(), FoldFields())})
    text = dumps(state_set)
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    assert text == dumps(structure_state_set(json.loads(text), {"fit": (Progress, FoldFields)}))


class Phase(enum.Enum):
    WARMUP = "warmup"
    TRAIN = "train"


@attrs.define
class PhaseFields:
    phase: Phase = Phase.WARMUP  # current phase; WARMUP until the warm-up steps are done


def test_enums_travel_as_their_values():
    state_set = StateSet(loops={"fit": LoopState(Position("START"), Progress(), PhaseFields(Phase.TRAIN))})
    data = unstructure_state_set(state_set)
    assert data["loops"]["fit"]["fields"] == {"phase": "train"}
    assert structure_state_set(data, {"fit": (Progress, PhaseFields)}) == state_set
    data["loops"]["fit"]["fields"]["phase"] = "cooldown"
    with pytest.raises(StateError, match=r"\$\.loops\['fit'\]\.fields\.phase"):
        structure_state_set(data, {"fit": (Progress, PhaseFields)})


@given(n=st.integers(0, 3), inner=st.integers(0, 3))
def test_every_reachable_state_set_round_trips(n, inner):
    tree = Outer(n, inner)
    seen = []
    tree.observe(lambda _: seen.append(tree.state_set()))
    tree.run()
    schema = tree.state_schema()
    for state_set in [*seen, tree.state_set()]:
        assert structure_state_set(json.loads(json.dumps(unstructure_state_set(state_set))), schema) == state_set


def test_each_progress_class_counts_with_code_of_its_own():
    """One increment body shared by three tracker types would miss Python 3.11's per-bytecode attribute cache every
    step; each class gets its own copy, which counts exactly as the shared one did."""
    from statemachine_trainer.state import BatchProgress, Progress, ReadyCompletedProgress, StartedProgress

    classes = (Progress, BatchProgress, StartedProgress, ReadyCompletedProgress)
    codes = {id(cls.increment_ready.__code__) for cls in classes}  # distinct objects (equal ones compare equal)
    assert len(codes) == len(classes)
    progress = BatchProgress()
    for name in ("increment_ready", "increment_ready", "increment_started", "increment_processed",
                 "increment_completed"):
        getattr(progress, name)()
    assert (progress.total.ready, progress.total.started, progress.total.processed, progress.total.completed) == \
        (2, 1, 1, 1) == (progress.current.ready, progress.current.started, progress.current.processed,
                         progress.current.completed)
