"""Tables are validated when they are defined, with errors that name the row and the fix."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine_trainer.machine import ADVANCE, END, START, Loop, Row, Table, TableError
from statemachine_trainer.testing.strategies import valid_tables


@given(valid_tables())
def test_valid_tables_are_accepted_and_round_trip_as_data(table):
    assert Table.from_dict(table.to_dict()) == table


def _corrupt(table: Table, kind: str) -> tuple[dict, str]:
    """A corrupted copy of ``table`` as data, and a phrase the error must contain."""
    data = table.to_dict()
    rows = data["rows"]
    if kind == "unknown_state":
        rows.append({"trigger": "go", "source": START, "dest": "NOWHERE"})
        return data, f"row {len(rows) - 1} (START -> NOWHERE: go) has unknown dest state 'NOWHERE'"
    if kind == "duplicate_state":
        data["states"].append(START)
        return data, "listed twice"
    if kind == "missing_start":
        data["states"].remove(START)
        return data, "must include START"
    if kind == "missing_end":
        data["states"].remove(END)
        return data, "must include END"
    if kind == "unreachable":
        data["states"].append("ISLAND")
        rows.append({"trigger": "go", "source": "ISLAND", "dest": END})
        return data, "'ISLAND' is unreachable from START"
    if kind == "dead_end":
        data["states"].append("TRAP")
        rows.append({"trigger": "fall", "source": START, "dest": "TRAP", "conditions": ["c0"]})
        return data, "'TRAP' has no path to END"
    if kind == "two_unconditional":
        rows.append({"trigger": "zz", "source": START, "dest": END})
        rows.append({"trigger": "zz", "source": START, "dest": END, "hooks": ["h0"]})
        return data, f"row {len(rows) - 1} (START -> END: zz / h0) is a second unconditional row"
    if kind == "restarting_listed":
        data["states"].append("RESTARTING")
        return data, "RESTARTING is implied"
    raise AssertionError(kind)


KINDS = ["unknown_state", "duplicate_state", "missing_start", "missing_end", "unreachable", "dead_end",
         "two_unconditional", "restarting_listed"]


@given(valid_tables(), st.sampled_from(KINDS))
def test_invalid_tables_are_rejected_naming_the_problem(table, kind):
    data, phrase = _corrupt(table, kind)
    with pytest.raises(TableError) as info:
        Table.from_dict(data)
    assert phrase in str(info.value)
    assert isinstance(info.value, ValueError)


def test_shadowed_row_is_rejected():
    with pytest.raises(TableError, match=r"row 1 .* is a row that can never fire: row 0 .* has no conditions"):
        Table(states=(START, END), rows=(Row("run", START, END), Row("run", START, END, conditions="x")))


def test_row_leaving_end_is_rejected():
    with pytest.raises(TableError, match="leaves END"):
        Table(states=(START, END), rows=(Row("run", START, END), Row("again", END, START)))


def test_bad_identifiers_are_rejected():
    with pytest.raises(TableError, match="not a valid Python identifier"):
        Row("not a trigger", START, END)
    with pytest.raises(TableError, match="hook or condition name 'class'"):
        Table(states=(START, END), rows=(Row("run", START, END, hooks="class"),))


def test_unreachable_state_message_says_how_to_fix():
    with pytest.raises(TableError) as info:
        Table(name="u", states=(START, ADVANCE, "LOST", END),
              rows=(Row("run", START, ADVANCE), Row("advance", ADVANCE, END), Row("go", "LOST", END)))
    assert "state 'LOST' is unreachable from START (rows into it come from no state)" in str(info.value)
    assert "add a row from a reachable state into 'LOST'" in str(info.value)


# -- names are checked when a loop class is defined ----------------------------------------
GOOD = Table(name="good", states=(START, "TRAIN", END), rows=(
    Row("run", START, "TRAIN", hooks="setup"),
    Row("step", "TRAIN", END, conditions="finished"),
    Row("step", "TRAIN", "TRAIN", hooks="train"),
))


def test_unknown_hook_name_is_rejected_at_class_definition():
    with pytest.raises(TableError) as info:
        class Typo(Loop):
            table = GOOD
            finished = property(lambda self: True)

            def setup(self): ...

            def trian(self): ...  # the typo

    message = str(info.value)
    assert "Typo: row 2 (TRAIN -> TRAIN: step / train) names hook 'train'" in message
    assert "define `def train(self): ...`" in message


def test_unknown_condition_name_is_rejected_at_class_definition():
    with pytest.raises(TableError, match=r"row 1 \(TRAIN -> END: step \[finished\]\) names condition 'finished'"):
        class NoCondition(Loop):
            table = GOOD

            def setup(self): ...

            def train(self): ...


def test_abstract_hooks_of_the_default_table_must_be_implemented():
    with pytest.raises(TableError, match="names hook 'advance', which Lazy must implement"):
        class Lazy(Loop):
            done = property(lambda self: True)


def test_abstract_classes_may_defer_the_check():
    class Base(Loop, abstract=True):
        pass

    class Concrete(Base):
        done = property(lambda self: True)

        def advance(self): ...

    assert Concrete().run() is None


def test_fields_class_must_be_attrs():
    with pytest.raises(TypeError, match="fields_class must be an attrs class"):
        class Bad(Loop):
            fields_class = dict
            done = property(lambda self: True)

            def advance(self): ...

    @attrs.define
    class Fine:
        x: int = 0

    class Good(Loop):
        fields_class = Fine
        done = property(lambda self: True)

        def advance(self): ...

    assert Good().fields == Fine()
