"""Editing a checkpoint the way a person with a text editor would, checksums recomputed: what is left to refuse
it is the reader's checking of the content, not the checksums."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from statemachine_trainer.checkpoint._hashing import hash_bytes
from statemachine_trainer.checkpoint._manifest import seal


def write_manifest(ckpt: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` with its own checksum recomputed (``seal``)."""
    (ckpt / "manifest.json").write_text(json.dumps(seal(manifest)))


def rewrite(ckpt: Path, name: str, data: bytes) -> None:
    """Replace file ``name`` of checkpoint ``ckpt`` by ``data`` and make the manifest agree with it."""
    (ckpt / name).write_bytes(data)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), manifest["hash"]: hash_bytes(manifest["hash"], data)}
    write_manifest(ckpt, manifest)


def edit_state(ckpt: Path, edit: Any, name: str = "state.json") -> None:
    """``edit(state)`` on the parsed state.json (in place, or return a replacement), then :func:`rewrite`."""
    state = json.loads((ckpt / name).read_text())
    state = edit(state) or state
    rewrite(ckpt, name, json.dumps(state).encode())
