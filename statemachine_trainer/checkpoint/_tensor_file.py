"""``tensors.pt``: read once, checksummed while it is read, loaded with the weights-only unpickler from memory.

Theory of operation.  Verifying a file and then handing its *path* to
``torch.load`` reads it twice and, worse, loads bytes that were never
checked: the file can change between the two.  Memory-mapping it has the same
hole (and a file truncated under a mapping kills the process with SIGBUS).
So the file is read exactly once, into one buffer of anonymous memory that
nothing else can write:

1. :func:`~._files.open_checked` refuses anything but a regular file of the
   manifest's size;
2. the file is read in :data:`~._hashing.CHUNK` pieces; each piece, once
   read, goes to a helper thread that hashes it (CRC-32 and the hashlib
   digests release the GIL) while the next piece is read;
3. the buffer is deserialized by ``torch.load``'s own weights-only unpickler,
   the tensors' storages being slices of the buffer, so no byte is copied
   again (this is what ``torch.load(mmap=True)`` does with a file mapping;
   here the "mapping" is memory we own, filled by ``read``);
4. only when the checksum matches are the tensors returned: a mismatch is the
   manifest's checksum error, whatever the deserialization found.

The tensors share the buffer, so it lives as long as any of them does
(like ``mmap=True``'s mapping).  The buffer asks the kernel for huge pages
where it can: faulting in hundreds of megabytes page by page costs more
than reading them.  Where torch's internal loader (``torch.serialization._load``
with ``overall_storage``) is missing, or the file is not a zip archive, the
checked bytes go through the public ``torch.load(io.BytesIO(...),
weights_only=True)`` instead: one copy more, the same result.
"""

from __future__ import annotations

import inspect
import io
import mmap
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._errors import CheckpointError
from ._files import checksum_mismatch, expect_end, open_checked, read_exactly
from ._hashing import CHUNK, BackgroundHasher

__all__ = ["checked_tensors", "load_tensor_file", "safe_torch_load"]

_ZIP_MAGIC = b"PK\x03\x04"
_SMALL = 1 << 20  # below this a plain bytearray: huge pages and mmap bookkeeping would not pay


def _internal_loader() -> Callable[..., Any] | None:
    """torch's zip loader that takes the storage to slice (``torch.load(mmap=True)``'s path), if this torch has it."""
    load = getattr(torch.serialization, "_load", None)
    unpickler = getattr(torch, "_weights_only_unpickler", None)
    try:
        usable = load is not None and unpickler is not None and "overall_storage" in inspect.signature(load).parameters
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


class _MemoryFile:
    """A read-only, seekable file over a memoryview, for torch's zip reader: reads copy only what is asked for."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view, 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, target: Any) -> int:
        out = memoryview(target).cast("B")
        data = self._view[self._pos:self._pos + len(out)]
        out[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        data = bytes(self._view[self._pos:end])
        self._pos += len(data)
        return data


def _buffer(size: int) -> Any:
    """Writable anonymous memory for ``size`` bytes, in huge pages where the kernel gives them."""
    if size < _SMALL:
        return bytearray(size)
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            memory.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # not allowed here: ordinary pages, just slower to fault in
    return memory


def _read_hashing(fd: int, size: int, where: Path, hasher: BackgroundHasher) -> Any:
    """The file's ``size`` bytes in a new buffer, each piece handed to ``hasher`` once read; its end checked."""
    buffer = _buffer(size)
    view = memoryview(buffer)
    for start in range(0, size, CHUNK):
        piece = view[start:start + CHUNK]
        read_exactly(fd, piece, where, start)
        hasher.update(piece)
    expect_end(fd, where, size)
    return buffer


def _deserialize(buffer: Any, where: Path, map_location: Any) -> dict[str, torch.Tensor]:
    view = memoryview(buffer)
    if _INTERNAL is None or bytes(view[:4]) != _ZIP_MAGIC:
        return checked_tensors(lambda: torch.load(io.BytesIO(view), map_location=map_location, weights_only=True),
                               where)
    storage = torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage()  # shares the buffer, keeps it alive

    def load() -> Any:
        reader = torch._C.PyTorchFileReader(_MemoryFile(view))
        return _INTERNAL(reader, map_location, torch._weights_only_unpickler, overall_storage=storage,
                         encoding="utf-8")

    return checked_tensors(load, where)


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
        buffer = _read_hashing(fd, size, where, hasher)
    finally:
        os.close(fd)
    failure: CheckpointError | None = None
    try:
        tensors = _deserialize(buffer, where, map_location)
    except CheckpointError as exc:
        tensors, failure = {}, exc
    if hasher.hexdigest() != digest:
        raise checksum_mismatch(where, hash_name)
    if failure is not None:
        raise failure
    return tensors
