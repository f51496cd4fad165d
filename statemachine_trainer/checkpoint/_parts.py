"""Multi-process (DDP) checkpoints: the shared state written once, each rank's own state beside it.

Theory of operation.  In a DDP run the module, optimizers, schedulers, loop
tree and callbacks are the same on every rank (*replicated*), while RNG states,
the data loader's position and anything else a rank keeps for itself are not.
A multi-process checkpoint is one directory::

    step=120/
        state.json, tensors.pt          the replicated state, written by rank 0
        rank-0/state.json, tensors.pt   rank 0's own state
        rank-1/...                      ... one directory per rank
        manifest.json                   written last, by rank 0: world_size, every file's size and checksum

:func:`save_checkpoint_parts` is called by every rank and commits in this order:

1. each rank encodes its state (an unencodable value is refused before anything
   touches the disk); rank 0 makes the temp directory ``.<name>.tmp-<pid>``
   and *broadcasts* its name, so every rank writes into the same one;
2. each rank writes ``rank-<r>/`` through the single-process writer (hashing
   while writing, each file fsynced) -- rank 0 also the replicated files;
3. every rank *gathers* its files' sizes and checksums, or its error, to rank
   0.  The gather completes only once every rank has contributed, that is
   once every part is on disk, so it is the barrier before the manifest;
4. rank 0 checks it can see every part, writes ``manifest.json`` listing all
   of them and ``world_size``, fsyncs, renames the temp directory into place
   and prunes (``keep_last``); then it *broadcasts* the outcome, which every
   rank waits for: no rank returns before the checkpoint is committed, and if
   any rank failed every rank raises.

A rank killed at any point before step 4's rename leaves only the hidden temp
directory (never a candidate for ``find_latest``; the next save removes it)
and the previous checkpoints untouched.  Loading checks the world size first:
each rank's RNG and data position belong to that rank of that world size and
cannot be re-split, so another world size is refused with
:class:`WorldSizeError`, never silently resumed.

Every collective is torch.distributed's own (see ``_dist``); without a process
group the same functions run as world size 1.  The parts are written to a
filesystem every rank sees (one machine, or a shared mount).

Sharded tensors (FSDP's ``DTensor`` parameters and optimizer states, in the
replicated state or a rank's) are not in any ``tensors.pt``: between steps 2
and 3 every rank writes its slices of them with DCP into ``shards/`` (one
collective ``dcp.save``; see ``_shards``), and its shard files join its
report.  So under FSDP every rank passes the replicated state -- its own
slices of it -- and every rank encodes it; the JSON and plain tensors are
still written by rank 0 alone.  Loading reads each rank's slices into
templates the caller makes from its live run (``template``), at its own
world size: DCP reshards.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from . import _dist
from ._codec import encode
from ._errors import CheckpointError, WorldSizeError
from ._fsops import discard, fsync_dir
from ._hashing import DEFAULT_HASH
from ._latest import candidates, check_keep_last, prune
from ._manifest import files_for, is_sharded_manifest, rank_dir, read_manifest, world_size_of
from ._read import decode_part, read_part, shard_index, tensors_of_part, unlisted
from ._shards import RANK_PREFIX, SHARDS, Template, load_shards, shard_names, split_sharded, write_shards
from ._spare import take_spare
from ._write import check_hash_name, checked_metadata, commit, manifest, new_tmp, write_part

__all__ = ["load_checkpoint_parts", "load_latest_parts", "save_checkpoint_parts"]

_T = TypeVar("_T")
_Encoded = tuple[Any, dict[str, Any]]
_Report = tuple[bool, str] | None


class _Plan(NamedTuple):
    """What rank 0 decides and broadcasts, so that every rank writes the same way into the same place."""

    target: str  # the checkpoint's final path
    tmp: str  # the temp directory every rank writes its part into
    hash_name: str  # the checksum the manifest will name
    durable: bool  # whether every file and directory is fsynced
    sharded: bool  # whether the state holds sharded tensors: then every rank calls DCP's save


def _attempt(fn: Callable[[], _T]) -> tuple[_T | None, Exception | None]:
    """Run ``fn`` and keep its error: a rank must reach the next collective even when its own work failed."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 -- reported to every rank, then re-raised on this one
        return None, exc


def save_checkpoint_parts(path: str | os.PathLike[str], replicated_state: Any, rank_state: Any,
                          metadata: dict[str, Any] | None = None, *, keep_last: int | None = None,
                          hash_name: str = DEFAULT_HASH, durable: bool = True) -> Path:
    """Collective: write a multi-process checkpoint at ``path``, atomically; every rank calls it and gets the path.

    ``replicated_state`` (the same on every rank) is read on rank 0 only, so
    other ranks may pass None -- unless it holds sharded tensors (FSDP): then
    every rank passes its own, and writes its slices; ``rank_state`` is this rank's own (RNG states,
    loader position, ...).  ``metadata``, ``keep_last``, ``hash_name`` and
    ``durable`` work as in ``save_checkpoint_dir`` and are taken from rank 0.
    Without a process group this writes a world-size-1 checkpoint.  If any
    rank fails, nothing is committed and every rank raises: the failing rank
    its own error, the others a :class:`CheckpointError` naming it.
    """
    rank, world_size = _dist.rank_and_world_size()
    target = Path(path).absolute()
    encoded, own = _attempt(lambda: _encode(rank, replicated_state, rank_state, metadata, keep_last, hash_name))
    plan: _Plan | None = None
    if rank == 0 and own is None:
        plan, own = _attempt(lambda: _plan(target, hash_name, durable, bool(encoded[3])))
    try:
        outcome, own = _write_and_commit(rank, world_size, target, plan, encoded, own, keep_last)
    except BaseException:
        if rank == 0 and plan is not None:  # a collective failed (a rank died): leave no temp directory behind
            discard(Path(plan.tmp))
        raise
    _dist.raise_reported(outcome, own, f"to save checkpoint {target}")
    return target


def _write_and_commit(rank: int, world_size: int, target: Path, plan: _Plan | None, encoded: Any,
                      own: Exception | None, keep_last: int | None) -> tuple[list[_Report], Exception | None]:
    """Steps 1 (broadcast) to 4 of the protocol; every rank's report, and this rank's own error if any."""
    plan = _dist.broadcast(plan)  # None: rank 0 failed, and the last broadcast says why
    files: dict[str, dict[str, Any]] | None = None
    if own is None and plan is not None:
        files, own = _attempt(lambda: _write_rank(rank, target, plan, encoded))
    if plan is not None and plan.sharded:  # a collective: every rank joins DCP's save, even one that failed above
        sharded = encoded[3] if encoded is not None and own is None else {}
        shard_files, error = _attempt(lambda: write_shards(Path(plan.tmp), sharded, rank, plan.hash_name,
                                                           plan.durable))
        own = own or error
        files = None if own is not None else {**(files or {}), **(shard_files or {})}
    gathered = _dist.gather((files, _dist.describe(own)))  # the barrier: returns once every rank has reported
    outcome: list[_Report] | None = None
    if gathered is not None:  # on rank 0 only
        outcome, install_error = _commit(gathered, plan, encoded, keep_last, world_size)
        own = own or install_error
    outcome = _dist.broadcast(outcome)  # every rank waits here until rank 0 has committed or given up
    assert outcome is not None
    return outcome, own


def _plan(target: Path, hash_name: str, durable: bool, sharded: bool) -> _Plan:
    tmp = new_tmp(target)
    if sharded:
        (tmp / SHARDS).mkdir()
    return _Plan(str(target), str(tmp), hash_name, durable, sharded)


def _encode(rank: int, replicated_state: Any, rank_state: Any, metadata: dict[str, Any] | None,
            keep_last: int | None, hash_name: str
            ) -> tuple[_Encoded | None, _Encoded, dict[str, Any], dict[str, Any]]:
    """``(replicated on rank 0, this rank's own, metadata, sharded tensors by DCP name)``.

    Every rank encodes the replicated state: its sharded tensors are every
    rank's to write (the JSON and plain tensors stay rank 0's).
    """
    check_hash_name(hash_name)
    check_keep_last(keep_last)
    (data, tensors), (own_data, own_tensors) = encode(replicated_state), encode(rank_state)
    plain, sharded = split_sharded(tensors)
    own_plain, own_sharded = split_sharded(own_tensors)
    sharded |= {RANK_PREFIX + name: tensor for name, tensor in own_sharded.items()}
    replicated = (data, plain) if rank == 0 else None
    return replicated, (own_data, own_plain), checked_metadata(metadata), sharded


def _write_rank(rank: int, target: Path, plan: _Plan, encoded: Any) -> dict[str, dict[str, Any]]:
    """This rank's files in the agreed temp directory: ``rank-<r>/``, and on rank 0 the replicated state too."""
    if Path(plan.target) != target:
        raise CheckpointError(f"rank {rank} was asked to save {target}, but rank 0 is saving {plan.target}; every "
                              "rank must pass the same path to save_checkpoint_parts().")
    tmp, hash_name, durable = Path(plan.tmp), plan.hash_name, plan.durable
    if not tmp.is_dir():  # e.g. a per-node local directory: rank 0 made it on its node's disk, not on this one
        raise CheckpointError(f"rank {rank} cannot see {tmp}, the temporary directory rank 0 made for this "
                              "checkpoint: save_checkpoint_parts() needs a directory every rank sees on the same "
                              "filesystem (one machine, or a shared mount on every node); a per-node local "
                              "directory cannot hold one checkpoint. Put the checkpoint directory (ModelCheckpoint's "
                              "dirpath, default_root_dir) on a filesystem mounted on every node.")
    replicated, own, _, _ = encoded
    # Rank 0 writes the replicated state -- over the tensors file its own last save retired, when it may (_spare).
    files = (write_part(tmp, *replicated, hash_name, durable, take_spare(target.parent)) if replicated is not None
             else {})
    part = tmp / rank_dir(rank)
    part.mkdir()
    files |= {f"{rank_dir(rank)}/{name}": entry for name, entry in write_part(part, *own, hash_name,
                                                                             durable).items()}
    if durable:
        fsync_dir(part)  # its entries; rank 0 fsyncs the temp directory that holds part itself
    return files


def _commit(gathered: list[tuple[dict[str, Any] | None, _Report]], plan: _Plan | None, encoded: Any,
            keep_last: int | None, world_size: int) -> tuple[list[_Report], Exception | None]:
    """On rank 0, once every rank reported: install the checkpoint if every part was written, else clean up."""
    reports = [report for _, report in gathered]
    if plan is None:
        return reports, None  # rank 0 failed before making the temp directory; its report says why
    target, tmp = Path(plan.target), Path(plan.tmp)
    error = None
    if all(report is None for report in reports):
        files: dict[str, dict[str, Any]] = {}
        for rank_files, _ in gathered:
            files |= rank_files or {}
        _, error = _attempt(lambda: _install(target, tmp, files, encoded[2], keep_last, plan.hash_name,
                                             plan.durable, world_size))
        reports[0] = _dist.describe(error)
    if any(report is not None for report in reports):
        discard(tmp)
    return reports, error


def _install(target: Path, tmp: Path, files: dict[str, dict[str, Any]], metadata: dict[str, Any],
             keep_last: int | None, hash_name: str, durable: bool, world_size: int) -> None:
    order = files_for(world_size) + tuple(shard_names(files))
    for name in order:
        if name not in files or not (tmp / name).is_file() or (tmp / name).stat().st_size != files[name]["size"]:
            raise CheckpointError(f"{tmp / name} is not on disk as the rank that wrote it reported it; "
                                  "save_checkpoint_parts() needs a directory every rank sees on the same "
                                  "filesystem (one machine, or a shared mount).")
    entries = manifest({name: files[name] for name in order}, hash_name, metadata, world_size)
    commit(tmp, target, entries, hash_name, durable)
    if keep_last is not None:
        prune(target.parent, keep_last, keep=target)


def _check_world_size(path: Path, manifest_: dict[str, Any], world_size: int) -> None:
    """Refuse a checkpoint written at another world size, or without rank parts, naming what wrote it."""
    saved = world_size_of(manifest_)
    if saved is None and world_size == 1:
        raise WorldSizeError(f"{path} is a single-process checkpoint (written by save_checkpoint_dir(), without rank "
                             "parts), so it cannot be split into replicated and per-rank state. Load it with "
                             "load_checkpoint_dir().")
    if saved is None:
        raise WorldSizeError(f"{path} is a single-process checkpoint (world size 1, written by "
                             f"save_checkpoint_dir()), but this run has world size {world_size}. Resume it in one "
                             "process with load_checkpoint_dir(), or resume this run from a checkpoint written by "
                             f"save_checkpoint_parts() at world size {world_size}.")
    if saved != world_size:
        raise WorldSizeError(f"{path} was written at world size {saved}, but this run has world size {world_size}. "
                             f"Resume it with {saved} process(es) (torchrun --nproc-per-node {saved} ...): each "
                             "rank's RNG states and data position are saved per rank and cannot be re-split for "
                             "another world size.")


def _read_rank(path: Path, rank: int, world_size: int, map_location: Any) -> tuple[Any, Any, dict[str, Any], Any]:
    """This rank's checked files, not decoded yet: ``(replicated, own, manifest, shard index or None)``."""
    if not 0 <= rank < world_size:
        raise CheckpointError(f"rank={rank} is not a rank of world size {world_size}; pass 0 <= rank < world_size.")
    manifest_ = read_manifest(path)
    _check_world_size(path, manifest_, world_size)
    problems = unlisted(path, manifest_, range(rank, rank + 1))  # each rank checks its own dir; verify checks all
    if problems:
        raise CheckpointError(problems[0])
    # The ranks split checking the shard files (the agreement after this read makes one rank's failure all's).
    share = _dist.rank_and_world_size() if _dist.active() else None  # alone (no group), it checks them all
    index = shard_index(path, manifest_, share=share) if is_sharded_manifest(manifest_) else None
    return (read_part(path, "", manifest_, map_location), read_part(path, rank_dir(rank), manifest_, map_location),
            manifest_, index)


def _decoded(path: Path, rank: int, read: tuple[Any, Any, dict[str, Any], Any],
             shards: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    (data, tensors), (own_data, own_tensors), manifest_, _ = read
    return (decode_part(path, "", data, tensors_of_part("", tensors, shards)),
            decode_part(path, rank_dir(rank), own_data, tensors_of_part(rank_dir(rank), own_tensors, shards)),
            manifest_)


def load_checkpoint_parts(path: str | os.PathLike[str], rank: int | None = None, world_size: int | None = None,
                          map_location: Any = None, template: Template | None = None
                          ) -> tuple[Any, Any, dict[str, Any]]:
    """``(replicated_state, rank_state, manifest)`` for this rank, each file checked against the manifest first.

    ``rank`` and ``world_size`` default to the process group's (0 and 1
    without one).  A checkpoint written at another world size, or a
    single-process one, raises :class:`WorldSizeError` naming the world size
    that wrote it.  With a process group this is a collective: every rank
    calls it, and if any rank's part fails to load, every rank raises.

    A sharded checkpoint's sharded tensors are read into
    ``template(name, shape, dtype)`` -- this run's DTensor of that logical
    shape, so each rank reads its own slices (DCP reshards) -- or whole when
    the template gives None or there is none.
    """
    group_rank, group_world_size = _dist.rank_and_world_size()
    rank = group_rank if rank is None else rank
    world_size = group_world_size if world_size is None else world_size
    path = Path(path)
    read, own = _attempt(lambda: _read_rank(path, rank, world_size, map_location))
    _dist.agree(own, f"to load its part of checkpoint {path}")
    assert read is not None
    shards: dict[str, Any] | None = {}
    if read[3] is not None:  # the same on every rank: one manifest
        shards, own = _attempt(lambda: load_shards(path, read[3], template, distributed=_dist.active()))
        _dist.agree(own, f"to read the shards of checkpoint {path}")
    loaded, own = _attempt(lambda: _decoded(path, rank, read, shards or {}))
    _dist.agree(own, f"to decode its part of checkpoint {path}")
    assert loaded is not None
    return loaded


def load_latest_parts(root: str | os.PathLike[str], map_location: Any = None
                      ) -> tuple[Path | None, tuple[Any, Any, dict[str, Any]] | None, list[tuple[Path, str]]]:
    """Collective: ``(path, (replicated_state, rank_state, manifest), skipped)`` of the newest loadable checkpoint.

    Rank 0 lists the candidates and broadcasts them, so every rank tries the
    same ones in the same order; a checkpoint that fails on any rank is
    skipped by all, with the reason.  A valid checkpoint for another world
    size raises :class:`WorldSizeError` instead of falling back to an older one.
    ``(None, None, skipped)`` when nothing under ``root`` loads.
    """
    rank, _ = _dist.rank_and_world_size()
    paths = _dist.broadcast([str(p) for p in candidates(root)] if rank == 0 else None)
    skipped: list[tuple[Path, str]] = []
    for path in paths or []:
        try:
            return Path(path), load_checkpoint_parts(path, map_location=map_location), skipped
        except WorldSizeError:
            raise
        except CheckpointError as exc:
            skipped.append((Path(path), str(exc)))
    return None, None, skipped

