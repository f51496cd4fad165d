"""What the launcher told this process: its rank, the world, and where to meet the others.

``torchrun`` (and :func:`~statemachine_trainer.distributed.launch_workers`,
which drives the same elastic agent) starts every worker with six environment
variables.  Their presence is the *only* thing that tells a worker from the
plain ``python script.py`` parent that may have started it, so parsing them is
strict: a partial or contradictory set is a broken launch, and guessing a rank
from it would make two processes train as the same rank.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

__all__ = ["LAUNCHER_VARIABLES", "DistributedEnv"]

#: The variables torchrun sets for every worker, in the order of DistributedEnv's fields.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# Any of these means "a launcher started me".  MASTER_ADDR / MASTER_PORT alone do
# not: people export them in their shell profile for unrelated jobs.
_RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

_HOW_TO_LAUNCH = (
    "Launch with torchrun (python -m torch.distributed.run --nproc-per-node N script.py), which sets all of "
    + ", ".join(LAUNCHER_VARIABLES)
    + "; or unset them all to run a single process."
)


def _check_consistent(env: DistributedEnv) -> None:
    """Reject a world no launcher would produce, naming the variables that disagree."""
    if env.world_size < 1:
        raise ValueError(f"WORLD_SIZE={env.world_size} must be at least 1. {_HOW_TO_LAUNCH}")
    if not 0 <= env.rank < env.world_size:
        raise ValueError(f"RANK={env.rank} must be in [0, WORLD_SIZE={env.world_size}). {_HOW_TO_LAUNCH}")
    if not 1 <= env.local_world_size <= env.world_size:
        raise ValueError(
            f"LOCAL_WORLD_SIZE={env.local_world_size} must be in [1, WORLD_SIZE={env.world_size}]. {_HOW_TO_LAUNCH}"
        )
    if not 0 <= env.local_rank < env.local_world_size:
        raise ValueError(
            f"LOCAL_RANK={env.local_rank} must be in [0, LOCAL_WORLD_SIZE={env.local_world_size}). {_HOW_TO_LAUNCH}"
        )
    if not env.master_addr:
        raise ValueError(f"MASTER_ADDR is empty; it must name the host of rank 0. {_HOW_TO_LAUNCH}")
    if not 1 <= env.master_port <= 65535:
        raise ValueError(f"MASTER_PORT={env.master_port} must be a TCP port in [1, 65535]. {_HOW_TO_LAUNCH}")


@attrs.frozen
class DistributedEnv:
    """One worker's place in a torch.distributed job, as its launcher described it.

    Invariants (checked on construction): ``0 <= rank < world_size``,
    ``0 <= local_rank < local_world_size <= world_size``, a non-empty
    ``master_addr`` and a valid ``master_port``.
    """

    rank: int  # global rank, 0..world_size-1; rank 0 writes checkpoints and logs
    world_size: int  # number of workers in the whole job, over all nodes
    local_rank: int  # rank on this node, 0..local_world_size-1; picks the CUDA device
    local_world_size: int  # workers on this node
    master_addr: str  # host of the rendezvous store every rank connects to
    master_port: int  # its TCP port

    def __attrs_post_init__(self) -> None:
        _check_consistent(self)

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> DistributedEnv | None:
        """Read the launcher's variables; None when this process was not started by a launcher.

        Raises ValueError, naming the variable and the fix, when only some are
        set or their values contradict each other.
        """
        if not any(name in environ for name in _RANK_VARIABLES):
            return None
        missing = [name for name in LAUNCHER_VARIABLES if name not in environ]
        if missing:
            present = [name for name in LAUNCHER_VARIABLES if name in environ]
            raise ValueError(
                f"{', '.join(present)} set but {', '.join(missing)} not: a partial launcher environment. "
                + _HOW_TO_LAUNCH
            )
        ints = {name: _parse_int(name, environ[name]) for name in LAUNCHER_VARIABLES if name != "MASTER_ADDR"}
        return cls(
            rank=ints["RANK"],
            world_size=ints["WORLD_SIZE"],
            local_rank=ints["LOCAL_RANK"],
            local_world_size=ints["LOCAL_WORLD_SIZE"],
            master_addr=environ["MASTER_ADDR"],
            master_port=ints["MASTER_PORT"],
        )

    def to_environ(self) -> dict[str, str]:
        """The variables a launcher would set for this worker (the inverse of from_environ)."""
        values = attrs.astuple(self)
        return {name: str(value) for name, value in zip(LAUNCHER_VARIABLES, values, strict=True)}


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer. {_HOW_TO_LAUNCH}") from None
