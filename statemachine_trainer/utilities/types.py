"""The type aliases ported Lightning code annotates with (``lightning.pytorch.utilities.types``).

They describe what our steps and hooks accept; the names are Lightning's so
an annotated ``training_step(...) -> STEP_OUTPUT`` ports by renaming the import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

__all__ = ["EVAL_DATALOADERS", "STEP_OUTPUT", "TRAIN_DATALOADERS", "LRSchedulerTypeUnion", "OptimizerLRScheduler"]

#: What a step returns: a loss tensor, a dict with a ``"loss"`` key (and anything else), or None to skip.
STEP_OUTPUT = Tensor | Mapping[str, Any] | None
#: A training dataloader (any iterable of batches).
TRAIN_DATALOADERS = Any
#: Evaluation dataloaders: one iterable, or a list / dict of them.
EVAL_DATALOADERS = Any
#: A learning-rate scheduler configure_optimizers may return.
LRSchedulerTypeUnion = LRScheduler | ReduceLROnPlateau
#: What ``configure_optimizers`` may return (see README "Optimization modes" for every accepted shape).
OptimizerLRScheduler = (
    Optimizer
    | Sequence[Optimizer]
    | tuple[Sequence[Optimizer], Sequence[LRSchedulerTypeUnion | Mapping[str, Any]]]
    | Mapping[str, Any]
    | Sequence[Mapping[str, Any]]
    | None
)
