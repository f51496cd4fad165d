"""Checksums computed while a file is written, so saving never reads its own output back.

A checkpoint is hundreds of megabytes; hashing it in a second pass would add
a full read to every save.  :class:`HashingWriter` sits between ``torch.save``
and the file: each large chunk is hashed on a helper thread *while* the main
thread writes it (both release the GIL), and ``fdatasync`` runs on another
helper every few dozen megabytes so the final ``fsync`` has little left to do.
``benchmarks/checkpoint.py`` measures the hash choices; the default is the
fastest one that keeps a save within the performance target.

CRC-32 comes from ISA-L (the ``isal`` package, several times faster than
zlib) when it is importable, else from zlib: both compute the same standard
CRC-32, so a checkpoint's recorded value does not depend on which one wrote or
reads it.  Reading is the mirror image of writing: :class:`BackgroundHasher`
hashes each chunk on a helper thread, in order, while the next is read, and a
whole-file check streams the file in :data:`CHUNK`-sized pieces.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Protocol

try:  # ISA-L's CRC-32: the same values as zlib's, several times faster; releases the GIL like zlib
    from isal.isal_zlib import crc32 as _fast_crc32
except ImportError:  # pragma: no cover -- isal is a dependency, but a platform without a wheel still works
    _fast_crc32 = None

__all__ = ["CHUNK", "DEFAULT_HASH", "HASHES", "BackgroundHasher", "HashingWriter", "crc32_impl", "hash_bytes",
           "hash_chunks"]

#: Verification reads and hashes files in pieces of this size: large enough that a system call and a thread
#: hand-off per piece cost nothing measurable, small enough to stay in cache and to overlap reading with hashing.
CHUNK = 4 << 20


class _Hasher(Protocol):
    def update(self, data: Any, /) -> None: ...
    def hexdigest(self) -> str: ...


def crc32_impl() -> Callable[[Any, int], int]:
    """The CRC-32 function in use: ISA-L's when ``isal`` is importable, else zlib's (the same values)."""
    return _fast_crc32 or zlib.crc32


class _Crc32:
    """CRC-32 behind hashlib's interface: detects corruption, not tampering, and is the fastest."""

    def __init__(self) -> None:
        self.value = 0
        self._crc32 = crc32_impl()

    def update(self, data: Any) -> None:
        self.value = self._crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


#: Hash name (as recorded in the manifest) -> constructor.
HASHES: dict[str, Callable[[], _Hasher]] = {
    "sha256": hashlib.sha256,
    "blake2b": hashlib.blake2b,
    "crc32": _Crc32,
}
#: CRC-32 is the one that keeps a durable save within 1.2x torch.save + fsync on 2-core CPUs (benchmarks/
#: checkpoint.py: sha256 measured 1.55x, blake2b ~1.9x).  It detects corruption and truncation, which is its job
#: here; tampering is not the threat model (the weights_only guard is what keeps code out).  Pass
#: hash_name="sha256" to save_checkpoint_dir for a cryptographic digest.
DEFAULT_HASH = "crc32"

_PARALLEL_MIN = 1 << 16  # smaller chunks are hashed inline: a thread hand-off costs more than hashing them
_SYNC_EVERY = 32 << 20  # start writeback every 32 MiB so the closing fsync is short
_pool: ThreadPoolExecutor | None = None
_ordered_pool: ThreadPoolExecutor | None = None


def _helpers() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:  # created on first use: importing the package must not start threads
        _pool = ThreadPoolExecutor(2, thread_name_prefix="checkpoint-io")
    return _pool


def _forget_pools() -> None:
    """In a forked child the pools' threads do not exist; let the child start its own on first use."""
    global _pool, _ordered_pool
    _pool = _ordered_pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _ordered() -> ThreadPoolExecutor:
    """One worker, so the chunks of one file are hashed in the order they were submitted."""
    global _ordered_pool
    if _ordered_pool is None:
        _ordered_pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-verify")
    return _ordered_pool


def hash_bytes(name: str, data: Any) -> str:
    hasher = HASHES[name]()
    hasher.update(data)
    return hasher.hexdigest()


def hash_chunks(name: str, chunks: Iterable[Any]) -> str:
    """The ``name`` digest of the concatenation of ``chunks`` (each hashed before the next is asked for)."""
    hasher = HASHES[name]()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()


class BackgroundHasher:
    """Hashes the chunks given to :meth:`update` on a helper thread, in the order given, while the caller goes on.

    The caller must not change a chunk's bytes until :meth:`hexdigest` returns
    (a file is read into a buffer that is never written again, so it doesn't).
    """

    def __init__(self, name: str) -> None:
        self._hasher = HASHES[name]()
        self._pending: list[Future[None]] = []

    def update(self, *pieces: Any) -> None:
        """Hash ``pieces``, in order, after everything given before (one hand-off for all of them)."""
        self._pending.append(_ordered().submit(self._update, pieces))

    def _update(self, pieces: tuple[Any, ...]) -> None:
        for piece in pieces:
            self._hasher.update(piece)

    def hexdigest(self) -> str:
        """The digest of everything passed to :meth:`update`, once the helper has hashed it all."""
        for done in self._pending:
            done.result()
        self._pending.clear()
        return self._hasher.hexdigest()


class HashingWriter:
    """A write-only file object that hashes and counts what passes through it.

    ``close()`` flushes and (if ``durable``) fsyncs the file, so once it returns
    the bytes counted are the bytes on disk.
    """

    def __init__(self, file: BinaryIO, hash_name: str, durable: bool = True) -> None:
        self.file = file
        self.hasher = HASHES[hash_name]()
        self.durable = durable
        self.size = 0
        self._unsynced = 0
        self._sync: Future[None] | None = None
        self.error: BaseException | None = None  # the first write failure, which torch.save may mask with its own

    def write(self, data: Any) -> int:
        try:
            return self._write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def _write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) >= _PARALLEL_MIN:
            hashed = _helpers().submit(self.hasher.update, view)
            self.file.write(view)
            hashed.result()  # the caller may reuse its buffer once write() returns
        else:
            self.hasher.update(view)
            self.file.write(view)
        self.size += len(view)
        self._unsynced += len(view)
        if self.durable and self._unsynced >= _SYNC_EVERY and (self._sync is None or self._sync.done()):
            self.file.flush()
            self._sync = _helpers().submit(os.fdatasync, self.file.fileno())
            self._unsynced = 0
        return len(view)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.flush()
        if self._sync is not None:
            self._sync.result()
        if self.durable:
            os.fsync(self.file.fileno())

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()
