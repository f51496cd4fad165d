"""Filesystem steps shared by writing and pruning: durable renames, deletes that never follow a link, cleanup.

Everything a save or a prune leaves behind when it is killed is a hidden
entry named ``.<name>.<kind>-<pid>`` beside the checkpoints: ``tmp`` (a save
in progress), ``old`` (a replaced checkpoint set aside), ``del`` (a pruned
one, hidden before it is deleted) or ``spare`` (a tensors file kept for the
next save to write over, see ``_spare``).  :func:`clean_strays` removes
those whose process is gone, at the start of the next save or prune.

Deleting a replaced or pruned checkpoint is the one step of a save that
nothing waits for: once it is hidden, no load can see it, and unlinking a
few hundred MiB costs ~50 ms on an ext4 mounted with ``discard`` -- a quarter
of a save on our VMs.  So :func:`remove_soon` deletes it in a background
thread.  Every save or prune waits for the previous ones' deletes before it
starts (:func:`clean_strays` does, first), so no more than one save's garbage
is ever on disk beside it, and Python waits for the thread at exit; a kill -9
midway leaves a hidden entry that the next :func:`clean_strays` removes.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading
from collections.abc import Container, Iterable
from pathlib import Path

__all__ = ["clean_strays", "discard", "fsync_dir", "hide", "remove_entry", "remove_soon", "wait_for_removals"]

_STRAY = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old|del|spare)-(?P<pid>\d+)\Z")


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


_removals: list[threading.Thread] = []  # background deletes started and not yet waited for
_removals_lock = threading.Lock()


def remove_soon(paths: Iterable[Path]) -> None:
    """Delete hidden, already unreachable ``paths`` in a background thread (best effort, like :func:`discard`).

    Not a daemon thread: the interpreter waits for it at exit, so a run that
    ends normally leaves nothing behind.
    """
    paths = list(paths)
    if not paths:
        return
    thread = threading.Thread(target=_discard_all, args=(paths,), name="checkpoint-remove")
    with _removals_lock:
        _removals.append(thread)
        thread.start()


def _discard_all(paths: list[Path]) -> None:
    for path in paths:
        discard(path)


def wait_for_removals() -> None:
    """Return once every delete :func:`remove_soon` started in this process is done (e.g. before listing a
    checkpoint directory or copying it elsewhere)."""
    with _removals_lock:
        pending = _removals[:]
        del _removals[:]
    for thread in pending:
        thread.join()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_strays(parent: Path, keep: Container[Path] = ()) -> None:
    """Remove what killed saves left in ``parent``: temp directories, checkpoints hidden for deletion by
    pruning (``.<name>.del-<pid>``), spare tensors files other than ``keep`` (this process's, in use), and a
    set-aside old checkpoint (moved back when nothing replaced it).

    This process's own background deletes are waited for first: they remove entries this would remove too.
    """
    wait_for_removals()
    for entry in parent.iterdir():
        match = _STRAY.match(entry.name)
        if not match or entry in keep:
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
