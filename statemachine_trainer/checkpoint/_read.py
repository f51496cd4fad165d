"""Loading and verifying a checkpoint directory: checksums first, then only JSON and plain tensors.

Nothing is returned before the manifest's sizes and checksums hold, and the
bytes that were checked are the bytes that are loaded (each file is read
once, into memory).  ``tensors.pt`` is checksummed while it is read and
deserialized by torch's weights-only unpickler only (``_tensor_file``), so a
file carrying a pickled object is refused, never executed.  Checking a
checkpoint without loading it (:func:`verify_checkpoint`) streams each file
through its checksum in small pieces instead of holding it in memory.

A multi-process checkpoint (format version 2) is read part by part: the
replicated ``state.json`` / ``tensors.pt`` and one ``rank-<r>/`` directory
per rank, each checked against the manifest the same way.  Its directory may
hold nothing the manifest does not list, so a part left over from a run at
another world size cannot pass for a valid one.  A sharded one (version 3)
also has DCP's ``shards/``: every shard file is checksummed and DCP's index
read through ``_shards``' restricted unpickler before DCP reads a tensor;
readers here get each sharded tensor whole (``inspect``, ``diff``, a
single-process load), a live FSDP run its own slices (``_parts``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ._codec import decode
from ._errors import CheckpointError, WorldSizeError
from ._files import (
    checksum_mismatch,
    max_state_bytes,
    open_checked,
    parse_json,
    read_bounded,
    read_chunks,
    regular_size,
    state_too_large,
)
from ._hashing import CHUNK, hash_bytes, hash_chunks
from ._manifest import (
    FILES,
    MANIFEST,
    STATE,
    TENSORS,
    expected_files,
    is_sharded_manifest,
    rank_dir,
    read_manifest,
    world_size_of,
)
from ._shards import RANK_PREFIX, SHARDS, Template, load_shards, read_index, shard_names
from ._tensor_file import load_tensor_file, safe_torch_load

__all__ = ["decode_part", "file_status", "load_all_parts", "load_checkpoint_dir", "load_part", "read_part", "safe_torch_load",
           "shard_index", "shard_tensors", "tensors_of_part", "unlisted", "verify_checkpoint"]


def _read_checked(path: Path, name: str, manifest: dict[str, Any]) -> bytes:
    """``path/name``'s bytes once they match the manifest: a regular file of the recorded size (checked before
    reading, and no more is read), with the recorded checksum."""
    entry, hash_name = manifest["files"][name], manifest["hash"]
    if Path(name).name == STATE and entry["size"] > max_state_bytes():
        raise state_too_large(path / name, entry["size"])
    data = read_bounded(path, name, size=entry["size"])
    if hash_bytes(hash_name, data) != entry[hash_name]:
        raise checksum_mismatch(path / name, hash_name)
    return data


def _check_file(path: Path, name: str, manifest: dict[str, Any]) -> None:
    """Refuse ``path/name`` unless it matches the manifest; streamed through the checksum, never held whole."""
    entry, hash_name = manifest["files"][name], manifest["hash"]
    if Path(name).name == STATE and entry["size"] > max_state_bytes():
        raise state_too_large(path / name, entry["size"])
    fd, size = open_checked(path, name, entry["size"])
    try:
        digest = hash_chunks(hash_name, read_chunks(fd, size, path / name, CHUNK))
    finally:
        os.close(fd)
    if digest != entry[hash_name]:
        raise checksum_mismatch(path / name, hash_name)


def _load_tensors(path: Path, name: str, manifest: dict[str, Any], map_location: Any) -> Any:
    entry, hash_name = manifest["files"][name], manifest["hash"]
    return load_tensor_file(path, name, entry["size"], hash_name, entry[hash_name], map_location)


def _parse_state(data: bytes, where: Path) -> Any:
    return parse_json(data, where)


def _prefixed(part: str, name: str) -> str:
    return f"{part}/{name}" if part else name


def read_part(path: Path, part: str, manifest: dict[str, Any], map_location: Any = None) -> tuple[Any, Any]:
    """``(data, tensors)`` of ``path/part`` (``part=""``: the top level): its JSON and ``tensors.pt``, checked."""
    state_name, tensors_name = _prefixed(part, STATE), _prefixed(part, TENSORS)
    data = _parse_state(_read_checked(path, state_name, manifest), path / state_name)
    return data, _load_tensors(path, tensors_name, manifest, map_location)


def load_part(path: Path, part: str, manifest: dict[str, Any], map_location: Any = None,
              shards: dict[str, Any] | None = None) -> Any:
    """The decoded state in ``path/part`` (``part=""``: the top level), each file checked before it is parsed.

    In a sharded checkpoint its sharded tensors come from ``shards`` (as
    :func:`shard_tensors` returns them), read whole when not given.
    """
    data, tensors = read_part(path, part, manifest, map_location)
    if is_sharded_manifest(manifest):
        tensors = tensors_of_part(part, tensors, shard_tensors(path, manifest) if shards is None else shards)
    return decode_part(path, part, data, tensors)


def tensors_of_part(part: str, tensors: dict[str, Any], shards: dict[str, Any]) -> dict[str, Any]:
    """A part's tensor table: its ``tensors.pt`` plus the sharded tensors it names (rank parts: under RANK_PREFIX)."""
    own = {name: t for name, t in shards.items() if not name.startswith(RANK_PREFIX)} if not part else {
        name[len(RANK_PREFIX):]: t for name, t in shards.items() if name.startswith(RANK_PREFIX)}
    return {**tensors, **own}


def shard_index(path: Path, manifest: dict[str, Any], share: tuple[int, int] | None = None,
                files_checked: bool = False) -> Any:
    """The checked DCP index of a sharded checkpoint, after the shard files' sizes and checksums held.

    ``share=(rank, world_size)``: this rank checks every ``world_size``-th data
    file only -- the ranks of a load split the reading, and agree on the
    outcome before DCP reads a tensor.  ``files_checked``: the caller already
    checked them all (``verify``, ``inspect``); the index is checked anyway,
    since its bytes are unpickled next.
    """
    names = shard_names(manifest["files"])
    index_name, data_files = names[0], names[1:]  # shard_names puts the index first; the manifest lists it
    if not files_checked:
        for name in data_files if share is None else data_files[share[0]::share[1]]:
            _check_file(path, name, manifest)
    return read_index(path, _read_checked(path, index_name, manifest), set(data_files))


def shard_tensors(path: Path, manifest: dict[str, Any], template: Template | None = None,
                  distributed: bool = False, select: Any = None) -> dict[str, Any]:
    """Every sharded tensor of checkpoint ``path`` by name (or those ``select(name)`` picks), checked first; whole
    tensors unless ``template`` (and ``distributed``: every rank of a process group calls it together) says
    otherwise."""
    return load_shards(path, shard_index(path, manifest), template, distributed, select)


def decode_part(path: Path, part: str, data: Any, tensors: dict[str, Any]) -> Any:
    try:
        return decode(data, tensors)
    except CheckpointError as exc:  # name the file (and so which rank's part) that is damaged
        raise CheckpointError(f"{path / _prefixed(part, STATE)}: {exc}") from None


def load_checkpoint_dir(path: str | os.PathLike[str], map_location: Any = None) -> tuple[Any, dict[str, Any]]:
    """``(state, manifest)`` of checkpoint directory ``path``, after checking every file against the manifest.

    Reads single-process checkpoints; a multi-process one raises
    :class:`WorldSizeError` pointing to ``load_checkpoint_parts``.
    """
    path = Path(path)
    manifest = read_manifest(path)
    world_size = world_size_of(manifest)
    if world_size is not None:
        raise WorldSizeError(
            f"{path} was written by a multi-process run at world size {world_size} (save_checkpoint_parts: shared "
            f"state plus one part per rank), but load_checkpoint_dir() reads single-process checkpoints only. "
            f"Resume it with {world_size} process(es), each calling load_checkpoint_parts(); "
            "`statemachine-trainer diff` and `inspect` read it as it is.")
    return load_part(path, "", manifest, map_location), manifest


def load_all_parts(path: str | os.PathLike[str], map_location: Any = None
                   ) -> tuple[Any, list[Any] | None, dict[str, Any]]:
    """``(state, [rank 0's state, ...] or None for a single-process checkpoint, manifest)``, everything checked."""
    path = Path(path)
    manifest = read_manifest(path)
    problems = unlisted(path, manifest)
    if problems:
        raise CheckpointError(problems[0])
    world_size = world_size_of(manifest)
    shards = shard_tensors(path, manifest) if is_sharded_manifest(manifest) else None
    ranks = None if world_size is None else [load_part(path, rank_dir(r), manifest, map_location, shards)
                                             for r in range(world_size)]
    return load_part(path, "", manifest, map_location, shards), ranks, manifest


def unlisted(path: Path, manifest: dict[str, Any], ranks: range | None = None) -> list[str]:
    """What a multi-process checkpoint holds beyond its manifest (top level, and the rank dirs in ``ranks``).

    Single-process checkpoints are not checked, as before rank parts existed.
    """
    world_size = world_size_of(manifest)
    if world_size is None:
        return []
    allowed = {MANIFEST, *FILES, *(rank_dir(r) for r in range(world_size))}
    if is_sharded_manifest(manifest):
        allowed.add(SHARDS)
    problems = [_unlisted_message(path / name, world_size) for name in _entries(path) if name not in allowed]
    if is_sharded_manifest(manifest):
        problems += [_unlisted_message(path / SHARDS / name, world_size) for name in _entries(path / SHARDS)
                     if f"{SHARDS}/{name}" not in manifest["files"]]
    for rank in range(world_size) if ranks is None else ranks:
        problems += [_unlisted_message(path / rank_dir(rank) / name, world_size)
                     for name in _entries(path / rank_dir(rank)) if name not in FILES]
    return problems


def _entries(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []  # a missing rank dir is reported by its missing files


def _unlisted_message(where: Path, world_size: int) -> str:
    return (f"{where} is not listed in the manifest of this world-size-{world_size} checkpoint (a part left over "
            "from another run, or added afterwards), so the checkpoint does not match its manifest. Use an earlier "
            "checkpoint, or remove what was added.")


def _file_problem(path: Path, name: str, manifest: dict[str, Any]) -> str | None:
    try:
        _check_file(path, name, manifest)
    except CheckpointError as exc:
        return str(exc)
    return None


def file_status(path: Path, manifest: dict[str, Any]) -> dict[str, str | None]:
    """Per listed file (shared state first, then each rank's part): None when its size and checksum hold."""
    return {name: _file_problem(path, name, manifest) for name in expected_files(manifest)}


def _decodes(path: Path, part: str, manifest: dict[str, Any], shards: dict[str, Any]) -> str | None:
    """Whether ``part``'s checked files parse and refer to each other exactly; tensors memory-mapped, not read
    (sharded ones: ``shards`` holds meta tensors of their logical shapes)."""
    state_name, tensors_name = _prefixed(part, STATE), _prefixed(part, TENSORS)
    state_path, tensors_path = path / state_name, path / tensors_name
    try:
        data = _parse_state(_read_checked(path, state_name, manifest), state_path)
        regular_size(path, tensors_name)  # checked just before; memory-mapped below, so looked at again
        tensors = safe_torch_load(tensors_path, tensors_path, "cpu", mmap=True)
        decode_part(path, part, data, tensors_of_part(part, tensors, shards))
    except CheckpointError as exc:
        return str(exc)
    return None


def verify_checkpoint(path: str | os.PathLike[str]) -> list[str]:
    """Every problem that stops ``path`` from loading (empty when it is a valid checkpoint).

    Checks the manifest, each file's size and checksum, that ``state.json`` is
    JSON, that ``tensors.pt`` loads with ``weights_only=True`` (memory-mapped,
    so no tensor data is read) and that the two refer to each other exactly.
    In a multi-process checkpoint that is every rank's part as well as the
    shared one, and nothing may sit in the directory that the manifest does
    not list.
    """
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except CheckpointError as exc:
        return [str(exc)]
    problems = unlisted(path, manifest) + [p for p in file_status(path, manifest).values() if p is not None]
    if problems:
        return problems
    shards: dict[str, Any] = {}
    if is_sharded_manifest(manifest):
        try:
            index = shard_index(path, manifest, files_checked=True)  # file_status checked every file above
        except CheckpointError as exc:
            return [str(exc)]
        shards = {name: torch.empty(shape, dtype=dtype, device="meta") for name, (shape, dtype) in index.tensors.items()}
    world_size = world_size_of(manifest)
    parts = [""] + ([] if world_size is None else [rank_dir(r) for r in range(world_size)])
    return [p for p in (_decodes(path, part, manifest, shards) for part in parts) if p is not None]
