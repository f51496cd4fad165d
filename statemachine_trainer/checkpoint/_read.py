"""Loading and verifying a checkpoint directory: checksums first, then only JSON and plain tensors.

Nothing is unpickled before the manifest's sizes and checksums hold, and the
bytes that were checked are the bytes that are loaded (each file is read
once, into memory).  ``tensors.pt`` goes through ``torch.load(weights_only=True)``
only, so a file carrying a pickled object is refused, never executed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ._codec import decode
from ._errors import CheckpointError
from ._hashing import hash_bytes
from ._manifest import FILES, STATE, TENSORS, read_manifest

__all__ = ["load_checkpoint_dir", "safe_torch_load", "verify_checkpoint"]


def _read_checked(path: Path, name: str, manifest: dict[str, Any]) -> bytes:
    entry, hash_name = manifest["files"][name], manifest["hash"]
    try:
        data = (path / name).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path / name} is missing; the checkpoint is incomplete. Use an earlier "
                              "checkpoint.") from None
    if len(data) != entry["size"]:
        raise CheckpointError(f"{path / name} has {len(data)} bytes but the manifest records {entry['size']}; the "
                              "file was truncated or overwritten. Use an earlier checkpoint.")
    if hash_bytes(hash_name, data) != entry[hash_name]:
        raise CheckpointError(f"{path / name} does not match its {hash_name} checksum in the manifest; the file is "
                              "corrupted. Use an earlier checkpoint.")
    return data


def safe_torch_load(source: Any, where: Path, map_location: Any = None, mmap: bool = False) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a flat ``{name: tensor}`` dict, with failures as :class:`CheckpointError`."""
    try:
        tensors = torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{where} contains a pickled object that is not plain tensors ({reason}); it will "
                              "not be loaded, because unpickling it could run arbitrary code. Load only "
                              "checkpoints written by statemachine_trainer, which stores tensors alone.") from None
    except Exception as exc:  # noqa: BLE001 -- a damaged zip archive surfaces as RuntimeError, EOFError, ...
        raise CheckpointError(f"{where} is not a readable tensor file ({type(exc).__name__}: {exc}); use an "
                              "earlier checkpoint.") from None
    if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise CheckpointError(f"{where} does not hold a flat {{name: tensor}} dict; it was not written by "
                              "statemachine_trainer. Use a checkpoint written by save_checkpoint_dir().")
    return tensors


def _parse_state(data: bytes, where: Path) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where} is not valid JSON ({exc}); use an earlier checkpoint.") from None


def load_checkpoint_dir(path: str | os.PathLike[str], map_location: Any = None) -> tuple[Any, dict[str, Any]]:
    """``(state, manifest)`` of checkpoint directory ``path``, after checking every file against the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    raw = {name: _read_checked(path, name, manifest) for name in FILES}
    data = _parse_state(raw[STATE], path / STATE)
    tensors = safe_torch_load(io.BytesIO(raw.pop(TENSORS)), path / TENSORS, map_location)
    return decode(data, tensors), manifest


def _file_problem(path: Path, name: str, manifest: dict[str, Any]) -> str | None:
    try:
        _read_checked(path, name, manifest)
    except CheckpointError as exc:
        return str(exc)
    return None


def file_status(path: Path, manifest: dict[str, Any]) -> dict[str, str | None]:
    """Per listed file: None when its size and checksum hold, else the problem."""
    return {name: _file_problem(path, name, manifest) for name in FILES}


def verify_checkpoint(path: str | os.PathLike[str]) -> list[str]:
    """Every problem that stops ``path`` from loading (empty when it is a valid checkpoint).

    Checks the manifest, each file's size and checksum, that ``state.json`` is
    JSON, that ``tensors.pt`` loads with ``weights_only=True`` (memory-mapped,
    so no tensor data is read) and that the two refer to each other exactly.
    """
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except CheckpointError as exc:
        return [str(exc)]
    problems = [p for p in file_status(path, manifest).values() if p is not None]
    if problems:
        return problems
    try:
        data = _parse_state((path / STATE).read_bytes(), path / STATE)
        decode(data, safe_torch_load(path / TENSORS, path / TENSORS, "cpu", mmap=True))
    except CheckpointError as exc:
        return [str(exc)]
    return []
