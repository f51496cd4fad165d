"""``tensors.pt``: read once, checksummed while it is read, loaded with the weights-only unpickler from memory.

Theory of operation.  Verifying a file and then handing its *path* to
``torch.load`` reads it twice and, worse, loads bytes that were never
checked: the file can change between the two.  Memory-mapping it has the same
hole (and a file truncated under a mapping kills the process with SIGBUS).
So the file is read exactly once, front to back, into memory this process
owns, and everything is parsed from those bytes:

1. :func:`~._files.open_checked` refuses anything but a regular file of the
   manifest's size;
2. torch's zip reader, pointed at the file, says where each tensor storage
   (``data/<key>``) lies -- a *plan* only: none of what it reads is used;
3. the file is read in order, each storage's bytes straight into a storage of
   its own (so no copy follows, and each tensor's memory is freed with it, as
   after ``torch.load``), everything between them into small buffers; each
   piece, once read, goes to a helper thread that hashes it (CRC-32 and the
   hashlib digests release the GIL) while the next piece is read;
4. torch's zip reader is pointed again, this time at the bytes just read; the
   plan must agree with it, and ``torch.load``'s own loader, with the
   weights-only unpickler, builds the tensors on the storages already read;
5. only when the checksum matches are the tensors returned: a mismatch is the
   manifest's checksum error, whatever the deserialization found.

Storages come from torch's allocator, as ``torch.load`` allocates them: the
loaded tensors are ordinary (resizable, freed one by one), and the memory
costs the same page faults ``torch.load`` pays.  (Anonymous huge-page memory
was measured too: ~2.5x faster in a loop of loads, but several times slower
on a process's first load on these VMs, where fresh huge pages are backed
by the host on first touch -- and the first load is the one a resume does.)

Where torch's internal loader (``torch.serialization._load``) is missing, or
the file is not a zip archive torch's reader can plan, the bytes are read and
hashed the same way into one buffer and go through the public
``torch.load(io.BytesIO(...), weights_only=True)``: copies more, the same
result, the same checks.
"""

from __future__ import annotations

import bisect
import inspect
import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._errors import CheckpointError
from ._files import checksum_mismatch, expect_end, open_checked, read_into
from ._hashing import CHUNK, BackgroundHasher

__all__ = ["checked_tensors", "load_tensor_file", "safe_torch_load"]

_ZIP_MAGIC = b"PK\x03\x04"
_STORAGE_PREFIX = "data/"


def _internal_loader() -> Callable[..., Any] | None:
    """torch's zip loader behind ``torch.load`` (takes the opened archive and the pickle module), if present."""
    load = getattr(torch.serialization, "_load", None)
    unpickler = getattr(torch, "_weights_only_unpickler", None)
    try:
        usable = load is not None and unpickler is not None and {"zip_file", "map_location", "pickle_module"} <= set(
            inspect.signature(load).parameters)
    except (TypeError, ValueError):
        usable = False
    return load if usable else None


#: Checked once: torch's private loader, or None to use the public ``torch.load`` on a copy of the bytes.
_INTERNAL = _internal_loader()


def _unpickling_reason(exc: Exception) -> str:
    """The weights-only unpickler's own reason, without torch's advice to allow-list the global (we never do)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    found = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
    return found.split(" Please use ")[0] or type(exc).__name__


def checked_tensors(load: Callable[[], Any], where: Path) -> dict[str, torch.Tensor]:
    """``load()``'s flat ``{name: tensor}`` dict, every failure a :class:`CheckpointError` naming ``where``."""
    try:
        tensors = load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{where} contains a pickled object that is not plain tensors "
                              f"({_unpickling_reason(exc)}); it will not be loaded, because unpickling it could run "
                              "arbitrary code. Load only checkpoints written by statemachine_trainer, which stores "
                              "tensors alone.") from None
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a damaged zip archive surfaces as RuntimeError, EOFError, ...
        raise CheckpointError(f"{where} is not a readable tensor file ({type(exc).__name__}: {exc}); use an "
                              "earlier checkpoint.") from None
    if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise CheckpointError(f"{where} does not hold a flat {{name: tensor}} dict; it was not written by "
                              "statemachine_trainer. Use a checkpoint written by save_checkpoint_dir().")
    return tensors


def safe_torch_load(source: Any, where: Path, map_location: Any = None, mmap: bool = False) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a flat ``{name: tensor}`` dict, with failures as :class:`CheckpointError`."""
    return checked_tensors(lambda: torch.load(source, map_location=map_location, weights_only=True, mmap=mmap),
                           where)


class _FdFile:
    """A read-only, seekable file over ``fd`` for torch's zip reader while planning (``pread``: no shared offset)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd, self._size, self._pos = fd, size, 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = max({io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + offset, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._pos + size, self._size)
        data = os.pread(self._fd, max(end - self._pos, 0), self._pos)
        self._pos += len(data)
        return data

    def readinto(self, target: Any) -> int:
        out = memoryview(target).cast("B")
        data = self.read(len(out))
        out[:len(data)] = data
        return len(data)


class _ReadBytes:
    """The file as read: consecutive pieces (small buffers and storages' memory), as a read-only seekable file."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.views: list[memoryview] = []
        self.size = self._pos = 0

    def append(self, view: memoryview) -> None:
        if len(view):  # an empty piece would share its start with the next one
            self.starts.append(self.size)
            self.views.append(view)
            self.size += len(view)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = max({io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence] + offset, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, target: Any) -> int:
        out = memoryview(target).cast("B")
        done = 0
        i = bisect.bisect_right(self.starts, self._pos) - 1
        while done < len(out) and 0 <= i < len(self.views):
            piece = self.views[i][self._pos - self.starts[i]:][:len(out) - done]
            out[done:done + len(piece)] = piece
            done += len(piece)
            self._pos += len(piece)
            i += 1
        return done

    def read(self, size: int = -1) -> bytes:
        out = bytearray(max(self.size - self._pos, 0) if size is None or size < 0 else size)
        return bytes(out[:self.readinto(out)])


def _plan(fd: int, size: int) -> dict[str, tuple[int, int]] | None:
    """``{record name: (offset, size)}`` of the storages in the zip archive ``fd``, in file order; None if torch's
    reader cannot read the archive (the single-buffer path then reports why, after the checksum)."""
    if _INTERNAL is None or os.pread(fd, 4, 0) != _ZIP_MAGIC:
        return None
    try:
        reader = torch._C.PyTorchFileReader(_FdFile(fd, size))
        records = {name: (reader.get_record_offset(name), reader.get_record_size(name))
                   for name in reader.get_all_records() if name.startswith(_STORAGE_PREFIX)}
    except Exception:  # noqa: BLE001 -- any damage: let the checksum speak first
        return None
    ordered = dict(sorted(records.items(), key=lambda item: item[1]))
    end = 0
    for offset, length in ordered.values():
        if offset < end or offset + length > size:
            return None  # overlapping or outside the file: not an archive torch wrote
        end = offset + length
    return ordered


_MAX_VIEWS = 256  # views per readv: far below IOV_MAX (1024 on Linux)


def _read(fd: int, views: list[memoryview], where: Path, offset: int, hasher: BackgroundHasher) -> int:
    """Fill ``views`` from the file, :data:`CHUNK` bytes per ``readv``, each batch hashed on the helper while the
    next is read; the offset after them."""
    batch: list[memoryview] = []
    filled = 0
    for view in views:
        batch.append(view)
        filled += len(view)
        if filled >= CHUNK or len(batch) >= _MAX_VIEWS:
            offset = _read_batch(fd, batch, where, offset, hasher)
            batch, filled = [], 0
    return _read_batch(fd, batch, where, offset, hasher)


def _read_batch(fd: int, batch: list[memoryview], where: Path, offset: int, hasher: BackgroundHasher) -> int:
    read_into(fd, batch, where, offset)
    hasher.update(*batch)
    return offset + sum(len(view) for view in batch)


def _storage_view(storage: torch.UntypedStorage) -> memoryview:
    """Writable bytes of a CPU storage (through a uint8 tensor on it, whose NumPy view keeps it alive)."""
    return memoryview(torch.empty(0, dtype=torch.uint8).set_(storage).numpy()).cast("B")


def _pieces(view: memoryview) -> list[memoryview]:
    return [view[start:start + CHUNK] for start in range(0, len(view), CHUNK)]


def _read_planned(fd: int, size: int, where: Path, plan: dict[str, tuple[int, int]], hasher: BackgroundHasher
                  ) -> tuple[_ReadBytes, dict[str, torch.UntypedStorage]]:
    """The whole file, read in order: each planned storage into its own storage, the rest into small buffers."""
    storages = {name: torch.UntypedStorage(length) for name, (_, length) in plan.items()}
    views, at = [], 0
    for name, (offset, length) in plan.items():
        views += [memoryview(bytearray(offset - at)), *_pieces(_storage_view(storages[name]))]
        at = offset + length
    views.append(memoryview(bytearray(size - at)))
    _read(fd, views, where, 0, hasher)
    expect_end(fd, where, size)
    read = _ReadBytes()
    for view in views:
        read.append(view)
    return read, storages


class _ReadArchive:
    """torch's zip reader over the bytes read, handing ``torch.load``'s loader the storages already filled."""

    def __init__(self, reader: Any, storages: dict[str, torch.UntypedStorage]) -> None:
        self._reader, self._storages = reader, storages

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def get_storage_from_record(self, name: str, nbytes: int, _type: Any) -> torch.Tensor:
        storage = self._storages.get(name)
        if storage is None or storage.nbytes() != nbytes:
            raise RuntimeError(f"the pickle asks for {nbytes} bytes of record {name!r}, which holds "
                               f"{None if storage is None else storage.nbytes()}")
        return torch.empty(0, dtype=torch.uint8).set_(storage)


def _load_planned(read: _ReadBytes, storages: dict[str, torch.UntypedStorage], plan: dict[str, tuple[int, int]],
                  where: Path, map_location: Any) -> dict[str, torch.Tensor]:
    def load() -> Any:
        read.seek(0)  # torch's reader takes the archive to start where the file stands
        reader = torch._C.PyTorchFileReader(read)
        found = {name: (reader.get_record_offset(name), reader.get_record_size(name))
                 for name in reader.get_all_records() if name.startswith(_STORAGE_PREFIX)}
        if found != plan:
            raise CheckpointError(f"{where} changed while being read (its storages moved); read the checkpoint "
                                  "again once nothing writes to it.")
        return _INTERNAL(_ReadArchive(reader, storages), map_location, torch._weights_only_unpickler,
                         encoding="utf-8")

    return checked_tensors(load, where)


def _read_whole(fd: int, size: int, where: Path, hasher: BackgroundHasher) -> bytearray:
    buffer = bytearray(size)
    _read(fd, _pieces(memoryview(buffer)), where, 0, hasher)
    expect_end(fd, where, size)
    return buffer


def _load_public(buffer: bytearray, where: Path, map_location: Any) -> dict[str, torch.Tensor]:
    return checked_tensors(lambda: torch.load(io.BytesIO(buffer), map_location=map_location, weights_only=True),
                           where)


def load_tensor_file(root: Path, name: str, size: int, hash_name: str, digest: str,
                     map_location: Any = None) -> dict[str, torch.Tensor]:
    """The tensors of ``root/name``, read once, returned only if its ``hash_name`` digest is ``digest``.

    Deserialization overlaps the end of the hashing; whatever it finds, a
    checksum mismatch is reported first (a corrupted file is "corrupted",
    not "not a tensor file").
    """
    where = root / name
    hasher = BackgroundHasher(hash_name)
    fd, size = open_checked(root, name, size)
    try:
        plan = _plan(fd, size)
        if plan is None:
            buffer = _read_whole(fd, size, where, hasher)
        else:
            read, storages = _read_planned(fd, size, where, plan, hasher)
    finally:
        os.close(fd)
    failure: CheckpointError | None = None
    try:
        tensors = _load_public(buffer, where, map_location) if plan is None else _load_planned(
            read, storages, plan, where, map_location)
    except CheckpointError as exc:
        tensors, failure = {}, exc
    if hasher.hexdigest() != digest:
        raise checksum_mismatch(where, hash_name)
    if failure is not None:
        raise failure
    return tensors
