"""Hypothesis mutates real checkpoints; every reader answers or raises ``CheckpointError``, and a refused resume
leaves the run untouched.

Three kinds of mutation, each applied to a copy of a checkpoint written by a
real ``fit``:

- *edits*: ``state.json`` or ``manifest.json`` parsed, one node replaced,
  deleted, wrapped or added, and every checksum recomputed -- what a person
  with an editor (or other code) can produce.  The result may be a valid
  checkpoint of another run; it must never crash a reader;
- *corruption*: bytes of any file flipped, cut or inserted, checksums left as
  they were -- an accident.  A reader may only accept it if it is equivalent
  to the original (``diff`` says identical);
- *re-hashed bytes*: ``state.json`` or ``tensors.pt`` bytes changed with the
  checksums recomputed, for the parsers behind them.

``verify``, ``inspect``, ``diff``, ``find_latest`` (with an older valid
checkpoint beside it) and ``fit(ckpt_path=...)`` run on each.  The number of
examples follows the hypothesis profile (``HYPOTHESIS_PROFILE=ci``: a few; the
default ``dev``: more).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from statemachine_trainer.checkpoint import (
    CheckpointError,
    compare_checkpoints,
    find_latest,
    summarize,
    verify_checkpoint,
)
from statemachine_trainer.checkpoint._inspect import format_summary

from ._ckpt_edit import rewrite, write_manifest
from .test_hostile_checkpoints import refused_by_fit
from .test_resume import Net
from .test_resume_safety import fit_with_checkpoints

#: Each example runs a (short) fit: a fraction of the profile's examples keeps the default run to seconds.
_FIT_EXAMPLES = max(8, settings.default.max_examples // 5)
_READ_EXAMPLES = max(20, settings.default.max_examples // 2)
_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path]:
    """(a mid-epoch checkpoint, an older one), written by a real fit: a resume trains on from the restored state."""
    root = tmp_path_factory.mktemp("fuzz")
    fit_with_checkpoints(root, Net(init_seed=0), max_epochs=1, logger=False, accumulate_grad_batches=2,
                         enable_model_summary=False)
    return root / "ckpts" / "epoch=0-step=2.ckpt", root / "ckpts" / "epoch=0-step=1.ckpt"


@contextmanager
def copied(pristine: tuple[Path, Path]) -> Iterator[Path]:
    """A fresh copy of both checkpoints in a temp directory; yields the newest's copy."""
    with tempfile.TemporaryDirectory() as tmp:
        newest, older = pristine
        shutil.copytree(older, Path(tmp) / older.name)
        yield Path(shutil.copytree(newest, Path(tmp) / newest.name))


# -- where to mutate --------------------------------------------------------------------------------------------


def _paths(value: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every node's path; of a long list (the Python RNG's 625 words) only a few items, so examples spread out."""
    yield here
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*here, key))
    elif isinstance(value, list):
        for i in sorted({0, 1, len(value) - 1} & set(range(len(value)))):
            yield from _paths(value[i], (*here, i))


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.integers(min_value=10**40, max_value=10**60),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.sampled_from(["START", "ADVANCE", "END", "__tensor__", "crc32", "state.json", "<u4", "float32"]),
    st.fixed_dictionaries({"__tensor__": st.sampled_from(["module/net.0.weight", "rng/torch", "nope"])}),
    st.fixed_dictionaries({"__tuple__": st.lists(st.integers(0, 5), max_size=3)}),
    st.fixed_dictionaries({"__items__": st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), max_size=2)}),
    st.fixed_dictionaries({"__float__": st.sampled_from(["nan", "inf", "bogus", "nan:0x7ff8000000000001"])}),
)
_VALUES = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=4), inner, max_size=3), max_leaves=5)
_OPS = st.sampled_from(["replace", "delete", "wrap", "add-key", "swap-type"])


def _mutate(tree: Any, where: tuple[Any, ...], op: str, value: Any) -> Any:
    """``tree`` with one node changed; the root itself can be replaced or wrapped too."""
    if not where:
        return [tree] if op == "wrap" else value
    parent = tree
    for key in where[:-1]:
        parent = parent[key]
    key, node = where[-1], parent[where[-1]]
    if op == "delete":
        del parent[key]
    elif op == "wrap":
        parent[key] = [node]
    elif op == "add-key" and isinstance(node, dict):
        node["fuzz" if "fuzz" not in node else "fuzz2"] = value
    elif op == "swap-type":
        parent[key] = str(node) if not isinstance(node, str) else len(node)
    else:
        parent[key] = value
    return tree


# -- what every reader must do -------------------------------------------------------------------------------


def _readers_answer(path: Path, original: Path, accepted_means_equivalent: bool) -> bool:
    """Run verify, inspect, diff and find_latest on ``path``; return whether verify accepted it."""
    problems = verify_checkpoint(path)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    try:
        format_summary(summarize(path))
    except CheckpointError:
        pass
    try:
        difference, _ = compare_checkpoints(path, original)
    except CheckpointError:
        difference = "refused"
    if not problems and accepted_means_equivalent:
        assert difference is None, f"an accidental change was accepted as valid: {difference}"
    found, _ = find_latest(path.parent)
    older = path.parent / "epoch=0-step=1.ckpt"
    # Refused: latest falls back to the older one.  Valid: it is the newest, unless the edit lowered its step.
    assert found == older if problems else found in (path, older)
    return not problems


def _fit_answers(path: Path, tmp: Path) -> None:
    """fit either resumes from the checkpoint or refuses it with CheckpointError, changing nothing first."""
    try:
        refused_by_fit(path, tmp)
        event("fit refused it")
    except pytest.fail.Exception as failure:
        if "DID NOT RAISE" not in str(failure):
            raise  # something was applied before a refusal, or another error escaped
        event("fit resumed from it")


# -- the fuzz tests ------------------------------------------------------------------------------------------


@settings(max_examples=_FIT_EXAMPLES, **_SETTINGS)
@given(data=st.data(), op=_OPS, value=_VALUES)
def test_an_edited_state_json_resumes_or_is_refused_untouched(pristine, data, op, value) -> None:
    with copied(pristine) as path:
        state = _json(path / "state.json")
        where = data.draw(st.sampled_from(list(_paths(state))), label="where")
        state = _mutate(state, where, op, value)
        rewrite(path, "state.json", json.dumps(state).encode())
        _readers_answer(path, pristine[0], accepted_means_equivalent=False)
        _fit_answers(path, path.parent)


@settings(max_examples=_READ_EXAMPLES, **_SETTINGS)
@given(data=st.data(), op=_OPS, value=_VALUES)
def test_an_edited_manifest_is_read_or_refused(pristine, data, op, value) -> None:
    with copied(pristine) as path:
        manifest = _json(path / "manifest.json")
        where = data.draw(st.sampled_from(list(_paths(manifest))), label="where")
        manifest = _mutate(copy.deepcopy(manifest), where, op, value)
        if isinstance(manifest, dict) and manifest.get("hash") in ("crc32", "sha256", "blake2b"):
            write_manifest(path, manifest)  # checksum recomputed: only the content checks remain
        else:
            (path / "manifest.json").write_text(json.dumps(manifest))
        _readers_answer(path, pristine[0], accepted_means_equivalent=False)


_FILES = st.sampled_from(["state.json", "tensors.pt", "manifest.json"])


@st.composite
def _corruption(draw: Any, size: int) -> tuple[str, int, bytes]:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "zero"]))
    at = draw(st.integers(0, max(size - 1, 0)))
    return kind, at, draw(st.binary(min_size=1, max_size=8)) if kind == "insert" else bytes([1 << draw(
        st.integers(0, 7))])


def _corrupt(data: bytes, kind: str, at: int, payload: bytes) -> bytes:
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ payload[0]]) + data[at + 1:]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + payload + data[at:]
    return data[:at] + b"\0" * 64 + data[at + 64:]


@settings(max_examples=_READ_EXAMPLES, **_SETTINGS)
@given(data=st.data(), name=_FILES)
def test_corrupted_bytes_are_refused_unless_equivalent(pristine, data, name) -> None:
    """An accident (no checksum recomputed): refused everywhere, or -- whitespace in the manifest -- harmless."""
    with copied(pristine) as path:
        original = (path / name).read_bytes()
        kind, at, payload = data.draw(_corruption(len(original)), label="corruption")
        (path / name).write_bytes(_corrupt(original, kind, at, payload))
        if _readers_answer(path, pristine[0], accepted_means_equivalent=True):
            assert name == "manifest.json"  # a data file's change never passes its checksum


@settings(max_examples=_FIT_EXAMPLES, **_SETTINGS)
@given(data=st.data(), name=st.sampled_from(["state.json", "tensors.pt"]))
def test_rehashed_bytes_resume_or_are_refused_untouched(pristine, data, name) -> None:
    with copied(pristine) as path:
        original = (path / name).read_bytes()
        kind, at, payload = data.draw(_corruption(len(original)), label="corruption")
        rewrite(path, name, _corrupt(original, kind, at, payload))
        _readers_answer(path, pristine[0], accepted_means_equivalent=False)
        _fit_answers(path, path.parent)


def test_200_random_manifest_flips_never_crash_latest_nor_pick_an_older_checkpoint_silently(pristine) -> None:
    """The issue's measurement: bit flips in the newest and in an older manifest, each alone."""
    import random

    rng = random.Random(16)
    for i in range(200):
        with copied(pristine) as path:
            target = path if i % 2 else path.parent / "epoch=0-step=1.ckpt"
            data = bytearray((target / "manifest.json").read_bytes())
            at = rng.randrange(len(data))
            data[at] ^= 1 << rng.randrange(8)
            (target / "manifest.json").write_bytes(bytes(data))
            found, skipped = find_latest(path.parent)
            if found != path:  # only a refused newest checkpoint may send latest to the older one, and says so
                assert target == path and [p for p, _ in skipped] == [path], (at, skipped)
