"""How many of the step arguments a user's step method takes, worked out once per run from its signature.

Lightning calls ``training_step(batch)`` when the method has no
``batch_idx`` parameter, and ``validation_step(batch, batch_idx,
dataloader_idx)`` only when it takes the third.  The loops pass the leading
arguments the method accepts: ``step(*args[:step_arity(step, len(args))])``,
with the arity computed when the run starts, not per batch.  The evaluation
and prediction steps drop only ``batch_idx`` (:func:`takes_batch_idx`):
``dataloader_idx`` follows the batch when there are several dataloaders, as
Lightning's ``_build_step_args_from_hook_kwargs`` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["step_arity", "takes_batch_idx"]


def step_arity(step: Callable[..., Any], most: int) -> int:
    """How many leading positional arguments (at most ``most``) the bound method ``step`` takes.

    ``*args`` takes them all; a signature that cannot be read (a builtin,
    some C extensions) is assumed to take them all, so the call fails, if it
    does, with the method's own error.
    """
    try:
        params = inspect.signature(step).parameters.values()
    except (TypeError, ValueError):
        return most
    count = 0
    for param in params:
        if param.kind == param.VAR_POSITIONAL:
            return most
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return min(count, most)


def takes_batch_idx(step: Callable[..., Any]) -> bool:
    """Whether ``step`` takes ``batch_idx`` after the batch (two positional parameters, or ``*args``)."""
    return step_arity(step, 2) == 2
