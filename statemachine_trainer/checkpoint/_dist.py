"""The torch.distributed collectives a multi-process checkpoint uses, and their single-process stand-ins.

Every function here is a collective: with a process group initialized, every
rank must call it, in the same order.  Without one (a plain single process)
each returns what the lone rank 0 would get, so ``save_checkpoint_parts`` and
friends run unchanged at world size 1.  All of them are torch.distributed's
own object collectives; nothing here talks to other processes any other way.

:func:`agree` turns one rank's failure into every rank's: a rank that raised
while the others succeeded would otherwise leave them waiting forever in the
next collective.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as dist

from ._errors import CheckpointError, WorldSizeError

__all__ = ["active", "agree", "all_gather", "broadcast", "describe", "gather", "raise_reported", "rank_and_world_size"]

_T = TypeVar("_T")


def active() -> bool:
    """Whether a default process group is up (torchrun + ``init_process_group``)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def broadcast(obj: _T) -> _T:
    """Rank 0's ``obj``, on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: _T) -> list[_T] | None:
    """Every rank's ``obj`` in rank order, on rank 0; None on the others."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: _T) -> list[_T]:
    """Every rank's ``obj`` in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def describe(exc: BaseException | None) -> tuple[bool, str] | None:
    """A failure as picklable data: (is a world-size mismatch, message)."""
    if exc is None:
        return None
    text = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
    return isinstance(exc, WorldSizeError), text


def raise_reported(reports: list[tuple[bool, str] | None], own: BaseException | None, doing: str) -> None:
    """Raise ``own`` if this rank failed, else the first other rank's failure; return if none failed."""
    if own is not None:
        raise own
    for rank, report in enumerate(reports):
        if report is not None:
            world_size_mismatch, text = report
            error = WorldSizeError if world_size_mismatch else CheckpointError
            raise error(f"rank {rank} failed {doing}: {text}")


def agree(own: BaseException | None, doing: str) -> None:
    """Collective: every rank raises if any rank failed ``doing`` (its own error where it has one)."""
    raise_reported(all_gather(describe(own)), own, doing)
