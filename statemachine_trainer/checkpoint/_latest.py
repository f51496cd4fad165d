"""Choosing among the checkpoints in a directory: the newest valid one, and which to keep.

Checkpoints are ordered by the ``step`` recorded in their manifest, then by
the manifest's modification time.  Hidden entries (``.name.tmp-123``, an
unfinished save) are never candidates.  A directory without a readable
manifest is ordered by a ``step=N`` in its name, so a damaged newest
checkpoint is still reported as skipped rather than silently ignored.  Every
candidate that cannot be read -- damaged, edited, unreadable -- is skipped
with its reason; only a valid checkpoint of another world size stops the
search (:class:`WorldSizeError`).

Pruning is crash-safe: a checkpoint to delete is first renamed to the hidden
``.<name>.del-<pid>`` (one atomic step: it stops being a candidate at once),
then removed; a kill in between leaves only the hidden entry, which the next
save removes.  Symlinks beside the checkpoints are neither counted nor
deleted, and never followed by a delete.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ._errors import CheckpointError, WorldSizeError
from ._fsops import clean_strays, fsync_dir, hide, remove_entry
from ._manifest import FILES, MANIFEST, read_manifest, step_of
from ._read import load_checkpoint_dir, verify_checkpoint
from ._spare import kept_spares, retire

__all__ = ["candidates", "check_keep_last", "find_latest", "load_latest", "prune", "remove_checkpoint"]

_T = TypeVar("_T")
_STEP_IN_NAME = re.compile(r"step=(\d+)")


def _looks_like_checkpoint(path: Path) -> bool:
    try:
        return path.is_dir() and not path.name.startswith(".") and any(
            os.path.lexists(path / n) for n in (MANIFEST, *FILES))
    except OSError:  # unreadable: not something we can resume from, nor report on
        return False


def _order(path: Path) -> tuple[float, int]:
    """Sort key, newest last: (step, mtime in ns)."""
    try:
        step: float | None = step_of(read_manifest(path))
        mtime = (path / MANIFEST).stat().st_mtime_ns
    except (CheckpointError, OSError):
        named = _STEP_IN_NAME.search(path.name)
        step = int(named[1]) if named else None
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:  # removed since it was listed (top-k pruning in a live run): loading it will say so
            mtime = 0
    return (float("-inf") if step is None else step, mtime)


def candidates(root: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint-looking directories directly under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    try:
        entries = list(root.iterdir())
    except OSError as exc:
        raise CheckpointError(f"{root} cannot be listed ({exc.strerror}); check its permissions.") from None
    return sorted((p for p in entries if _looks_like_checkpoint(p)), key=_order, reverse=True)


def _first_valid(root: str | os.PathLike[str], attempt: Callable[[Path], _T]
                 ) -> tuple[Path | None, _T | None, list[tuple[Path, str]]]:
    skipped: list[tuple[Path, str]] = []
    for path in candidates(root):
        try:
            return path, attempt(path), skipped
        except WorldSizeError:
            raise  # valid, but for another world size: falling back to an older one would silently lose progress
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
        except OSError as exc:  # e.g. removed by a pruning run while we looked, or permissions
            skipped.append((path, f"{path} cannot be read ({exc}); use an earlier checkpoint."))
    return None, None, skipped


def _verified(path: Path) -> None:
    problems = verify_checkpoint(path)
    if problems:
        raise CheckpointError("; ".join(problems))


def find_latest(root: str | os.PathLike[str]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """``(newest valid checkpoint under root or None, [(newer invalid checkpoint, why), ...])``."""
    path, _, skipped = _first_valid(root, _verified)
    return path, skipped


def load_latest(root: str | os.PathLike[str], map_location: Any = None
                ) -> tuple[Path | None, tuple[Any, dict[str, Any]] | None, list[tuple[Path, str]]]:
    """Like :func:`find_latest`, but loads as it goes: ``(path, (state, manifest), skipped)``; each file read once.

    Raises :class:`WorldSizeError` when the newest valid checkpoint is a
    multi-process one (see ``load_latest_parts``) rather than skipping it.
    """
    return _first_valid(root, lambda p: load_checkpoint_dir(p, map_location))


def prune(parent: str | os.PathLike[str], keep_last: int, keep: str | os.PathLike[str] | None = None) -> list[Path]:
    """Keep ``keep_last`` complete checkpoints in ``parent`` -- ``keep`` and the newest others -- and delete the rest.

    Each one deleted is hidden first (renamed), then removed in the background
    (``_spare.retire``: one tensors file may be kept for the next save to write
    over): a kill midway leaves no visible half-deleted checkpoint, and the next
    save cleans up.
    """
    check_keep_last(keep_last)
    parent = Path(parent)
    clean_strays(parent, kept_spares())
    complete = [p for p in candidates(parent) if not _is_link(p) and _has_manifest(p)]
    keep_path = Path(keep).absolute() if keep is not None else None
    others = [p for p in complete if p.absolute() != keep_path]
    # The checkpoint just written is always one of the k kept, even when its step sorts it lower.
    doomed = others[keep_last - (len(others) < len(complete)):]
    hidden = [hide(path) for path in doomed]
    if hidden:
        fsync_dir(parent)  # the renames are durable before anything is deleted
    retire(hidden)
    return doomed


def remove_checkpoint(path: str | os.PathLike[str], *, wait: bool = True) -> None:
    """Delete a checkpoint crash-safely: hide it, make that durable, then delete it; a symlink is unlinked only.

    ``wait=False`` returns once it is hidden (no load can find it any more) and leaves the deleting to
    ``_spare.retire`` (in the background; its tensors file may be kept for the next save to write over).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    aside = hide(path)
    fsync_dir(path.parent)
    if wait:
        remove_entry(aside)
    else:
        retire([aside])


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return True  # gone or unreadable: not ours to delete


def check_keep_last(keep_last: int | None) -> None:
    if keep_last is not None and keep_last < 1:
        raise CheckpointError(f"keep_last={keep_last} would delete every checkpoint; pass 1 or more, or None to "
                              "keep them all.")


def _has_manifest(path: Path) -> bool:
    try:
        read_manifest(path)
    except CheckpointError:
        return False
    return True
