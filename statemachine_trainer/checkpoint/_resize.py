"""Reading a multi-process checkpoint whole: the replicated state and *every* rank's part.

A resume at the world size that wrote a checkpoint reads the replicated state
and its own rank's part (``_parts``).  A resume at another world size
(``Trainer(global_batch_size=...)``, see ``statemachine_trainer/_elastic.py``)
has no part of its own: each new rank reads all ``N`` saved parts -- small:
RNG states, data positions, logged accumulators, metric states -- and the run
derives its own from them.  Every file is checked against the manifest first,
as in any load; with a process group, if any rank fails every rank raises.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _dist
from ._errors import CheckpointError
from ._manifest import rank_dir, read_manifest, world_size_of
from ._read import load_part, unlisted

__all__ = ["load_all_parts", "saved_world_size"]


def saved_world_size(path: str | os.PathLike[str]) -> int | None:
    """How many ranks wrote the checkpoint at ``path`` (its checked manifest); None for a single-process one."""
    return world_size_of(read_manifest(path))


def _load_all(path: Path, map_location: Any) -> tuple[Any, list[Any], dict[str, Any]]:
    manifest = read_manifest(path)
    world_size = world_size_of(manifest)
    if world_size is None:  # one process wrote everything in one state: it is its own only part
        state = load_part(path, "", manifest, map_location)
        return state, [state], manifest
    problems = unlisted(path, manifest, range(world_size))
    if problems:
        raise CheckpointError(problems[0])
    parts = [load_part(path, rank_dir(rank), manifest, map_location) for rank in range(world_size)]
    return load_part(path, "", manifest, map_location), parts, manifest


def load_all_parts(path: str | os.PathLike[str], map_location: Any = None) -> tuple[Any, list[Any], dict[str, Any]]:
    """Collective: ``(replicated_state, [rank 0's part, rank 1's, ...], manifest)``, each file checked first.

    A single-process checkpoint (``save_checkpoint_dir``) is ``(state, [state], manifest)``: the whole state is
    both, and the caller takes from each what it needs.
    """
    try:
        loaded, own = _load_all(Path(path), map_location), None
    except CheckpointError as exc:
        loaded, own = None, exc
    _dist.agree(own, f"to load the parts of checkpoint {path}")
    assert loaded is not None
    return loaded
