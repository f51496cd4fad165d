"""Recycling the tensors file of a checkpoint a save made garbage: the next save writes over it in place.

Why.  Writing a checkpoint's tensors into a new file makes the kernel find
fresh page-cache pages and the filesystem allocate blocks for every byte,
and deleting the replaced checkpoint frees (and, on a filesystem mounted
with ``discard``, trims) as many again.  On our VMs, 288 MiB written into a
new file took 74-360 ms (193-511 ms with its fsync), and 45-51 ms (122-157
ms) written over a file of that size in place: the new-file case is both
slower and bimodal.  Databases recycle their log segments for this reason.

What.  When a save replaces or prunes one of this process's checkpoints,
the old ``tensors.pt`` -- a plain file with one link; in a multi-process
checkpoint, the replicated state rank 0 writes -- is kept, hidden, as the
process's *spare* (``.tensors.pt.spare-<pid>`` beside the checkpoints; one
per process, the most recently retired).  The next save into that directory
(rank 0's replicated state, for a multi-process one) moves the spare into
its temporary directory and writes the tensors over it, truncating it to
their size before the fsync and the manifest.  The checksum covers exactly
the bytes written, so nothing of the old content can pass a load.

Never under a reader.  A file someone still has open or mapped -- a sidecar
process reading the old checkpoint, a ``torch.load(mmap=True)`` of it --
would change under them, where deleting it would not.  So before writing
over the spare, the save takes a write lease on it (Linux's ``F_SETLEASE``,
refused while any other open file description or mapping of it exists) and
drops it again (with SIGURG, ignored by default, as the signal that would
tell of someone opening it meanwhile); a file with a second link is never
reused.  Where a check fails, or leases are not supported (other systems,
network filesystems), the spare is deleted and a new file is written, as
without recycling.

Disk.  Between saves the spare holds as much space as the tensors it came
from: what a save needs anyway while the old checkpoint and the new one are
both on disk, so a run that fits on its disk still fits.  One spare per
process bounds it, however many directories a process saves into.  It is
deleted when ``fit`` ends, at exit, and by :func:`release_spares`; after a
kill -9 it is a hidden stray that the next save's ``clean_strays`` deletes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ._fsops import discard, remove_soon, wait_for_removals
from ._manifest import TENSORS

try:
    import fcntl
except ImportError:  # Windows: no leases, so no recycling
    fcntl = None  # type: ignore[assignment]

__all__ = ["kept_spares", "open_new_file", "release_spares", "retire", "take_spare"]

_F_SETLEASE = getattr(fcntl, "F_SETLEASE", None)  # Linux only
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)  # Linux's value, for Pythons that do not name it
_spare: Path | None = None  # this process's one spare tensors file (the most recently retired), if any
_lock = threading.Lock()


def kept_spares() -> frozenset[Path]:
    """The spare file this process keeps, if any (for ``clean_strays``, which must leave it)."""
    with _lock:
        return frozenset(() if _spare is None else (_spare,))


def retire(paths: Iterable[Path]) -> None:
    """Hidden checkpoints that are garbage now: one tensors file kept as this process's spare (when it may be),
    everything else deleted in the background."""
    paths = list(paths)
    for path in paths:
        if _keep(path):
            break
    remove_soon(paths)


def _keep(checkpoint: Path) -> bool:
    """Make ``checkpoint``'s tensors file the spare if it may be reused (a plain file with one link) and no spare
    waits in that directory already.

    A multi-process checkpoint's top-level ``tensors.pt`` is its replicated
    state, which rank 0 -- the process that retires checkpoints -- writes
    again at its next save; the ranks' parts are deleted.

    One spare per process: a spare kept in another directory is deleted, so
    the space held between saves is at most one checkpoint's tensors.
    """
    global _spare
    if _F_SETLEASE is None:
        return False
    checkpoint = checkpoint.absolute()
    parent, tensors = checkpoint.parent, checkpoint / TENSORS
    with _lock:
        if _spare is not None and _spare.parent == parent:
            return False
        try:
            if not stat.S_ISDIR(os.lstat(checkpoint).st_mode):
                return False  # a link (last.ckpt -> a checkpoint): what it points to is not garbage
            if not _reusable(os.lstat(tensors)):
                return False
            spare = parent / f".{TENSORS}.spare-{os.getpid()}"
            os.replace(tensors, spare)
        except OSError:
            return False
        previous, _spare = _spare, spare
    if previous is not None:
        remove_soon([previous])
    return True


def _reusable(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def take_spare(directory: Path) -> Path | None:
    """The spare tensors file if it waits in ``directory``, no longer kept (the caller writes over it or deletes
    it); else None."""
    global _spare
    with _lock:
        spare = _spare
        if spare is None or spare.parent != directory.absolute():
            return None
        _spare = None
    return spare if os.path.lexists(spare) else None


def open_new_file(path: Path, spare: Path | None = None) -> tuple[BinaryIO, bool]:
    """A new file at ``path`` to write, opened over ``spare`` when nobody else has that open; (file, recycled).

    A recycled file still holds the old bytes past what is written: the caller truncates it before its fsync.
    """
    if spare is not None:
        try:
            os.replace(spare, path)
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            discard(spare)
            discard(path)
        else:
            if _unshared(fd):
                return os.fdopen(fd, "r+b"), True
            os.close(fd)
            discard(path)
    return open(path, "xb"), False


def _unshared(fd: int) -> bool:
    """Whether nothing but ``fd`` has the file open or mapped, and it has one link (so writing over it is unseen).

    Any failure of the check (no leases on this filesystem, another owner, ...) answers False: the save then
    writes a new file, it never fails for this.
    """
    try:
        if not _reusable(os.fstat(fd)):
            return False
        with _write_lease(fd):
            pass
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _write_lease(fd: int) -> Iterator[None]:
    """Hold a write lease on ``fd``'s file: refused (EAGAIN) while any other open description or mapping of it
    exists.

    Should another process open the file while the lease is held, the kernel
    tells the holder with a signal, SIGIO unless set otherwise -- which would
    kill this process (its default action).  So the lease is taken with
    SIGURG as that signal: ignored by default, as it is by Python.
    """
    fcntl.fcntl(fd, _F_SETSIG, signal.SIGURG)
    fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_WRLCK)
    try:
        yield
    finally:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)


def release_spares() -> None:
    """Delete the spare this process keeps, and wait for the background deletes (a run's end; at exit)."""
    global _spare
    with _lock:
        spare, _spare = _spare, None
    if spare is not None:
        discard(spare)
    wait_for_removals()


atexit.register(release_spares)
