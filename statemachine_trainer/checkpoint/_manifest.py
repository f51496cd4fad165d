"""``manifest.json``: what a complete checkpoint directory holds, written last.

A directory is a checkpoint only if its manifest parses, names this format
and versions we read, and every file it lists has the recorded size and
checksum.  The manifest is written after the data files, so its presence
means the write finished; the checksums catch damage after the fact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..state import SCHEMA_VERSION
from ._errors import CheckpointError
from ._hashing import HASHES

__all__ = ["FILES", "FORMAT", "FORMAT_VERSION", "MANIFEST", "read_manifest", "step_of"]

FORMAT = "statemachine-trainer-checkpoint"
#: Bump when the directory layout or the codec's markers change; other versions are refused.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE, TENSORS = "state.json", "tensors.pt"
FILES = (STATE, TENSORS)


def _version_error(path: Path, what: str, found: Any, ours: int) -> CheckpointError:
    return CheckpointError(f"{path}: the checkpoint has {what} {found!r}, but this statemachine_trainer reads "
                           f"{what} {ours}; load it with the statemachine_trainer version that wrote it, or "
                           "re-save it from a run of this version.")


def _check(path: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path / MANIFEST} is not a statemachine_trainer checkpoint manifest (no "
                              f"\"format\": {FORMAT!r}); point to a directory written by save_checkpoint_dir().")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _version_error(path, "format version", manifest.get("format_version"), FORMAT_VERSION)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise _version_error(path, "schema version", manifest.get("schema_version"), SCHEMA_VERSION)
    hash_name = manifest.get("hash")
    if hash_name not in HASHES:
        raise CheckpointError(f"{path / MANIFEST}: unknown checksum {hash_name!r} (known: {sorted(HASHES)}); the "
                              "manifest is damaged or from a newer version.")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(FILES) or not all(
            isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get(hash_name), str)
            for entry in files.values()):
        raise CheckpointError(f"{path / MANIFEST}: \"files\" must list {list(FILES)} with their size and "
                              f"{hash_name}; the manifest is damaged. Use an earlier checkpoint.")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of checkpoint directory ``path``; raises :class:`CheckpointError` if it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; a checkpoint is a directory holding {MANIFEST}, "
                              f"{STATE} and {TENSORS}.")
    try:
        text = (path / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {MANIFEST} is missing, so the checkpoint was not completely written (or "
                              "was damaged afterwards); use an earlier checkpoint.") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path / MANIFEST} is not valid JSON ({exc}); the checkpoint is damaged. Use an "
                              "earlier checkpoint.") from None
    _check(path, manifest)
    return manifest


def step_of(manifest: dict[str, Any]) -> int | None:
    """The training step the caller recorded in the manifest's metadata, if any."""
    step = manifest.get("metadata", {}).get("step") if isinstance(manifest.get("metadata"), dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
