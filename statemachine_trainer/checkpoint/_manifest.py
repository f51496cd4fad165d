"""``manifest.json``: what a complete checkpoint directory holds, written last.

A directory is a checkpoint only if its manifest parses, names this format
and versions we read, and every file it lists has the recorded size and
checksum.  The manifest is written after the data files, so its presence
means the write finished; the checksums catch damage after the fact.  The
manifest carries its own checksum too (``"checksum"``: the manifest's hash of
its canonical JSON without that key), so a flipped bit in a recorded step or
size cannot pass for a valid, older checkpoint.  Manifests written before the
checksum existed (same format version) have none and are read as before;
any key the writer does not write is refused.

Two layouts share the manifest.  Format version 1 is a single-process
checkpoint: ``state.json`` and ``tensors.pt``.  Format version 2 is a
multi-process one (``save_checkpoint_parts``): the same two files hold the
state every rank shares, and ``rank-<r>/state.json`` + ``rank-<r>/tensors.pt``
hold rank *r*'s own, for every *r* below the manifest's ``world_size``.  The
layout got its own version so that a reader which predates rank parts refuses
such a checkpoint by its version instead of calling it damaged.  Format
version 3 is a multi-process checkpoint whose sharded tensors (FSDP) sit in
``shards/`` as DCP wrote them (``_shards``): the manifest lists DCP's index
``shards/.metadata`` and every ``shards/__<rank>_<n>.distcp`` besides the
version-2 files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..state import SCHEMA_VERSION
from ._errors import CheckpointError
from ._files import MAX_MANIFEST_BYTES, parse_json, read_bounded
from ._hashing import HASHES, hash_bytes
from ._shards import SHARDS, shard_names

__all__ = ["FILES", "FORMAT", "FORMAT_VERSION", "MANIFEST", "PARTS_FORMAT_VERSION", "SHARDED_FORMAT_VERSION",
           "expected_files", "files_for", "is_sharded_manifest", "rank_dir", "read_manifest", "seal", "step_of",
           "world_size_of"]

FORMAT = "statemachine-trainer-checkpoint"
#: Bump when the directory layout or the codec's markers change; other versions are refused.
FORMAT_VERSION = 1
#: The multi-process layout: FORMAT_VERSION's files for the replicated state, plus one directory per rank.
PARTS_FORMAT_VERSION = 2
#: The multi-process layout with DCP shards in ``shards/`` (FSDP's sharded tensors).
SHARDED_FORMAT_VERSION = 3
_MULTI = (PARTS_FORMAT_VERSION, SHARDED_FORMAT_VERSION)
MANIFEST = "manifest.json"
STATE, TENSORS = "state.json", "tensors.pt"
FILES = (STATE, TENSORS)
CHECKSUM = "checksum"
_KEYS = {"format", "format_version", "schema_version", "hash", "created", "files", "metadata", CHECKSUM}


def _canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes the manifest's own checksum covers: its JSON without ``checksum``, keys sorted, no spaces."""
    rest = {k: v for k, v in manifest.items() if k != CHECKSUM}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its own checksum (under the hash it names) added as ``"checksum"``; written last."""
    return {k: v for k, v in manifest.items() if k != CHECKSUM} | {
        CHECKSUM: hash_bytes(manifest["hash"], _canonical(manifest))}


def rank_dir(rank: int) -> str:
    """The directory holding rank ``rank``'s part of a multi-process checkpoint."""
    return f"rank-{rank}"


def world_size_of(manifest: dict[str, Any]) -> int | None:
    """How many ranks wrote a checked manifest's checkpoint; None for a single-process one (format version 1)."""
    return manifest["world_size"] if manifest["format_version"] in _MULTI else None


def is_sharded_manifest(manifest: dict[str, Any]) -> bool:
    """Whether a checked manifest's checkpoint holds DCP shards (format version 3)."""
    return manifest["format_version"] == SHARDED_FORMAT_VERSION


def files_for(world_size: int | None) -> tuple[str, ...]:
    """Every data file a checkpoint holds, the replicated state first, then rank 0's part, rank 1's, ..."""
    ranks = () if world_size is None else range(world_size)
    return FILES + tuple(f"{rank_dir(r)}/{name}" for r in ranks for name in FILES)


def expected_files(manifest: dict[str, Any]) -> tuple[str, ...]:
    """Every data file a checked manifest's checkpoint must hold, in :func:`files_for`'s order, then its shards."""
    shards = shard_names(manifest["files"]) if is_sharded_manifest(manifest) else []
    return files_for(world_size_of(manifest)) + tuple(shards)


def _version_error(path: Path, what: str, found: Any, ours: int | str) -> CheckpointError:
    return CheckpointError(f"{path}: the checkpoint has {what} {found!r}, but this statemachine_trainer reads "
                           f"{what} {ours}; load it with the statemachine_trainer version that wrote it, or "
                           "re-save it from a run of this version.")


def _check(path: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path / MANIFEST} is not a statemachine_trainer checkpoint manifest (no "
                              f"\"format\": {FORMAT!r}); point to a directory written by save_checkpoint_dir().")
    version = manifest.get("format_version")
    if version not in (FORMAT_VERSION, *_MULTI) or isinstance(version, bool):
        raise _version_error(path, "format version", version,
                             f"{FORMAT_VERSION}, {PARTS_FORMAT_VERSION} or {SHARDED_FORMAT_VERSION}")
    if type(manifest.get("schema_version")) is not int or manifest["schema_version"] != SCHEMA_VERSION:
        raise _version_error(path, "schema version", manifest.get("schema_version"), SCHEMA_VERSION)
    hash_name = manifest.get("hash")
    if not isinstance(hash_name, str) or hash_name not in HASHES:
        raise CheckpointError(f"{path / MANIFEST}: unknown checksum {hash_name!r} (known: {sorted(HASHES)}); the "
                              "manifest is damaged or from a newer version.")
    _check_own_checksum(path, manifest, hash_name)
    _check_keys(path, manifest, version)
    world_size = manifest.get("world_size")
    if version in _MULTI and not (type(world_size) is int and world_size >= 1):
        raise CheckpointError(f"{path / MANIFEST}: \"world_size\" must be a positive integer in a multi-process "
                              f"checkpoint, got {world_size!r}; the manifest is damaged. Use an earlier checkpoint.")
    files = manifest.get("files")
    expected = expected_files(manifest) if isinstance(files, dict) else files_for(world_size)
    if version == SHARDED_FORMAT_VERSION and isinstance(files, dict) and f"{SHARDS}/.metadata" not in files:
        raise CheckpointError(f"{path / MANIFEST}: a sharded checkpoint must list {SHARDS}/.metadata, DCP's index; "
                              "the manifest is damaged. Use an earlier checkpoint.")
    if not isinstance(files, dict) or set(files) != set(expected) or not all(
            isinstance(entry, dict) and set(entry) == {"size", hash_name} and type(entry["size"]) is int
            and entry["size"] >= 0 and isinstance(entry[hash_name], str) for entry in files.values()):
        listed = sorted(files) if isinstance(files, dict) else files
        raise CheckpointError(f"{path / MANIFEST}: \"files\" must list {list(expected)} with their size and "
                              f"{hash_name}, but it lists {listed!r}; the manifest is damaged. Use an earlier "
                              "checkpoint.")


def _check_own_checksum(path: Path, manifest: dict[str, Any], hash_name: str) -> None:
    if CHECKSUM not in manifest:
        return  # written before manifests carried a checksum (same format version): nothing to compare
    if manifest[CHECKSUM] != hash_bytes(hash_name, _canonical(manifest)):
        raise CheckpointError(f"{path / MANIFEST} does not match its own {hash_name} checksum (\"{CHECKSUM}\"); "
                              "the manifest is corrupted, so the sizes, checksums and step it records cannot be "
                              "trusted. Use an earlier checkpoint.")


def _check_keys(path: Path, manifest: dict[str, Any], version: int) -> None:
    allowed = _KEYS | ({"world_size"} if version in _MULTI else set())
    unknown = sorted(set(manifest) - allowed)
    if unknown:
        raise CheckpointError(f"{path / MANIFEST} has key(s) {unknown} that no statemachine_trainer manifest of "
                              f"format version {version} has; the manifest is damaged. Use an earlier checkpoint.")
    if not isinstance(manifest.get("created", ""), str) or not isinstance(manifest.get("metadata", {}), dict):
        raise CheckpointError(f"{path / MANIFEST}: \"created\" must be a string and \"metadata\" an object; the "
                              "manifest is damaged. Use an earlier checkpoint.")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of checkpoint directory ``path``; raises :class:`CheckpointError` if it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; a checkpoint is a directory holding {MANIFEST}, "
                              f"{STATE} and {TENSORS}.")
    if not (path / MANIFEST).exists() and not (path / MANIFEST).is_symlink():
        raise CheckpointError(f"{path}: {MANIFEST} is missing, so the checkpoint was not completely written (or "
                              "was damaged afterwards); use an earlier checkpoint.")
    manifest = parse_json(read_bounded(path, MANIFEST, limit=MAX_MANIFEST_BYTES), path / MANIFEST)
    _check(path, manifest)
    return manifest


def step_of(manifest: dict[str, Any]) -> int | None:
    """The training step the caller recorded in the manifest's metadata, if any."""
    step = manifest.get("metadata", {}).get("step") if isinstance(manifest.get("metadata"), dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
