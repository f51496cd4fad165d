"""The state set and the one converter that turns it into JSON-able data and back.

The library owns its ``cattrs.Converter`` (cattrs advises against the global
one): extra keys are errors, primitives are structured strictly (``"3"`` is
not an int, ``True`` is not a number), enums travel as their values, and every
state set carries ``schema_version``.  Errors name the full key path, e.g.
``$.loops['fit.epoch_loop'].fields.fold``, and say how to fix it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError
from cattrs.gen import make_dict_structure_fn

from ._position import Position

__all__ = [
    "SCHEMA_VERSION",
    "LoopState",
    "StateError",
    "StateSet",
    "check_json",
    "converter",
    "structure_state_set",
    "unstructure_state_set",
]

#: Bump when the shape of the state set changes; loading another version is refused.
#: 2: the step hooks, FETCH rows and stop rows re-indexed the optimization, epoch and evaluation tables (a saved
#: row index means another hook now), and evaluation fields hold per-dataloader positions and module modes.
SCHEMA_VERSION = 2


class StateError(ValueError):
    """Saved state does not fit the loop tree it is loaded into.  The message names the key path."""


def _strict(kind: type, accept: tuple[type, ...], convert: Any = None):
    def structure(value: Any, _: type) -> Any:
        if isinstance(value, bool) and kind is not bool or not isinstance(value, accept):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return convert(value) if convert else value

    return structure


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected float, got {type(value).__name__} {value!r}")
    return float(value)


def _all_keys_required(conv: cattrs.Converter):
    """attrs classes structure only from complete data: a missing key is an error even if it has a default.

    A default would silently paper over a state saved by different code, which
    is exactly what loading must refuse.
    """

    def factory(cls: type) -> Any:
        inner = make_dict_structure_fn(cls, conv)
        fields = attrs.fields(cls)

        def structure(value: Any, _: type) -> Any:
            if isinstance(value, Mapping):
                missing = []
                for field in fields:
                    if field.init and field.name not in value:
                        err = KeyError(field.name)
                        err.__notes__ = [AttributeValidationNote(  # the note cattrs' error paths are built from
                            f"Structuring class {cls.__qualname__} @ attribute {field.name}", field.name, field.type)]
                        missing.append(err)
                if missing:
                    raise ClassValidationError(f"While structuring {cls.__name__}", missing, cls)
            return inner(value, cls)

        return structure

    return factory


def make_converter() -> cattrs.Converter:
    """A fresh converter with the library's rules; ``converter`` is the shared instance."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook_factory(attrs.has, _all_keys_required(conv))
    conv.register_structure_hook(int, _strict(int, (int,)))
    conv.register_structure_hook(bool, _strict(bool, (bool,)))
    conv.register_structure_hook(str, _strict(str, (str,)))
    conv.register_structure_hook(float, _structure_float)
    return conv


#: The library's converter.  Register hooks for your own field types on it.
converter = make_converter()


@attrs.define
class LoopState:
    """One loop's part of the state set."""

    position: Position  # where the loop's machine is (state, transition under way, queued triggers)
    progress: Any  # an instance of the loop's ``progress_class``
    fields: Any  # an instance of the loop's ``fields_class``: its own state, documented there
    extra: dict[str, Any] = attrs.Factory(dict)  # JSON-able data from the loop's on_save_checkpoint()

    def copy(self) -> LoopState:
        return LoopState(self.position, copy.deepcopy(self.progress), copy.deepcopy(self.fields),
                         copy.deepcopy(self.extra))


@attrs.define
class StateSet:
    """Where the whole loop tree is: one :class:`LoopState` per loop, keyed by tree path."""

    loops: dict[str, LoopState]  # e.g. {"fit": ..., "fit.epoch_loop": ...}; parents before children
    schema_version: int = SCHEMA_VERSION  # the shape of this data; see SCHEMA_VERSION


#: What a loop tree expects to load: per path, its progress and fields classes.
Schema = Mapping[str, tuple[type, type]]


def unstructure_state_set(state_set: StateSet) -> dict[str, Any]:
    """The state set as JSON-able dicts and lists."""
    return {
        "schema_version": state_set.schema_version,
        "loops": {
            path: {
                "position": converter.unstructure(ls.position),
                "progress": converter.unstructure(ls.progress, unstructure_as=type(ls.progress)),
                "fields": converter.unstructure(ls.fields, unstructure_as=type(ls.fields)),
                "extra": copy.deepcopy(ls.extra),
            }
            for path, ls in state_set.loops.items()
        },
    }


def _keys(data: Any, expected: set[str], path: str) -> None:
    if not isinstance(data, Mapping):
        raise StateError(f"{path}: expected a mapping with keys {sorted(expected)}, got {type(data).__name__}.")
    missing, extra = expected - set(data), set(data) - expected
    if missing:
        raise StateError(f"{path}: missing key(s) {sorted(missing)}; the state was saved by another version "
                         "or edited by hand. Load a state saved by this loop tree.")
    if extra:
        raise StateError(f"{path}: unexpected key(s) {sorted(extra)}; remove them or load the state into the "
                         "loop tree that saved it.")


def _structure(value: Any, cls: type, path: str) -> Any:
    try:
        return converter.structure(value, cls)
    except Exception as exc:  # cattrs raises ClassValidationError / ExceptionGroup / TypeError
        try:
            details = cattrs.transform_error(exc, path=path)
        except Exception:  # noqa: BLE001 -- e.g. a non-string extra key, which cattrs cannot even print
            details = [f"{path}: not a valid {cls.__qualname__} ({type(exc).__name__})"]
        raise StateError("; ".join(details) + f". Expected {cls.__qualname__}; load a state saved by the same "
                         "loop classes.") from exc


def structure_state_set(data: Any, schema: Schema) -> StateSet:
    """Typed state set from JSON-able data, checked key by key against ``schema``."""
    _keys(data, {"schema_version", "loops"}, "$")
    version = data["schema_version"]
    if version != SCHEMA_VERSION:
        raise StateError(f"$.schema_version: this state set has schema version {version!r}, but this "
                         f"statemachine_trainer reads version {SCHEMA_VERSION}; load it with the version that "
                         "wrote it.")
    loops = data["loops"]
    _keys(loops, set(schema), "$.loops")
    structured = {}
    for path, (progress_cls, fields_cls) in schema.items():
        where = f"$.loops[{path!r}]"
        entry = loops[path]
        _keys(entry, {"position", "progress", "fields", "extra"}, where)
        extra = entry["extra"]
        if not isinstance(extra, Mapping):
            raise StateError(f"{where}.extra: expected a mapping, got {type(extra).__name__}.")
        structured[path] = LoopState(
            position=_structure(entry["position"], Position, f"{where}.position"),
            progress=_structure(entry["progress"], progress_cls, f"{where}.progress"),
            fields=_structure(entry["fields"], fields_cls, f"{where}.fields"),
            extra=copy.deepcopy(dict(extra)),
        )
    # Order follows the schema (the tree walk), not the file, so equal trees compare equal.
    return StateSet(loops=structured, schema_version=version)


def check_json(value: Any, path: str) -> None:
    """Refuse values JSON cannot hold exactly, naming where they sit."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StateError(f"{path}: {value!r} is not valid JSON; store it as a string or drop it.")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise StateError(f"{path}: key {key!r} is not a string; JSON objects need string keys.")
            check_json(item, f"{path}[{key!r}]")
        return
    raise StateError(f"{path}: {type(value).__name__} is not JSON-able; return only dicts, lists, str, int, "
                     "float, bool and None from on_save_checkpoint().")


def dumps(state_set: StateSet) -> str:
    """Canonical JSON text of a state set (sorted keys), for files and diffs."""
    return json.dumps(unstructure_state_set(state_set), sort_keys=True, indent=1)
