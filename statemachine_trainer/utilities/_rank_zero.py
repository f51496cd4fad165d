"""``rank_zero_only``: call a function on global rank 0 only; its ``rank`` is the process's global rank."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["rank_zero_info", "rank_zero_only", "rank_zero_warn"]

_T = TypeVar("_T")
#: Where launchers put the global rank (torchrun, SLURM, MPI), in the order they are trusted.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")
_log = logging.getLogger("statemachine_trainer")


def _rank_from_environment() -> int:
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def rank_zero_only(fn: Callable[..., _T]) -> Callable[..., _T | None]:
    """``fn`` runs on global rank 0; elsewhere the call does nothing and returns None.

    The rank is ``rank_zero_only.rank``: read from the launcher's environment
    at import and set by the Trainer when a distributed run starts, as in
    Lightning (so a decorated logger method also behaves in subprocesses).
    """

    @functools.wraps(fn)
    def on_rank_zero(*args: Any, **kwargs: Any) -> _T | None:
        return fn(*args, **kwargs) if rank_zero_only.rank == 0 else None

    return on_rank_zero


rank_zero_only.rank = _rank_from_environment()  # type: ignore[attr-defined]


@rank_zero_only
def rank_zero_info(message: str, *args: Any, **kwargs: Any) -> None:
    """``logging.info`` on rank 0 only (the ``statemachine_trainer`` logger)."""
    _log.info(message, *args, **kwargs)


@rank_zero_only
def rank_zero_warn(message: str | Warning, category: type[Warning] = UserWarning, stacklevel: int = 4) -> None:
    """``warnings.warn`` on rank 0 only: one warning per job, not one per process."""
    warnings.warn(message, category, stacklevel=stacklevel)
