"""Reading a multi-process checkpoint whole: the replicated state and *every* rank's part.

A resume at the world size that wrote a checkpoint reads the replicated state
and its own rank's part (``_parts``).  A resume at another world size
(``Trainer(global_batch_size=...)``, see ``statemachine_trainer/_elastic.py``)
has no part of its own: each new rank reads all ``N`` saved parts -- small:
RNG states, data positions, logged accumulators, metric states -- and the run
derives its own from them.  Every file is checked against the manifest first,
as in any load; with a process group, if any rank fails every rank raises.
A sharded (FSDP) checkpoint's DCP shards are read once, into the caller's
templates -- this world's split of each tensor, so DCP reshards -- and every
part takes the tensors it names from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _dist
from ._errors import CheckpointError
from ._manifest import is_sharded_manifest, rank_dir, read_manifest, world_size_of
from ._read import load_part, shard_index, unlisted
from ._shards import Template, load_shards

__all__ = ["load_all_parts", "saved_world_size"]


def saved_world_size(path: str | os.PathLike[str]) -> int | None:
    """How many ranks wrote the checkpoint at ``path`` (its checked manifest); None for a single-process one."""
    return world_size_of(read_manifest(path))


def _load_all(path: Path, map_location: Any, shards: dict[str, Any] | None) -> tuple[Any, list[Any], dict[str, Any]]:
    manifest = read_manifest(path)
    world_size = world_size_of(manifest)
    if world_size is None:  # one process wrote everything in one state: it is its own only part
        state = load_part(path, "", manifest, map_location)
        return state, [state], manifest
    problems = unlisted(path, manifest, range(world_size))
    if problems:
        raise CheckpointError(problems[0])
    parts = [load_part(path, rank_dir(rank), manifest, map_location, shards) for rank in range(world_size)]
    return load_part(path, "", manifest, map_location, shards), parts, manifest


def _index(path: Path) -> Any:
    """The checked DCP index of a sharded checkpoint (the ranks split checking its files); None for any other."""
    manifest = read_manifest(path)
    return shard_index(path, manifest, share=_dist.rank_and_world_size()) if is_sharded_manifest(manifest) else None


def load_all_parts(path: str | os.PathLike[str], map_location: Any = None,
                   template: Template | None = None) -> tuple[Any, list[Any], dict[str, Any]]:
    """Collective: ``(replicated_state, [rank 0's part, rank 1's, ...], manifest)``, each file checked first.

    A single-process checkpoint (``save_checkpoint_dir``) is ``(state, [state], manifest)``: the whole state is
    both, and the caller takes from each what it needs.  A sharded one's tensors are read into
    ``template(name, shape, dtype)`` (whole where it gives None), as ``load_checkpoint_parts`` reads them.
    """
    path = Path(path)
    index, own = _attempt(lambda: _index(path))
    _dist.agree(own, f"to read the shard index of checkpoint {path}")
    shards = None
    if index is not None:  # the same on every rank: one manifest
        shards, own = _attempt(lambda: load_shards(path, index, template, distributed=_dist.active()))
        _dist.agree(own, f"to read the shards of checkpoint {path}")
    loaded, own = _attempt(lambda: _load_all(path, map_location, shards))
    _dist.agree(own, f"to load the parts of checkpoint {path}")
    assert loaded is not None
    return loaded


def _attempt(fn: Any) -> tuple[Any, CheckpointError | None]:
    try:
        return fn(), None
    except CheckpointError as exc:
        return None, exc
