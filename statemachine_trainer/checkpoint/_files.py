"""Reading a checkpoint's files without trusting them: regular files only, sizes known first, JSON bounded.

Theory of operation.  A checkpoint directory may have been damaged by
accident or edited by someone; reading it must never hang, exhaust memory or
escape through a bare Python exception.  So, before a byte is read:

* every path component below the checkpoint directory is ``lstat``-ed: a
  symlink, FIFO, device or socket is refused (a FIFO would block ``open``
  forever, ``/dev/zero`` would never end);
* the file's size must equal what the manifest records (the manifest itself
  must be under :data:`MAX_MANIFEST_BYTES`), and at most that many bytes are
  read -- through ``O_NOFOLLOW | O_NONBLOCK``, re-checked with ``fstat``, so a
  file swapped in between the check and the ``open`` is refused too;
* ``state.json`` may not exceed :func:`max_state_bytes` (64 MiB unless the
  ``STATEMACHINE_TRAINER_MAX_STATE_MB`` environment variable says otherwise):
  a checkpoint's non-tensor state is kilobytes, and parsing hundreds of
  megabytes of JSON takes a minute and gigabytes of memory.

:func:`parse_json` turns bad UTF-8, ``NaN`` literals, integers of more
digits than Python converts, nesting deeper than :data:`MAX_DEPTH` and any
other parse failure into :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._errors import CheckpointError

__all__ = ["MAX_DEPTH", "MAX_MANIFEST_BYTES", "check_depth", "checksum_mismatch", "expect_end", "max_state_bytes",
           "open_checked", "parse_json", "read_bounded", "read_chunks", "read_exactly", "read_into", "regular_size"]

#: A manifest lists a few files per rank and the caller's metadata: kilobytes.
MAX_MANIFEST_BYTES = 16 << 20
#: Deeper JSON than any state the library writes (a state set is about ten levels deep).
MAX_DEPTH = 100
_STATE_LIMIT_ENV = "STATEMACHINE_TRAINER_MAX_STATE_MB"
_DEFAULT_STATE_MB = 64


def max_state_bytes() -> int:
    """The largest ``state.json`` read or written: 64 MiB, or ``$STATEMACHINE_TRAINER_MAX_STATE_MB`` MiB."""
    value = os.environ.get(_STATE_LIMIT_ENV, "")
    try:
        megabytes = int(value) if value else _DEFAULT_STATE_MB
    except ValueError:
        raise CheckpointError(f"{_STATE_LIMIT_ENV}={value!r} is not a whole number of MiB; unset it or set it to "
                              f"e.g. {_DEFAULT_STATE_MB * 4}.") from None
    return max(megabytes, 1) << 20


def state_too_large(where: Path, size: int) -> CheckpointError:
    return CheckpointError(f"{where} holds {size} bytes of non-tensor state, more than the {max_state_bytes()} "
                           f"allowed; tensors belong in tensors.pt. If this state is meant to be that large, set "
                           f"{_STATE_LIMIT_ENV} to a larger number of MiB.")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def regular_size(root: Path, name: str) -> int:
    """The size of regular file ``root/name``; every component of ``name`` checked with ``lstat`` (no symlinks).

    ``root`` itself may be a symlink (a checkpoint may be linked from elsewhere);
    nothing inside it may be.
    """
    where = root
    parts = Path(name).parts
    for i, part in enumerate(parts):
        where = where / part
        try:
            mode = os.lstat(where).st_mode
        except FileNotFoundError:
            raise CheckpointError(f"{root / name} is missing; the checkpoint is incomplete. Use an earlier "
                                  "checkpoint.") from None
        except OSError as exc:
            raise CheckpointError(f"{where} cannot be read ({exc.strerror}); check its permissions, or use an "
                                  "earlier checkpoint.") from None
        last = i == len(parts) - 1
        if last and not stat.S_ISREG(mode) or not last and not stat.S_ISDIR(mode):
            wanted = "a regular file" if last else "a directory"
            raise CheckpointError(f"{where} is {_kind(mode)}, not {wanted}; a checkpoint holds only the files "
                                  "its writer made, so it is refused without being read. Use an earlier "
                                  "checkpoint, or replace the link by the real file.")
    return os.lstat(where).st_size


def checksum_mismatch(where: Path, hash_name: str) -> CheckpointError:
    """The error for a file whose bytes do not hash to what the manifest records (one wording for every reader)."""
    return CheckpointError(f"{where} does not match its {hash_name} checksum in the manifest; the file is "
                           "corrupted. Use an earlier checkpoint.")


def open_checked(root: Path, name: str, size: int | None = None, limit: int | None = None) -> tuple[int, int]:
    """``(fd, size)`` of regular file ``root/name``, opened for reading once its size is what was asked.

    ``size``: the exact size the manifest records; ``limit``: the most it may
    hold.  Sizes are compared before opening, so a file that is not what the
    manifest says costs one ``lstat``, not a read; the open follows no symlink
    and does not block, and ``fstat`` confirms the file opened is the one
    looked at.  The caller closes ``fd``.
    """
    where = root / name
    found = regular_size(root, name)
    if size is not None and found != size:
        raise CheckpointError(f"{where} has {found} bytes but the manifest records {size}; the file was truncated "
                              "or overwritten. Use an earlier checkpoint.")
    if limit is not None and found > limit:
        raise CheckpointError(f"{where} has {found} bytes, more than the {limit} a checkpoint's {Path(name).name} "
                              "may hold; it is damaged or not a statemachine_trainer checkpoint.")
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CheckpointError(f"{where} cannot be opened ({exc.strerror}); it changed while being read, or is not "
                              "a regular file. Use an earlier checkpoint.") from None
    try:
        opened = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise _unreadable(where, exc) from None
    if not stat.S_ISREG(opened.st_mode) or opened.st_size != found:
        os.close(fd)
        raise _changed(where)
    return fd, found


def _unreadable(where: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(f"{where} cannot be read ({exc.strerror}); use an earlier checkpoint.")


def _changed(where: Path, detail: str = "") -> CheckpointError:
    return CheckpointError(f"{where} changed while being read{detail}; read the checkpoint again once nothing "
                           "writes to it.")


def read_exactly(fd: int, view: memoryview, where: Path, offset: int) -> None:
    """Fill ``view`` with the file's bytes from ``offset`` on (the fd's position); a file that ends early was
    changed while being read."""
    read_into(fd, [view], where, offset)


def read_into(fd: int, views: list[memoryview], where: Path, offset: int) -> None:
    """Fill ``views`` in turn with the file's next bytes, from ``offset`` on: one ``readv`` for all of them where
    the kernel allows (at most a few hundred views, please), more where it returns less."""
    pending = [view for view in views if len(view)]
    first = done = 0
    while first < len(pending):
        try:
            n = os.readv(fd, pending[first:])
        except OSError as exc:
            raise _unreadable(where, exc) from None
        if n == 0:
            wanted = offset + sum(len(view) for view in views)
            raise _changed(where, f" (it ends at byte {offset + done}, not {wanted})")
        done += n
        while first < len(pending) and n >= len(pending[first]):
            n -= len(pending[first])
            first += 1
        if n:
            pending[first] = pending[first][n:]


def expect_end(fd: int, where: Path, size: int) -> None:
    """Refuse a file that holds more than the ``size`` bytes read from it (it is still growing)."""
    try:
        extra = os.read(fd, 1)
    except OSError as exc:
        raise _unreadable(where, exc) from None
    if extra:
        raise _changed(where, f" (it holds more than the {size} bytes it had when opened)")


def read_chunks(fd: int, size: int, where: Path, chunk: int) -> Iterator[memoryview]:
    """The file's ``size`` bytes as consecutive views of one reused ``chunk``-byte buffer, then its end checked.

    Each view is valid until the next is asked for: hash it, don't keep it.
    """
    buffer = memoryview(bytearray(min(chunk, size)))
    for start in range(0, size, chunk):
        view = buffer[:min(chunk, size - start)]
        read_exactly(fd, view, where, start)
        yield view
    expect_end(fd, where, size)


def read_bounded(root: Path, name: str, size: int | None = None, limit: int | None = None) -> bytes:
    """The bytes of regular file ``root/name``: exactly ``size`` of them (if given), at most ``limit``."""
    fd, found = open_checked(root, name, size, limit)
    try:
        data = bytearray(found)
        read_exactly(fd, memoryview(data), root / name, 0)
        expect_end(fd, root / name, found)
    finally:
        os.close(fd)
    return bytes(data)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (the writer stores non-finite floats as markers)")


def parse_json(data: bytes, where: Path) -> Any:
    """``data`` as JSON, every failure -- encoding, syntax, size of numbers, depth -- a :class:`CheckpointError`."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}); the file is "
                              "damaged. Use an earlier checkpoint.") from None
    except RecursionError:
        raise CheckpointError(f"{where} nests its JSON deeper than Python can parse; the file is damaged or not "
                              "a statemachine_trainer checkpoint. Use an earlier checkpoint.") from None
    except ValueError as exc:  # JSONDecodeError, a NaN literal, an integer of more than 4300 digits
        raise CheckpointError(f"{where} is not valid checkpoint JSON ({exc}); the file is damaged. Use an earlier "
                              "checkpoint.") from None
    check_depth(value, where)
    return value


def check_depth(value: Any, where: Path, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` (checked without recursion, so the check itself cannot overflow)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise CheckpointError(f"{where} nests its JSON more than {limit} levels deep; no checkpoint the "
                                  "library writes does. The file is damaged or was edited; use an earlier "
                                  "checkpoint.")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
