"""Atomic, crash-safe writing of a checkpoint directory.

The order is what makes it safe:

1. encode the state (a refusal happens before anything touches the disk);
2. write ``state.json`` and ``tensors.pt`` into ``.<name>.tmp-<pid>`` beside
   the target, hashing while writing, each file flushed and fsynced;
3. write ``manifest.json`` last, fsync it and the temp directory;
4. rename the temp directory onto ``<name>`` (an atomic exchange when the
   kernel offers one), fsync the parent directory.

A kill at any moment leaves the previous checkpoints untouched and at most a
hidden temp directory, which loaders never look at and the next save removes.
``save_checkpoint_parts`` (``_parts``) runs the same steps with these helpers,
one part per rank, rank 0 writing the manifest once every rank's part is on disk.

A save is two calls, so an asynchronous one (``_async``) can run the second
in a background thread: :func:`encode_state` (step 1, in the caller's thread:
what cannot be stored is refused there) and :func:`write_encoded` (steps 2-4,
then ``keep_last`` pruning).  ``save_checkpoint_dir`` is the two in a row, so
both kinds of save run the very same code and write the same bytes.
"""

from __future__ import annotations

import copy
import ctypes
import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import torch

from ..state import SCHEMA_VERSION, StateError, check_json
from ._codec import encode
from ._errors import CheckpointError
from ._files import max_state_bytes, state_too_large
from ._fsops import clean_strays, discard, fsync_dir, remove_entry
from ._hashing import DEFAULT_HASH, HASHES, HashingWriter
from ._latest import prune
from ._manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PARTS_FORMAT_VERSION,
    SHARDED_FORMAT_VERSION,
    STATE,
    TENSORS,
    seal,
)
from ._shards import is_shard_file
from ._spare import kept_spares, open_new_file, retire, take_spare

__all__ = ["EncodedState", "check_hash_name", "checked_metadata", "commit", "encode_state", "manifest", "new_tmp",
           "save_checkpoint_dir", "write_encoded", "write_part"]


@attrs.frozen
class EncodedState:
    """A state ready to write: its ``state.json`` bytes, its tensors, the manifest's metadata; nothing refers back
    to the live state except the tensors (an asynchronous save swaps them for host copies, ``with_tensors``)."""

    text: bytes  # state.json, final: the non-tensor state as it was when encoded
    tensors: dict[str, torch.Tensor]  # tensors.pt's {name: tensor}
    metadata: dict[str, Any]  # checked plain JSON, a copy

    def with_tensors(self, tensors: dict[str, torch.Tensor]) -> EncodedState:
        return attrs.evolve(self, tensors=tensors)


def save_checkpoint_dir(path: str | os.PathLike[str], state: Any, metadata: dict[str, Any] | None = None, *,
                        keep_last: int | None = None, hash_name: str = DEFAULT_HASH, durable: bool = True) -> Path:
    """Write ``state`` as checkpoint directory ``path``, atomically; return the path.

    ``metadata`` (JSON-able; ``step`` orders checkpoints for ``find_latest`` and
    ``keep_last``) goes into the manifest.  ``keep_last=k`` then deletes all but
    the newest ``k`` complete checkpoints beside it.  ``durable=False`` skips
    the fsyncs: still safe against a killed process, not against power loss.
    """
    path = Path(path).absolute()
    check_hash_name(hash_name)
    return write_encoded(path, encode_state(path, state, metadata), keep_last, hash_name, durable)


def encode_state(path: Path, state: Any, metadata: dict[str, Any] | None) -> EncodedState:
    """Step 1, nothing written yet: ``state`` split into JSON bytes and tensors, refused here if it cannot be stored.

    The JSON is made now, so later changes to the live state (training goes
    on during an asynchronous write) cannot reach the checkpoint.
    """
    data, tensors = encode(state)
    text = _json_bytes(data)
    if len(text) > max_state_bytes():  # refused now rather than written into a checkpoint no load would accept
        raise state_too_large(path / STATE, len(text))
    return EncodedState(text, tensors, copy.deepcopy(checked_metadata(metadata)))


def write_encoded(path: Path, encoded: EncodedState, keep_last: int | None = None, hash_name: str = DEFAULT_HASH,
                  durable: bool = True) -> Path:
    """Steps 2-4 for ``encoded`` at absolute ``path``, then ``keep_last`` pruning; safe to run in another thread."""
    tmp = new_tmp(path)
    try:
        files = _write_files(tmp, encoded.text, encoded.tensors, hash_name, durable, take_spare(path.parent))
        commit(tmp, path, manifest(files, hash_name, encoded.metadata), hash_name, durable)
    except BaseException:
        discard(tmp)
        raise
    if keep_last is not None:
        prune(path.parent, keep_last, keep=path)
    return path


def check_hash_name(hash_name: str) -> None:
    if hash_name not in HASHES:
        raise CheckpointError(f"hash_name={hash_name!r} is not a known checksum; use one of {sorted(HASHES)}.")


def new_tmp(path: Path) -> Path:
    """A fresh, empty ``.<name>.tmp-<pid>`` beside ``path``, after removing what killed saves left there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_strays(path.parent, kept_spares())
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    remove_entry(tmp)
    tmp.mkdir()
    return tmp


def write_part(directory: Path, data: Any, tensors: dict[str, torch.Tensor], hash_name: str,
               durable: bool, spare: Path | None = None) -> dict[str, dict[str, Any]]:
    """Write one encoded state as ``state.json`` + ``tensors.pt`` in ``directory`` (its tensors over ``spare``
    when it may be, see ``_spare``); their manifest entries."""
    text = _json_bytes(data)
    if len(text) > max_state_bytes():  # refused now rather than written into a checkpoint no load would accept
        raise state_too_large(directory / STATE, len(text))
    return _write_files(directory, text, tensors, hash_name, durable, spare)


def _write_files(directory: Path, text: bytes, tensors: dict[str, torch.Tensor], hash_name: str,
                 durable: bool, spare: Path | None = None) -> dict[str, dict[str, Any]]:
    """``state.json`` and ``tensors.pt`` in ``directory``; the tensors written over ``spare`` when it may be
    (``_spare``)."""
    return {
        STATE: _write_file(directory / STATE, lambda f: f.write(text), hash_name, durable),
        TENSORS: _write_file(directory / TENSORS, lambda f: torch.save(tensors, f), hash_name, durable, spare),
    }


def commit(tmp: Path, path: Path, entries: dict[str, Any], hash_name: str, durable: bool) -> None:
    """Write manifest ``entries`` into ``tmp`` -- last, once all it lists is on disk -- and install ``tmp`` as ``path``."""
    sealed = seal(entries)
    _write_file(tmp / MANIFEST, lambda f: f.write(_json_bytes(sealed)), hash_name, durable)
    if durable:
        fsync_dir(tmp)
    _install(tmp, path)
    if durable:
        fsync_dir(path.parent)


def checked_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    try:
        check_json(metadata or {}, "metadata")
    except StateError as exc:
        raise CheckpointError(f"{exc} The manifest's metadata must be plain JSON.") from None
    return dict(metadata or {})


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"


def manifest(files: dict[str, dict[str, Any]], hash_name: str, metadata: dict[str, Any],
             world_size: int | None = None) -> dict[str, Any]:
    """The manifest of a single-process checkpoint, or with ``world_size`` of a multi-process one (with DCP shards
    when ``files`` lists any)."""
    version = FORMAT_VERSION if world_size is None else PARTS_FORMAT_VERSION
    if world_size is not None and any(is_shard_file(name) for name in files):
        version = SHARDED_FORMAT_VERSION
    out = {
        "format": FORMAT,
        "format_version": version,
        "schema_version": SCHEMA_VERSION,
        "hash": hash_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
    }
    if world_size is not None:
        out["world_size"] = world_size
    return out | {"files": files, "metadata": metadata}


def _write_file(path: Path, write: Callable[[BinaryIO], Any], hash_name: str, durable: bool,
                spare: Path | None = None) -> dict[str, Any]:
    raw, recycled = open_new_file(path, spare)
    with raw:
        writer = HashingWriter(raw, hash_name, durable)
        try:
            write(writer)  # type: ignore[arg-type]  # HashingWriter is file-like enough for torch.save and json
            if recycled:
                raw.truncate(writer.size)  # the old bytes past the new end go, before the fsync
        except BaseException:
            if writer.error is not None:
                raise writer.error from None  # e.g. "No space left on device", not torch's follow-up error
            raise
        writer.close()
    return {"size": writer.size, hash_name: writer.hexdigest()}


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _install(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path``; an existing ``path`` is replaced without a moment where neither is complete.

    An existing ``path`` that is a symlink (``last.ckpt`` linked to another
    checkpoint) is replaced as a link: the checkpoint it points to is left as it is.
    The replaced one, hidden, is deleted in the background, its tensors file perhaps kept for the next save to
    write over (``_spare.retire``).
    """
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    if _exchange(tmp, path):  # tmp now holds the old checkpoint (or the old link), under its hidden name
        retire([tmp])
        return
    # Fallback: a kill between these two renames leaves the old checkpoint under .<name>.old-<pid>;
    # clean_strays() moves it back to <name> on the next save.
    aside = path.parent / f".{path.name}.old-{os.getpid()}"
    os.replace(path, aside)
    os.replace(tmp, path)
    retire([aside])


