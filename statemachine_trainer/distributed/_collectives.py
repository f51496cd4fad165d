"""The few collectives the Trainer needs, each a no-op when there is no process group.

Single-process code calls these freely: without an initialized
torch.distributed group every function answers as a world of one (the flag
itself, True, the object itself, the tensor itself).  With a group each is
one torch collective inside :func:`collective`, so a dead peer surfaces as a
:class:`RankFailure` naming the operation.

All of them block until every rank calls them, and ``any_rank`` /
``reduce_tensor`` read a value back to the host: call them at transition
boundaries or when logging with ``sync_dist=True``, not per hook.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from ._group import collective

__all__ = [
    "all_equal",
    "all_gather_tensor",
    "any_rank",
    "barrier",
    "broadcast_object",
    "gather_objects",
    "is_rank_zero",
    "rank",
    "reduce_tensor",
    "world_size",
]

T = TypeVar("T")
ReduceOp = Literal["mean", "sum", "max", "min"]
# "mean" is a SUM divided afterwards: no backend offers AVG everywhere (gloo has none).
_REDUCE_OPS = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def _group_device() -> torch.device:
    """Where the backend wants its tensors: NCCL only moves CUDA tensors, gloo is used here for CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of ranks; 1 without a process group."""
    return dist.get_world_size() if _active() else 1


def is_rank_zero() -> bool:
    """True on the one rank that writes checkpoints and logs (and in a single process)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (e.g. before rank 0 reads what all ranks wrote)."""
    if _active():
        with collective("barrier()"):
            dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on at least one.

    Used to agree on a preemption request at a transition boundary: a signal
    may reach one rank only, yet all must checkpoint at the same boundary.
    """
    if not _active():
        return bool(flag)
    value = torch.tensor([int(flag)], dtype=torch.int32, device=_group_device())
    with collective("any_rank()"):
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())  # the host sync is the point: every rank gets the same answer now


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), indexed by rank; ``[obj]`` in a single process."""
    if not _active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    with collective("gather_objects()"):
        dist.all_gather_object(gathered, obj)
    return gathered


def all_equal(obj: Any) -> bool:
    """True on every rank if all ranks passed equal objects.

    Used when loading a checkpoint to check every rank resumes at the same
    loop transition; call :func:`gather_objects` instead to say which differ.
    """
    first, *rest = gather_objects(obj)
    return all(other == first for other in rest)


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (e.g. the checkpoint path rank 0 chose)."""
    if not _active():
        return obj
    box = [obj]
    with collective(f"broadcast_object(src={src})"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_tensor(tensor: torch.Tensor, op: ReduceOp = "mean") -> torch.Tensor:
    """``tensor`` reduced over ranks with ``op``, for ``self.log(..., sync_dist=True)``.

    The result is detached and on ``tensor``'s device; the input is untouched.
    "mean" of an integer tensor is floating point, in one process as in many.
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"op={op!r} is not a reduction; use one of {', '.join(map(repr, _REDUCE_OPS))}.")
    if not _active():
        value = tensor.detach()
    else:
        # A copy on the backend's device: all_reduce works in place and the caller's tensor stays theirs.
        value = tensor.detach().to(_group_device(), copy=True)
        with collective(f"reduce_tensor(op={op!r})"):
            dist.all_reduce(value, op=_REDUCE_OPS[op])
    if op == "mean":
        value = value / world_size()
    return value.to(tensor.device)


def all_gather_tensor(tensor: torch.Tensor, group: Any = None, sync_grads: bool = False) -> torch.Tensor:
    """Every rank's ``tensor`` stacked on a new first dimension (``self.all_gather``); ``tensor`` without a group.

    ``sync_grads`` uses the autograd-aware gather, so a loss computed from the
    result sends gradients back to every rank's input.
    """
    if not _active():
        return tensor
    tensor = tensor.contiguous()
    with collective("all_gather"):
        if sync_grads:
            from torch.distributed.nn.functional import all_gather as gather_with_grads

            parts = gather_with_grads(tensor, group=group or dist.group.WORLD)
        else:
            parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, tensor, group=group)
    return torch.stack(parts)
