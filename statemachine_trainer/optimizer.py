"""``TrainingOptimizer``: a torch optimizer as a module's step code sees it (Lightning's ``LightningOptimizer``).

``self.optimizers()`` returns one per optimizer in manual optimization, and an
overridden ``optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)``
receives one in automatic optimization.  It wraps the optimizer that
``configure_optimizers`` returned (``.optimizer``) and adds what the Trainer
does around a step:

* ``step(closure=None)``: the closure first (if given: it computes the loss
  and gradients), then ``on_before_optimizer_step``, then -- in automatic
  optimization -- gradient clipping (``configure_gradient_clipping``), then
  the optimizer's own step, through the precision plugin's loss scaler.  An
  optimizer that evaluates the loss itself (LBFGS) gets the closure, with
  those hooks inside it, as in Lightning.
* ``zero_grad(set_to_none=True)``: the zeroing, with no hook (as Lightning's: the
  ``on_before_zero_grad`` hook belongs to the automatic loops' step).
* ``param_groups``, ``state``, ``defaults``, ``state_dict()``,
  ``load_state_dict()``: the wrapped optimizer's, unchanged (e.g. a
  learning-rate warmup writes ``group["lr"]``).
* ``toggle_model(sync_grad=True)``: a context in which only this optimizer's
  parameters take gradients (``module.toggle_optimizer``); with
  ``sync_grad=False`` backwards inside it skip DDP's all-reduce.

In manual optimization ``step`` also counts the step (``global_step``).  In
automatic optimization the loop counts one step per ``optimizer_step`` call,
whatever the override does.  The step's work is done by the run's
optimization object; this class only holds the optimizer and forwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["TrainingOptimizer"]


class TrainingOptimizer:
    """A torch optimizer with the Trainer's step: hooks, clipping, loss scaling and step counting."""

    def __init__(self, optimizer: torch.optim.Optimizer, optimization: Any,
                 progress: Callable[[], Any] | None = None) -> None:
        #: The torch optimizer ``configure_optimizers`` returned.
        self.optimizer = optimizer
        self._optimization = optimization  # the run's Optimization: does the step's work
        self._progress = progress  # manual optimization: where steps are counted; None: the loop counts

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step: ``closure()`` first if given, then ``on_before_optimizer_step``, clipping, ``optimizer.step()``.

        Returns what the optimizer's ``step`` returns (with a closure, usually its loss).
        """
        if closure is not None and not callable(closure):
            raise TypeError(f"{self!r}.step(closure=...) needs a callable closure, got {type(closure).__name__}.")
        progress = None if self._progress is None else self._progress()
        return self._optimization.wrapper_step(self.optimizer, closure, progress)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or, by default, drop) this optimizer's gradients; no hook fires (as in Lightning)."""
        self._optimization.wrapper_zero_grad(self.optimizer, set_to_none,
                                             None if self._progress is None else self._progress())

    @contextlib.contextmanager
    def toggle_model(self, sync_grad: bool = True) -> Iterator[None]:
        """Inside it only this optimizer's parameters require gradients; ``sync_grad=False``: no DDP all-reduce."""
        module = self._optimization.module
        module.toggle_optimizer(self)
        try:
            with contextlib.nullcontext() if sync_grad else self._optimization.no_sync():
                yield
        finally:
            module.untoggle_optimizer(self)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    def __repr__(self) -> str:
        return f"TrainingOptimizer({type(self.optimizer).__name__})"
