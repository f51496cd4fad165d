"""The behavioural contract in ``specs/``, and the checks that keep the code to it.

``specs/loops/<Name>.json`` holds each built-in loop's table and its hook-order
scenarios (scripted condition outcomes -> the exact hooks fired);
``specs/state_schema.json`` holds the shape of the state set and of every state
class.  Tables and schema can be regenerated from the code (``--write``); the
scenarios are written by hand, because they are the promise the code keeps.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import attrs

from .machine import Loop, Table
from .machine.recording import record_hooks
from .state import SCHEMA_VERSION, LoopState, Position, StateSet

__all__ = ["BUILTIN_LOOPS", "check_specs", "default_specs_dir", "state_schema", "table_spec", "write_specs"]


def _builtin_loops() -> dict[str, type[Loop]]:
    from ._entry import EntryLoop, FitEntryLoop
    from .loops import (
        BatchLoop,
        EvaluationLoop,
        FitLoop,
        GeneratorLoop,
        ManualLoop,
        OptimizerLoop,
        PredictionLoop,
        TrainingEpochLoop,
    )

    classes: list[type[Loop]] = [Loop, FitLoop, TrainingEpochLoop, BatchLoop, OptimizerLoop, GeneratorLoop,
                                 ManualLoop, EvaluationLoop, PredictionLoop, FitEntryLoop, EntryLoop]
    return {cls.__name__: cls for cls in classes}


#: Every loop class the library ships, by spec file name.
BUILTIN_LOOPS: dict[str, type[Loop]] = _builtin_loops()


def default_specs_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "specs"


def table_spec(table: Table) -> dict[str, Any]:
    return table.to_dict()


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _collect(cls: type, out: dict[str, Any]) -> None:
    if cls.__name__ in out:
        return
    attrs.resolve_types(cls)
    fields = {}
    out[cls.__name__] = fields
    for field in attrs.fields(cls):
        fields[field.name] = _type_name(field.type)
        for tp in (field.type, *typing.get_args(field.type)):
            if isinstance(tp, type) and attrs.has(tp):
                _collect(tp, out)


def state_schema(loops: dict[str, type[Loop]] | None = None) -> dict[str, Any]:
    """The state set's shape, and every class a built-in loop's state is made of."""
    loops = BUILTIN_LOOPS if loops is None else loops
    classes: dict[str, Any] = {}
    for cls in (StateSet, LoopState, Position):
        _collect(cls, classes)
    per_loop = {}
    for name, loop_cls in loops.items():
        if not loop_cls.checkpointed:  # the entry loops: never in a state set
            continue
        _collect(loop_cls.progress_class, classes)
        _collect(loop_cls.fields_class, classes)
        per_loop[name] = {"progress": loop_cls.progress_class.__name__, "fields": loop_cls.fields_class.__name__}
    return {"schema_version": SCHEMA_VERSION, "loops": per_loop, "classes": dict(sorted(classes.items()))}


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def write_specs(specs_dir: Path | None = None) -> None:
    """Regenerate tables and schema from the code, keeping the hand-written scenarios."""
    specs_dir = Path(specs_dir or default_specs_dir())
    (specs_dir / "loops").mkdir(parents=True, exist_ok=True)
    for name, cls in BUILTIN_LOOPS.items():
        path = specs_dir / "loops" / f"{name}.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(_dump({"table": table_spec(cls.table), "hook_order": old.get("hook_order", [])}))
    (specs_dir / "state_schema.json").write_text(_dump(state_schema()))


def check_specs(specs_dir: Path | None = None) -> list[str]:
    """Every way the code differs from ``specs/``; empty when they agree."""
    specs_dir = Path(specs_dir or default_specs_dir())
    problems = []
    files = {p.stem for p in (specs_dir / "loops").glob("*.json")}
    for name in sorted(files ^ set(BUILTIN_LOOPS)):
        problems.append(f"loops/{name}.json: " + ("no such built-in loop" if name in files else "spec missing"))
    for name in sorted(files & set(BUILTIN_LOOPS)):
        spec = json.loads((specs_dir / "loops" / f"{name}.json").read_text())
        table = BUILTIN_LOOPS[name].table
        if spec.get("table") != table_spec(table):
            problems.append(f"loops/{name}.json: table differs from {name}.table")
        if not spec.get("hook_order"):
            problems.append(f"loops/{name}.json: no hook_order scenarios")
        for scenario in spec.get("hook_order", []):
            for engine in ("direct", "transitions"):
                got = record_hooks(table, scenario["conditions"], engine=engine)
                if got != scenario["hooks"]:
                    problems.append(f"loops/{name}.json: scenario {scenario['name']!r} on the {engine} engine "
                                    f"fired {got}, spec says {scenario['hooks']}")
    schema_path = specs_dir / "state_schema.json"
    if not schema_path.exists() or json.loads(schema_path.read_text()) != state_schema():
        problems.append("state_schema.json: differs from the state classes in the code")
    return problems
