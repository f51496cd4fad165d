"""Fast verified loads (``checkpoint/_tensor_file.py``): tensors.pt read once, checksummed while read, loaded from
memory by the weights-only unpickler -- bit-identical to ``torch.load`` and refusing everything the slow path did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from statemachine_trainer.checkpoint import (
    CheckpointError,
    _hashing,
    _tensor_file,
    load_checkpoint_dir,
    save_checkpoint_dir,
    verify_checkpoint,
)
from statemachine_trainer.checkpoint._files import open_checked, read_into
from statemachine_trainer.checkpoint._hashing import BackgroundHasher, hash_bytes, hash_chunks

from ._ckpt_edit import rewrite

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["internal", "public"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both deserializers: torch's internal zero-copy loader, and the public ``torch.load(BytesIO)`` fallback."""
    if request.param == "public":
        monkeypatch.setattr(_tensor_file, "_INTERNAL", None)
    else:
        assert _tensor_file._INTERNAL is not None, "this torch lost serialization._load(overall_storage=...)"
    return request.param


def _tensors() -> dict[str, torch.Tensor]:
    """Every dtype the library stores, odd shapes, a non-canonical NaN, views sharing one storage, and a big one."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    nan = torch.tensor([0x7FF8_0000_DEAD_BEEF], dtype=torch.int64).view(torch.float64)
    out = {f"d/{dtype}": torch.randn(3, 5, generator=gen).to(dtype)
           for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.uint8)}
    out |= {"bool": torch.rand(9, generator=gen) > 0.5, "complex": torch.randn(4, generator=gen, dtype=torch.cfloat),
            "scalar": torch.tensor(3.5), "empty": torch.empty(0, 3), "nan": nan,
            "base": base, "row": base[2], "t": base.t(), "strided": base[1::2, ::3],
            "big": torch.randn(3_000_000, generator=gen)}  # 12 MB: several read pieces, anonymous-memory buffer
    return out


def _save(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> tuple[Path, int, str]:
    path = tmp_path / "tensors.pt"
    torch.save(tensors, path)
    data = path.read_bytes()
    return path, len(data), hash_bytes("crc32", data)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous().view(torch.uint8)


def _same_layout(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(ref)
    for name, t in ours.items():
        r = ref[name]
        assert (t.dtype, t.shape, t.stride(), t.storage_offset()) == (r.dtype, r.shape, r.stride(),
                                                                     r.storage_offset()), name
        assert torch.equal(_bits(t), _bits(r)), name
        assert t.untyped_storage().nbytes() == r.untyped_storage().nbytes(), name  # its own storage, not a slice
        assert t.untyped_storage().resizable() == r.untyped_storage().resizable(), name  # ordinary memory
    def sharing(tensors: dict[str, torch.Tensor]) -> list[list[str]]:  # names grouped by the storage they share
        groups: dict[int, list[str]] = {}
        for name, t in tensors.items():
            groups.setdefault(t.untyped_storage().data_ptr(), []).append(name)
        return sorted(groups.values())

    assert sharing(ours) == sharing(ref)


def test_loads_are_bit_identical_to_torch_load_views_included(tmp_path: Path, loader: str) -> None:
    path, size, digest = _save(tmp_path, _tensors())
    ours = _tensor_file.load_tensor_file(tmp_path, "tensors.pt", size, "crc32", digest)
    ref = torch.load(path, weights_only=True)
    _same_layout(ours, ref)
    assert ours["row"].untyped_storage().data_ptr() == ours["base"].untyped_storage().data_ptr()
    ours["base"][2, 0] = 42.0  # a view sees writes through its base, as after torch.load
    assert ours["row"][0] == 42.0 and ours["t"][0, 2] == 42.0


def test_map_location_is_applied(tmp_path: Path, loader: str) -> None:
    _, size, digest = _save(tmp_path, {"w": torch.arange(6.0)})
    seen: list[str] = []

    def where(storage: Any, location: str) -> Any:
        seen.append(location)
        return storage

    ours = _tensor_file.load_tensor_file(tmp_path, "tensors.pt", size, "crc32", digest, map_location=where)
    assert seen == ["cpu"] and torch.equal(ours["w"], torch.arange(6.0))
    assert _tensor_file.load_tensor_file(tmp_path, "tensors.pt", size, "crc32", digest, "meta")["w"].is_meta


def test_a_checkpoint_round_trips_with_big_tensors(tmp_path: Path) -> None:
    state = {"module": {"w": torch.randn(2048, 2048), "b": torch.randn(2048)}, "step": 7}  # 16 MiB: 4+ pieces
    save_checkpoint_dir(tmp_path / "ckpt", state, {"step": 7})
    loaded, manifest = load_checkpoint_dir(tmp_path / "ckpt")
    assert loaded["step"] == 7 and manifest["metadata"] == {"step": 7}
    assert all(torch.equal(loaded["module"][k], state["module"][k]) for k in state["module"])
    assert verify_checkpoint(tmp_path / "ckpt") == []


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["tensor data", "pickle", "zip directory"])
def test_a_checksum_mismatch_is_refused_before_anything_else(tmp_path: Path, loader: str, where: str) -> None:
    save_checkpoint_dir(tmp_path / "ckpt", {"w": torch.randn(1_000_000)})
    path = tmp_path / "ckpt" / "tensors.pt"
    size = path.stat().st_size
    _flip(path, {"tensor data": size // 2, "pickle": 80, "zip directory": size - 30}[where])
    message = f"{path} does not match its crc32 checksum in the manifest; the file is corrupted"
    with pytest.raises(CheckpointError, match="^" + message):
        load_checkpoint_dir(tmp_path / "ckpt")
    assert any(p.startswith(message) for p in verify_checkpoint(tmp_path / "ckpt"))


def test_garbage_with_a_matching_checksum_is_not_a_tensor_file(tmp_path: Path, loader: str) -> None:
    save_checkpoint_dir(tmp_path / "ckpt", {"w": torch.randn(10)})
    rewrite(tmp_path / "ckpt", "tensors.pt", b"PK\x03\x04" + os.urandom(3 << 20))  # looks like a zip archive
    with pytest.raises(CheckpointError, match=r"tensors\.pt is not a readable tensor file"):
        load_checkpoint_dir(tmp_path / "ckpt")


@pytest.mark.parametrize("change", ["truncated", "extra bytes"])
def test_a_file_of_another_size_is_refused_unread(tmp_path: Path, change: str) -> None:
    save_checkpoint_dir(tmp_path / "ckpt", {"w": torch.randn(1000)})
    path = tmp_path / "ckpt" / "tensors.pt"
    size = path.stat().st_size
    if change == "truncated":
        os.truncate(path, size - 1)
    else:
        with open(path, "ab") as f:
            f.write(b"\0")
    found = size - 1 if change == "truncated" else size + 1
    with pytest.raises(CheckpointError, match=f"{path} has {found} bytes but the manifest records {size}"):
        load_checkpoint_dir(tmp_path / "ckpt")


@pytest.mark.parametrize("planned", [True, False])
@pytest.mark.parametrize("change", ["shrinks", "grows"])
def test_a_file_changed_while_read_is_refused(tmp_path: Path, change: str, planned: bool) -> None:
    path, size, _ = _save(tmp_path, {"w": torch.randn(2_000_000)})
    fd, found = open_checked(tmp_path, "tensors.pt", size)
    plan = _tensor_file._plan(fd, found)
    assert plan is not None and list(plan) == ["data/0"]
    hasher = BackgroundHasher("crc32")
    try:  # the file changes after it was opened, measured and planned: the read itself must notice
        if change == "shrinks":
            os.truncate(path, size // 2)
            expected = f"{path} changed while being read \\(it ends at byte {size // 2}, not"
        else:
            with open(path, "ab") as f:
                f.write(b"more")
            expected = f"{path} changed while being read \\(it holds more than the {size} bytes"
        with pytest.raises(CheckpointError, match=expected):
            if planned:
                _tensor_file._read_planned(fd, found, path, plan, hasher)
            else:
                _tensor_file._read_whole(fd, found, path, hasher)
    finally:
        os.close(fd)


def test_storages_that_moved_since_the_plan_are_refused(tmp_path: Path) -> None:
    """The plan comes from a first look at the file; the bytes read must describe the same storages."""
    path, size, _ = _save(tmp_path, {"a": torch.randn(1000), "b": torch.randn(10)})
    fd, found = open_checked(tmp_path, "tensors.pt", size)
    try:
        plan = _tensor_file._plan(fd, found)
        assert plan is not None
        read, storages = _tensor_file._read_planned(fd, found, path, plan, BackgroundHasher("crc32"))
    finally:
        os.close(fd)
    moved = {name: (offset + 64, length) for name, (offset, length) in plan.items()}
    with pytest.raises(CheckpointError, match="changed while being read \\(its storages moved\\)"):
        _tensor_file._load_planned(read, storages, moved, path, None)
    assert torch.equal(_tensor_file._load_planned(read, storages, plan, path, None)["b"],
                       torch.load(path, weights_only=True)["b"])


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {_Evil.marker}",)

    marker = ""


def test_a_pickled_object_with_matching_checksums_is_refused_not_run(tmp_path: Path, loader: str) -> None:
    save_checkpoint_dir(tmp_path / "ckpt", {"w": torch.randn(10)})
    _Evil.marker = str(tmp_path / "ran")
    torch.save({"w": _Evil()}, tmp_path / "evil.pt")
    rewrite(tmp_path / "ckpt", "tensors.pt", (tmp_path / "evil.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"contains a pickled object that is not plain tensors \(.*system.*\); "
                                              "it will not be loaded"):
        load_checkpoint_dir(tmp_path / "ckpt")
    assert not (tmp_path / "ran").exists()


def test_a_legacy_format_tensor_file_still_loads(tmp_path: Path) -> None:
    save_checkpoint_dir(tmp_path / "ckpt", {"w": torch.arange(5.0)})
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(5.0)}, legacy, _use_new_zipfile_serialization=False)
    rewrite(tmp_path / "ckpt", "tensors.pt", legacy.read_bytes())
    assert torch.equal(load_checkpoint_dir(tmp_path / "ckpt")[0]["w"], torch.arange(5.0))


def test_crc32_without_isal_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(5 << 20) + b"tail"
    pieces = [data[i:i + 999_983] for i in range(0, len(data), 999_983)]
    with_isal = [hash_bytes("crc32", data), hash_chunks("crc32", pieces)]
    assert _hashing.crc32_impl() is not zlib.crc32, "isal is a dependency; install it"
    monkeypatch.setattr(_hashing, "_fast_crc32", None)
    assert _hashing.crc32_impl() is zlib.crc32
    assert [hash_bytes("crc32", data), hash_chunks("crc32", pieces)] == with_isal == [f"{zlib.crc32(data):08x}"] * 2


def test_a_checkpoint_written_without_isal_loads_with_it(tmp_path: Path) -> None:
    """A real process without isal (its import blocked) writes; this one, with isal, reads -- and the other way."""
    save_checkpoint_dir(tmp_path / "with", {"w": torch.arange(1_000_000.0)})
    script = textwrap.dedent(f"""
        import sys, zlib
        sys.modules["isal"] = None  # import isal fails, as where it is not installed
        import torch
        from statemachine_trainer.checkpoint import _hashing, load_checkpoint_dir, save_checkpoint_dir
        assert _hashing.crc32_impl() is zlib.crc32
        assert torch.equal(load_checkpoint_dir({str(tmp_path / "with")!r})[0]["w"], torch.arange(1_000_000.0))
        save_checkpoint_dir({str(tmp_path / "without")!r}, {{"w": torch.arange(1_000_000.0)}})
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    recorded = json.loads((tmp_path / "without" / "manifest.json").read_text())["files"]["tensors.pt"]["crc32"]
    assert recorded == hash_bytes("crc32", (tmp_path / "without" / "tensors.pt").read_bytes())
    assert torch.equal(load_checkpoint_dir(tmp_path / "without")[0]["w"], torch.arange(1_000_000.0))


def test_short_reads_fill_every_view_in_order(tmp_path: Path) -> None:
    """``readv`` may return less than asked (a pipe does, by design): the rest lands where it belongs."""
    read_fd, write_fd = os.pipe()
    views = [memoryview(bytearray(n)) for n in (3, 0, 4, 5)]
    try:
        os.write(write_fd, b"abcde")  # the first readv gets these 5 bytes only: view 0 and half of view 2
        writer = threading.Timer(0.2, os.write, (write_fd, b"fghijkl"))
        writer.start()
        read_into(read_fd, views, tmp_path / "pipe", 0)
        writer.join()
        assert b"".join(bytes(v) for v in views) == b"abcdefghijkl"
        os.close(write_fd)  # the writer is done: the next read finds the end
        with pytest.raises(CheckpointError, match=r"pipe changed while being read \(it ends at byte 12, not 13\)"):
            read_into(read_fd, [memoryview(bytearray(1))], tmp_path / "pipe", 12)
    finally:
        os.close(read_fd)
