"""The checkpoint directory format: codec round trips, atomic writes under kill -9, and refusals."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine_trainer.checkpoint import (
    CheckpointError,
    _fsops,
    _hashing,
    decode,
    encode,
    find_latest,
    first_difference,
    load_checkpoint_dir,
    load_latest,
    read_manifest,
    release_spares,
    save_checkpoint_dir,
    verify_checkpoint,
    wait_for_removals,
)
from statemachine_trainer.state import SCHEMA_VERSION

from ._ckpt_edit import write_manifest

# -- strategies -----------------------------------------------------------------------------------------

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
           torch.bool]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(st.sampled_from([(), (0,), (3,), (2, 3), (1, 0, 2)]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        values = torch.randn(shape, generator=gen, dtype=torch.float64)
        if values.numel() and draw(st.booleans()):
            values.view(-1)[0] = draw(st.sampled_from([math.nan, math.inf, -math.inf, -0.0]))
        return values.to(dtype)
    return torch.randint(0, 100, shape, generator=gen, dtype=dtype)


_floats = st.floats(allow_nan=True, allow_infinity=True)
_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), _floats, st.text(max_size=8), tensors(),
                    st.builds(lambda n: np.arange(n, dtype=np.uint32), st.integers(0, 5)))
_keys = st.one_of(st.text(max_size=6), st.sampled_from(["__tensor__", "__items__", "__x", "a/b"]),
                  st.integers(-5, 5))
states = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_keys, inner, max_size=4),
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Exact equality: types, tensor dtype/shape/bits, NaN equal to NaN."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.reshape(-1).view(torch.uint8) if a.numel() else a, b.reshape(-1).view(torch.uint8) if b.numel() else b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b


def roundtrip(obj: Any) -> Any:
    data, tensors_ = encode(obj)
    data = json.loads(json.dumps(data, allow_nan=False))  # what a file gives back
    return decode(data, tensors_)


# -- codec ----------------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states)
def test_codec_round_trips_exactly(obj: Any) -> None:
    assert same(roundtrip(obj), obj)
    assert first_difference(obj, roundtrip(obj)) is None


def test_codec_round_trips_real_training_state() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    state = {"module": dict(net.state_dict()), "optimizers": [opt.state_dict()],
             "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
             "size": torch.Size([2, 3])}
    back = roundtrip(state)
    assert same(back["optimizers"], state["optimizers"])
    assert same(back["rng"], state["rng"])
    np.random.set_state(back["rng"]["numpy"])  # accepted as the NumPy API expects it
    random.setstate(back["rng"]["python"])
    assert back["size"] == (2, 3)


def test_tensor_names_follow_the_state_path() -> None:
    _, tensors_ = encode({"module": {"net.0.weight": torch.ones(1)}, "optimizers": [{"state": {3: {"m": torch.ones(1)}}}],
                          "a/b": torch.ones(1), "a": {"b": torch.zeros(1)}})
    assert list(tensors_) == ["module/net.0.weight", "optimizers/0/state/3/m", "a/b", "a/b#2"]


def test_views_are_stored_without_their_base() -> None:
    base = torch.arange(1000.0)
    _, tensors_ = encode({"view": base[10:12]})
    assert tensors_["view"].untyped_storage().nbytes() == 8


class _Thing:
    pass


@pytest.mark.parametrize(("value", "words"), [
    (lambda: 1, "cannot store a function"),
    (_Thing(), "_Thing object"),
    ({1, 2}, "a set"),
    (b"xy", "bytes"),
    (torch.nn.Linear(1, 1), "Linear object"),
])
def test_unsupported_values_are_refused_with_their_path(value: Any, words: str) -> None:
    with pytest.raises(CheckpointError) as info:
        encode({"callbacks": {"MyCallback": {"fn": value}}})
    assert str(info.value).startswith("$.callbacks.MyCallback.fn: ")
    assert words in str(info.value)
    assert "keep only numbers, strings, lists, dicts and tensors" in str(info.value)


def test_cycles_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CheckpointError, match=r"\$\[0\]: the state contains itself"):
        encode(loop)


def test_decode_refuses_unknown_markers_and_missing_or_extra_tensors() -> None:
    with pytest.raises(CheckpointError, match=r"\$\.x: .*unknown or malformed marker '__pickle__'"):
        decode({"x": {"__pickle__": "..."}}, {})
    with pytest.raises(CheckpointError, match="refers to tensor 'w'"):
        decode({"x": {"__tensor__": "w"}}, {})
    with pytest.raises(CheckpointError, match="never refers to"):
        decode({}, {"w": torch.ones(1)})


# -- save / load ----------------------------------------------------------------------------------------

def _state(seed: int = 0, n: int = 1000) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {"module": {"w": torch.randn(n, generator=gen)}, "step": seed, "note": "x"}


def test_save_load_round_trip_and_manifest(tmp_path: Path) -> None:
    state = _state(3)
    path = save_checkpoint_dir(tmp_path / "step=3", state, {"step": 3, "epoch": 0})
    assert sorted(os.listdir(path)) == ["manifest.json", "state.json", "tensors.pt"]
    loaded, manifest = load_checkpoint_dir(path)
    assert same(loaded, state)
    assert manifest["metadata"] == {"step": 3, "epoch": 0}
    assert manifest["files"]["tensors.pt"]["size"] == (path / "tensors.pt").stat().st_size
    assert set(manifest["files"]["state.json"]) == {"size", manifest["hash"]}
    assert torch.load(path / "tensors.pt", weights_only=True)["module/w"].shape == (1000,)
    assert verify_checkpoint(path) == []
    assert os.listdir(tmp_path) == ["step=3"]  # no temp dir left behind


@pytest.mark.parametrize("hash_name", sorted(_hashing.HASHES))
def test_every_hash_round_trips(tmp_path: Path, hash_name: str) -> None:
    path = save_checkpoint_dir(tmp_path / "c", _state(1, 200_000), {"step": 1}, hash_name=hash_name)
    assert read_manifest(path)["hash"] == hash_name
    assert verify_checkpoint(path) == []


def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path: Path) -> None:
    save_checkpoint_dir(tmp_path / "last", _state(1), {"step": 1})
    save_checkpoint_dir(tmp_path / "last", _state(2), {"step": 2})
    loaded, manifest = load_checkpoint_dir(tmp_path / "last")
    assert loaded["step"] == 2 and manifest["metadata"]["step"] == 2
    assert find_latest(tmp_path) == (tmp_path / "last", [])  # the replaced one, while it is deleted, is no candidate
    release_spares()  # its tensors file, kept for the next save to write over, goes too
    assert os.listdir(tmp_path) == ["last"]


def test_the_replaced_checkpoint_is_deleted_in_the_background(tmp_path: Path) -> None:
    release_spares()  # no spare of an earlier test's directory to delete as well
    save_checkpoint_dir(tmp_path / "last", _state(1), {"step": 1})
    save_checkpoint_dir(tmp_path / "last", _state(2), {"step": 2})
    pending = _fsops._removals[:]  # the save handed the old directory, hidden, to a thread, and returned
    assert len(pending) == 1 and pending[0].name == "checkpoint-remove" and not pending[0].daemon
    wait_for_removals()
    assert not pending[0].is_alive() and _fsops._removals == []
    assert sorted(os.listdir(tmp_path)) == [f".tensors.pt.spare-{os.getpid()}", "last"]  # its tensors file, kept
    release_spares()
    assert os.listdir(tmp_path) == ["last"]


def test_a_save_waits_for_the_deletes_before_it(tmp_path: Path) -> None:
    save_checkpoint_dir(tmp_path / "a", _state(1), {"step": 1})
    save_checkpoint_dir(tmp_path / "a", _state(2), {"step": 2})  # its old "a" is being deleted
    save_checkpoint_dir(tmp_path / "b", _state(3), {"step": 3})  # no delete of its own; it writes over the spare
    assert _fsops._removals == [] and sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_process_that_ends_leaves_no_half_deleted_checkpoint(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys, torch
        from statemachine_trainer.checkpoint import save_checkpoint_dir
        for step in (1, 2, 3):
            save_checkpoint_dir(f"{sys.argv[1]}/step={step}", {"w": torch.zeros(3_000_000)}, {"step": step},
                                keep_last=1)
            save_checkpoint_dir(f"{sys.argv[1]}/last", {"w": torch.zeros(3_000_000)}, {"step": step})
    """)  # the last two deletes (step=2 pruned, the old last replaced) are still running when the script ends
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    assert sorted(os.listdir(tmp_path)) == ["last", "step=3"]


def test_other_versions_are_refused_naming_both(tmp_path: Path) -> None:
    path = save_checkpoint_dir(tmp_path / "c", _state(), {"step": 1})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["schema_version"] = 99
    write_manifest(path, manifest)
    with pytest.raises(CheckpointError, match=rf"schema version 99, but this statemachine_trainer reads schema version {SCHEMA_VERSION}"):
        load_checkpoint_dir(path)


# -- damage: each refused, find_latest falls back ------------------------------------------------------

class Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("echo pwned",))


def _flip_byte(path: Path) -> None:
    data = bytearray((path / "tensors.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "tensors.pt").write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path / "tensors.pt", "r+b") as f:
        f.truncate(100)


def _drop_manifest(path: Path) -> None:
    (path / "manifest.json").unlink()


def _pickle_payload(path: Path) -> None:
    """A tensors.pt holding a pickled object, with a manifest that matches it: only weights_only stops it."""
    torch.save({"module/w": Evil()}, path / "tensors.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / "tensors.pt").read_bytes()
    manifest["files"]["tensors.pt"] = {"size": len(data), manifest["hash"]: _hashing.hash_bytes(manifest["hash"], data)}
    write_manifest(path, manifest)


@pytest.mark.parametrize(("damage", "message"), [
    (_flip_byte, "does not match its crc32 checksum"),
    (_truncate, "has 100 bytes but the manifest records"),
    (_drop_manifest, "manifest.json is missing"),
    (_pickle_payload, "contains a pickled object that is not plain tensors"),
])
def test_damaged_checkpoints_are_refused_and_latest_falls_back(tmp_path: Path, damage: Any, message: str) -> None:
    good = save_checkpoint_dir(tmp_path / "step=1", _state(1), {"step": 1})
    bad = save_checkpoint_dir(tmp_path / "step=2", _state(2), {"step": 2})
    damage(bad)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint_dir(bad)
    problems = verify_checkpoint(bad)
    assert len(problems) == 1 and message in problems[0]
    found, skipped = find_latest(tmp_path)
    assert found == good
    assert [(p, message in why) for p, why in skipped] == [(bad, True)]
    path, (state, _), skipped = load_latest(tmp_path)
    assert path == good and state["step"] == 1 and skipped[0][0] == bad


def test_pickle_payload_is_never_executed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    bad = save_checkpoint_dir(tmp_path / "c", _state(), {"step": 1})
    _pickle_payload(bad)
    with pytest.raises(CheckpointError, match="will not be loaded, because unpickling it could run arbitrary code"):
        load_checkpoint_dir(bad)
    assert "pwned" not in capfd.readouterr().out


def test_find_latest_ignores_temp_dirs_and_orders_by_step(tmp_path: Path) -> None:
    assert find_latest(tmp_path / "missing") == (None, [])
    save_checkpoint_dir(tmp_path / "b-step=10", _state(10), {"step": 10})
    save_checkpoint_dir(tmp_path / "a-step=20", _state(20), {"step": 20})
    save_checkpoint_dir(tmp_path / "c-step=5", _state(5), {"step": 5})  # newest on disk, oldest by step
    (tmp_path / ".a-step=30.tmp-1").mkdir()
    assert find_latest(tmp_path) == (tmp_path / "a-step=20", [])


def test_keep_last_deletes_the_oldest_complete_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()  # not a checkpoint: never touched
    for step in (3, 1, 4, 2):
        save_checkpoint_dir(tmp_path / f"step={step}", _state(step), {"step": step}, keep_last=2)
    assert find_latest(tmp_path) == (tmp_path / "step=4", [])
    release_spares()  # the pruned ones are deleted in the background, one tensors file kept for the next save
    assert sorted(os.listdir(tmp_path)) == ["notes", "step=2", "step=4"]  # step=2 was just written: kept
    save_checkpoint_dir(tmp_path / "step=5", _state(5), {"step": 5}, keep_last=2)
    release_spares()
    assert sorted(os.listdir(tmp_path)) == ["notes", "step=4", "step=5"]
    with pytest.raises(CheckpointError, match="keep_last=0 would delete every checkpoint"):
        save_checkpoint_dir(tmp_path / "step=6", _state(6), {"step": 6}, keep_last=0)


# -- interrupted writes ---------------------------------------------------------------------------------

def test_an_unencodable_state_writes_nothing(tmp_path: Path) -> None:
    save_checkpoint_dir(tmp_path / "last", _state(1), {"step": 1})
    with pytest.raises(CheckpointError, match=r"\$\.callbacks\.fn: cannot store a function"):
        save_checkpoint_dir(tmp_path / "last", {"callbacks": {"fn": print}}, {"step": 2})
    assert os.listdir(tmp_path) == ["last"]
    assert load_checkpoint_dir(tmp_path / "last")[0]["step"] == 1


@pytest.mark.parametrize("fail_after", [0, 10, 600_000])
def test_a_write_failure_mid_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 fail_after: int) -> None:
    save_checkpoint_dir(tmp_path / "last", _state(1, 200_000), {"step": 1})
    real_write = _hashing.HashingWriter._write

    def failing_write(self: _hashing.HashingWriter, data: Any) -> int:
        if self.size + len(memoryview(data)) > fail_after:
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(_hashing.HashingWriter, "_write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint_dir(tmp_path / "last", _state(2, 200_000), {"step": 2})
    assert os.listdir(tmp_path) == ["last"]
    assert load_checkpoint_dir(tmp_path / "last")[0]["step"] == 1


_SAVER = textwrap.dedent("""
    import sys, torch
    from statemachine_trainer.checkpoint import save_checkpoint_dir
    root = sys.argv[1]
    print("ready", flush=True)
    for step in range(2, 10_000):
        state = {"w": torch.full((2_000_000,), float(step)), "step": step}
        save_checkpoint_dir(f"{root}/step={step}", state, {"step": step}, keep_last=2)
        save_checkpoint_dir(f"{root}/last", state, {"step": step})
""")


@pytest.mark.parametrize("delay", [0.02, 0.3, 0.7])
def test_kill_9_during_saves_leaves_a_loadable_latest(tmp_path: Path, delay: float) -> None:
    save_checkpoint_dir(tmp_path / "step=1", {"w": torch.full((2_000_000,), 1.0), "step": 1}, {"step": 1})
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(delay + random.random() * 0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found, skipped = find_latest(tmp_path)
    assert found is not None and skipped == []  # a kill leaves no invalid checkpoint, only a hidden temp dir
    state, manifest = load_checkpoint_dir(found)
    assert state["step"] == manifest["metadata"]["step"] and torch.equal(state["w"], torch.full((2_000_000,),
                                                                                             float(state["step"])))
    if (tmp_path / "last").exists():
        assert verify_checkpoint(tmp_path / "last") == []
    # the next save cleans whatever the killed one left
    save_checkpoint_dir(tmp_path / "step=99999", {"step": 0}, {"step": 99999})
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_pickle_module_is_not_needed_to_read_state_json(tmp_path: Path) -> None:
    path = save_checkpoint_dir(tmp_path / "c", {"x": [1, (2, 3)], "y": {1: "a"}}, {"step": 1})
    assert json.loads((path / "state.json").read_text()) == {"x": [1, {"__tuple__": [2, 3]}],
                                                            "y": {"__items__": [[1, "a"]]}}
    assert pickle  # imported for Evil's sake only
