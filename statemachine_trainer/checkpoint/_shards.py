"""Sharded tensors (FSDP2's ``DTensor`` parameters and optimizer states) as DCP shards inside our checkpoint.

Theory of operation.  Under FSDP every rank holds a slice of each parameter
and of its optimizer state; no rank has the whole model, and gathering it on
one rank to write it would need that rank to fit it.  So the sharded tensors
are written by ``torch.distributed.checkpoint`` (DCP) -- each rank its own
slices, in one ``shards/__<rank>_<n>.distcp`` file, and the coordinator a
``shards/.metadata`` index of which slice of which logical tensor sits
where -- while everything else of the state set stays as it is: JSON, plain
tensors, per-rank parts.  The JSON names a sharded tensor exactly as it
names a plain one (``module/net.0.weight``); the name is also its key in
DCP.  The shard files are listed in our manifest with their sizes and
checksums, written by the ranks that wrote them, and the checkpoint is
committed by the manifest as ever: a run killed while DCP writes leaves only
the hidden temp directory.

Reading is where DCP's trust ends.  Its ``.metadata`` is a pickle and its
reader unpickles it; ours reads it only after its checksum held, through an
unpickler that constructs nothing but DCP's metadata records, ``torch.Size``
and dtypes (:func:`read_index`), and refuses an index that points outside
the listed shard files, stores non-tensor values (DCP would unpickle those
with ``weights_only=False``) or names stream transforms.  Tensor data is
read by DCP with ``weights_only=True``.

Loading is resharding.  :func:`load_shards` fills *templates*: a live run's
``DTensor`` of the same logical shape (its own placement, at its own world
size -- DCP reads the overlapping slices), or a plain tensor of the whole
shape (``inspect``, ``diff``, a single-file export).  The logical shapes and
dtypes are checked against the index before DCP reads a byte.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ._errors import CheckpointError
from ._files import read_chunks
from ._hashing import CHUNK, hash_chunks

__all__ = [
    "RANK_PREFIX",
    "SHARDS",
    "ShardIndex",
    "Template",
    "is_shard_file",
    "is_sharded",
    "load_shards",
    "read_index",
    "shard_names",
    "split_sharded",
    "write_shards",
]

#: The directory inside a checkpoint that holds DCP's files.
SHARDS = "shards"
#: Where a rank part's sharded tensors are named in DCP (a rank part's own names follow it); the replicated
#: part's are named as they are.
RANK_PREFIX = "rank-local/"
_INDEX = ".metadata"
_DATA_FILE = re.compile(r"__(\d+)_(\d+)\.distcp\Z")

#: A logical tensor's template, made from its name, global shape and dtype (None: a plain tensor of that shape).
Template = Callable[[str, torch.Size, torch.dtype], "torch.Tensor | None"]


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (FSDP2's parameters and their optimizer states)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def split_sharded(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(plain, sharded)``: the encoded tensor table split into what ``tensors.pt`` and DCP hold."""
    plain: dict[str, torch.Tensor] = {}
    sharded: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        (sharded if is_sharded(tensor) else plain)[name] = tensor
    return plain, sharded


def is_shard_file(name: str) -> bool:
    """Whether ``name`` (relative to the checkpoint) is a file DCP writes in :data:`SHARDS`."""
    parts = name.split("/")
    return len(parts) == 2 and parts[0] == SHARDS and (parts[1] == _INDEX or bool(_DATA_FILE.match(parts[1])))


def shard_names(files: Mapping[str, Any]) -> list[str]:
    """The shard files among a manifest's ``files``, the index first."""
    return sorted((name for name in files if is_shard_file(name)), key=lambda n: (not n.endswith(_INDEX), n))


def write_shards(tmp: Path, sharded: dict[str, torch.Tensor], rank: int, hash_name: str,
                 durable: bool) -> dict[str, dict[str, Any]]:
    """Collective: every rank writes its slices of ``sharded`` into ``tmp/shards``; this rank's files' entries.

    Every rank must call it with the same names (DCP plans the write
    together).  The coordinator (rank 0) also writes the index.
    """
    import torch.distributed.checkpoint as dcp

    directory = tmp / SHARDS
    dcp.save(sharded, storage_writer=dcp.FileSystemWriter(directory, sync_files=durable, overwrite=False))
    mine = [name for name in sorted(os.listdir(directory))
            if (m := _DATA_FILE.match(name)) and int(m.group(1)) == rank or (rank == 0 and name == _INDEX)]
    return {f"{SHARDS}/{name}": _entry(directory / name, hash_name) for name in mine}


def _entry(path: Path, hash_name: str) -> dict[str, Any]:
    """A manifest entry for a file just written (read back from the page cache: DCP writes it, not us)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return {"size": size, hash_name: hash_chunks(hash_name, read_chunks(fd, size, path, CHUNK))}
    finally:
        os.close(fd)


# -- reading -----------------------------------------------------------------------------------------------------

_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
#: The classes DCP's index is made of; nothing else is constructed while it is unpickled.
_ALLOWED = {
    (_METADATA_MODULE, name) for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                          "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                          "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
     ("pathlib", "PurePosixPath")}


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles DCP's index and nothing else: DCP's records, ``torch.Size``, layouts and dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP index")


@dataclasses.dataclass(frozen=True)
class ShardIndex:
    """What DCP's index says, checked: each logical tensor's shape and dtype, and the raw metadata for DCP."""

    tensors: dict[str, tuple[torch.Size, torch.dtype]]
    metadata: Any


def read_index(path: Path, data: bytes, listed: set[str]) -> ShardIndex:
    """The checked index of checkpoint ``path`` from its (already checksummed) bytes ``data``.

    ``listed``: the shard data files the manifest lists; the index may point
    nowhere else.
    """
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    where = path / SHARDS / _INDEX
    try:
        metadata = _IndexUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # noqa: BLE001 -- any failure to unpickle is a damaged or foreign index
        raise CheckpointError(f"{where} is not a DCP index this library reads ({type(exc).__name__}: {exc}); the "
                              "checkpoint is damaged or was not written by statemachine_trainer. Use an earlier "
                              "checkpoint.") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{where} does not hold DCP metadata; use an earlier checkpoint.")
    tensors = {}
    for name, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointError(f"{where}: {name!r} is stored as {type(entry).__name__}, but a sharded checkpoint "
                                  "holds tensors only (anything else would be unpickled); the checkpoint was "
                                  "altered. Use an earlier checkpoint.")
        tensors[name] = (torch.Size(entry.size), entry.properties.dtype)
    for index, info in (metadata.storage_data or {}).items():
        if f"{SHARDS}/{info.relative_path}" not in listed or getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{where}: the slice of {getattr(index, 'fqn', index)!r} points to "
                                  f"{info.relative_path!r}, which is not a shard file the manifest lists (or is "
                                  "transformed); the checkpoint was altered. Use an earlier checkpoint.")
    return ShardIndex(tensors, metadata)


def load_shards(path: Path, index: ShardIndex, template: Template | None = None, distributed: bool = False,
                select: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Every logical tensor of the index (or those ``select`` picks by name), read into ``template(name, shape,
    dtype)`` (default: a plain tensor of the whole shape).  ``distributed``: every rank calls it together (DCP
    plans the reads as a collective)."""
    import torch.distributed.checkpoint as dcp

    targets: dict[str, torch.Tensor] = {}
    for name, (shape, dtype) in index.tensors.items():
        if select is not None and not select(name):
            continue
        made = template(name, shape, dtype) if template is not None else None
        if made is None:
            made = torch.empty(shape, dtype=dtype)
        if made.shape != shape or made.dtype != dtype:
            raise CheckpointError(f"{path}: {name!r} is {tuple(shape)} {dtype} in the checkpoint but "
                                  f"{tuple(made.shape)} {made.dtype} in this run; the checkpoint is from another "
                                  "model or configuration.")
        targets[name] = made
    try:
        with warnings.catch_warnings():  # without a process group DCP warns that it reads in one process: we asked
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(targets, storage_reader=_CheckedReader(path / SHARDS, index.metadata), no_dist=not distributed)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path / SHARDS}: DCP could not read the shards ({type(exc).__name__}: {exc}); "
                              "the checkpoint is damaged. Use an earlier checkpoint.") from exc
    return targets


def _checked_reader_class() -> type:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.planner import LoadItemType

    class CheckedReader(FileSystemReader):
        """DCP's file reader with the index we checked, instead of unpickling the file's own."""

        def __init__(self, directory: Path, metadata: Any) -> None:
            super().__init__(directory)
            self._checked = metadata

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata = dataclasses.replace(self._checked)
            metadata.storage_meta = dataclasses.replace(metadata.storage_meta or StorageMeta(), load_id=self.load_id)
            return metadata

        def read_data(self, plan: Any, planner: Any) -> Any:
            if any(item.type == LoadItemType.BYTE_IO for item in plan.items):
                raise CheckpointError("a sharded checkpoint is read into tensors only")
            return super().read_data(plan, planner)

    return CheckedReader


def _CheckedReader(directory: Path, metadata: Any) -> Any:
    global _reader_class
    if _reader_class is None:
        _reader_class = _checked_reader_class()
    return _reader_class(directory, metadata)


_reader_class: type | None = None
