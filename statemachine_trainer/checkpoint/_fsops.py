"""Filesystem steps shared by writing and pruning: durable renames, deletes that never follow a link, cleanup.

Everything a save or a prune leaves behind when it is killed is a hidden
entry named ``.<name>.<kind>-<pid>`` beside the checkpoints: ``tmp`` (a save
in progress), ``old`` (a replaced checkpoint set aside) or ``del`` (a pruned
one, hidden before it is deleted).  :func:`clean_strays` removes those whose
process is gone, at the start of the next save or prune.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

__all__ = ["clean_strays", "discard", "fsync_dir", "remove_checkpoint", "remove_entry"]

_STRAY = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old|del)-(?P<pid>\d+)\Z")


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in ``path`` durable (POSIX needs the directory itself fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_entry(path: Path) -> None:
    """Delete ``path`` without following it: a symlink or file is unlinked, only a real directory is removed whole."""
    try:
        is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        shutil.rmtree(path)
    else:
        os.unlink(path)


def discard(path: Path) -> None:
    """:func:`remove_entry`, best effort: cleaning up after a failure must not hide the failure."""
    try:
        remove_entry(path)
    except OSError:
        pass  # clean_strays() removes it at the next save


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_strays(parent: Path) -> None:
    """Remove what killed saves left in ``parent``: temp directories, checkpoints hidden for deletion by
    pruning (``.<name>.del-<pid>``), and a set-aside old checkpoint (moved back when nothing replaced it)."""
    for entry in parent.iterdir():
        match = _STRAY.match(entry.name)
        if not match:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _alive(pid):
            continue  # another process is saving right now
        final = parent / match["name"]
        try:
            if match["kind"] == "old" and not os.path.lexists(final):
                os.replace(entry, final)
            else:
                remove_entry(entry)
        except OSError:
            pass  # removed by someone else meanwhile, or not ours to remove: the next save tries again


def hide(path: Path) -> Path:
    """Rename ``path`` (not what it links to) to its hidden ``.<name>.del-<pid>``: one atomic step after which it
    is no checkpoint any more; :func:`clean_strays` finishes the delete if this process dies first."""
    aside = path.parent / f".{path.name}.del-{os.getpid()}"
    os.replace(path, aside)
    return aside


def remove_checkpoint(path: str | os.PathLike[str]) -> None:
    """Delete a checkpoint crash-safely: hide it, make that durable, then delete it; a symlink is unlinked only."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    aside = hide(path)
    fsync_dir(path.parent)
    remove_entry(aside)
