"""``Optimization``: the one place that calls training_step, backward, step and zero_grad.

The optimization loops decide *which* optimizer acts and *when*; this object
does the acting, with the flags resolved once per fit (accumulation, clipping,
precision, several optimizers or one).  Keeping it out of the loops means a
custom optimization loop gets exactly the same step as the built-in one.

The epoch loop announces each batch with :meth:`begin_batch` (its index, its
number in the fit, whether it is the epoch's last), so the accumulation window
and the optimizer frequencies are functions of state the loops checkpoint.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import torch

from ._hooks import HookRelay
from ._optim import ConfigError, OptimizerSetup
from ._precision import Precision
from ._results import Results
from ._strategy import identity_gate
from .state import OptimizationProgress

__all__ = ["ManualOptimizer", "Optimization"]

#: Optimizers whose step() evaluates the loss itself, possibly several times.
_NEEDS_CLOSURE = (torch.optim.LBFGS,)


class Optimization:
    def __init__(self, module: Any, setup: OptimizerSetup, precision: Precision, hooks: HookRelay | None,
                 results: Results, accumulate_grad_batches: int, gradient_clip_val: float | None,
                 gradient_clip_algorithm: str) -> None:
        self.module, self.setup, self.precision, self.hooks, self.results = module, setup, precision, hooks, results
        self.accumulate = accumulate_grad_batches
        self.clip_val, self.clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.optimizers = setup.optimizers
        self.toggle = len(self.optimizers) > 1 and module.automatic_optimization
        self.pass_index = len(self.optimizers) > 1 and takes_optimizer_idx(module.training_step)
        self.batch_idx = 0
        self.batch_number = 0
        self.is_last_batch = False
        self.stepped = False  # whether any optimizer stepped on the current batch
        self._all = range(len(self.optimizers))
        self._active: Any = self._all
        # The strategy's: training_step (called through DDP under strategy="ddp" when a step runs one backward),
        # its gate for each loss (DDP, several backwards per step) and its no_sync() for the micro-batches of an
        # accumulation window.
        self.forward_step: Callable[..., Any] = module.training_step
        self.gate: Callable[[torch.Tensor], torch.Tensor] = identity_gate
        self.no_sync: Callable[[], Any] = contextlib.nullcontext

    @property
    def one_backward(self) -> bool:
        """Whether every step runs exactly one backward: automatic, one optimizer, a step that returns its loss."""
        return self.runs_one_backward(self.module, self.setup)

    @staticmethod
    def runs_one_backward(module: Any, setup: OptimizerSetup) -> bool:
        return (module.automatic_optimization and len(setup.optimizers) == 1
                and not inspect.isgeneratorfunction(type(module).training_step))

    # -- per batch -----------------------------------------------------------------------
    def begin_batch(self, batch_idx: int, batch_number: int, is_last_batch: bool, resumed: bool = False) -> None:
        """Announce a batch; ``resumed``: the same batch again after a resume, so ``stepped`` (restored) stays."""
        self.batch_idx, self.batch_number, self.is_last_batch = batch_idx, batch_number, is_last_batch
        if not resumed:
            self.stepped = False
        self._active = self._all if self.setup.frequencies is None else self.setup.active_optimizers(batch_number)

    def active_optimizers(self) -> Any:
        return self._active

    @property
    def window_closes(self) -> bool:
        """Whether this batch ends a gradient-accumulation window (so the optimizers step)."""
        return (self.batch_idx + 1) % self.accumulate == 0 or self.is_last_batch

    # -- the step ------------------------------------------------------------------------
    def call_training_step(self, batch: Any, batch_idx: int, optimizer_idx: int | None) -> Any:
        results = self.results
        results.fx = "training_step"
        if self.module.automatic_optimization:
            # the generator loop's next() runs under optimizer_step's autocast instead
            if optimizer_idx is not None and self.pass_index:
                return self.module.training_step(batch, batch_idx, optimizer_idx)
            return self.forward_step(batch, batch_idx)
        with self.precision.autocast():
            return self.module.training_step(batch, batch_idx)

    def optimizer_step(self, index: int, loss_fn: Callable[[], torch.Tensor | None],
                       progress: OptimizationProgress) -> None:
        """Forward, backward and (when the accumulation window closes) step optimizer ``index``."""
        optimizer = self.optimizers[index]
        if self.toggle:
            self.module.toggle_optimizer(optimizer)
        try:
            if self.window_closes:
                self._step(optimizer, lambda: self._forward_backward(loss_fn), progress)
            else:
                with self.no_sync():  # DDP: keep this micro-batch's gradients local; the window's last syncs
                    self._forward_backward(loss_fn)
        finally:
            if self.toggle:
                self.module.untoggle_optimizer(optimizer)

    def _forward_backward(self, loss_fn: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        with self.precision.autocast():
            loss = loss_fn()
        if loss is None:
            return None  # documented: a training_step that returns None skips this optimizer's step
        if self.accumulate > 1:
            loss = loss / self.accumulate  # the window's gradient is the mean of its micro-batches'
        self.backward(loss)
        return loss

    def _step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], torch.Tensor | None],
              progress: OptimizationProgress) -> None:
        if isinstance(optimizer, _NEEDS_CLOSURE):
            progress.optimizer.step.increment_ready()
            self.precision.step(optimizer, lambda: self._before_step(optimizer, closure()))
            self._after_step(optimizer, progress)
        elif closure() is not None:  # evaluated here, not inside step(): a None loss skips the step
            self.step_optimizer(optimizer, progress)

    def step_optimizer(self, optimizer: torch.optim.Optimizer, progress: OptimizationProgress) -> None:
        """Step ``optimizer`` on the gradients it has, then zero them -- with the hooks, clipping and counters.

        Public so a custom optimization loop that computes its gradients its own
        way (see ``examples/val_guided.py``) steps exactly like the built-in one.
        """
        progress.optimizer.step.increment_ready()
        self._before_step(optimizer, True)
        self.precision.step(optimizer)
        self._after_step(optimizer, progress)

    def _before_step(self, optimizer: torch.optim.Optimizer, loss: Any) -> Any:
        if loss is not None:
            self.hooks.on_before_optimizer_step(optimizer)
            if self.clip_val is not None:
                self.clip_gradients(optimizer, self.clip_val, self.clip_algorithm)
        return loss

    def _after_step(self, optimizer: torch.optim.Optimizer, progress: OptimizationProgress) -> None:
        self.stepped = True  # tells the epoch loop that step-interval schedulers are due
        progress.optimizer.step.increment_completed()
        progress.optimizer.zero_grad.increment_ready()
        self.hooks.on_before_zero_grad(optimizer)
        progress.optimizer.zero_grad.increment_started()
        optimizer.zero_grad(set_to_none=True)
        progress.optimizer.zero_grad.increment_completed()

    # -- shared with manual optimization -------------------------------------------------
    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        loss = self.gate(loss)
        self.hooks.on_before_backward(loss)
        self.precision.backward(loss, *args, **kwargs)
        self.hooks.on_after_backward()

    def clip_gradients(self, optimizer: torch.optim.Optimizer, value: float | None, algorithm: str) -> None:
        if value is None:
            return
        self.precision.unscale(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(params, value)
        elif algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, value)
        else:
            raise ConfigError(f"gradient_clip_algorithm={algorithm!r}: use 'norm' or 'value'.")


class ManualOptimizer:
    """What ``self.optimizers()`` returns in manual mode: the optimizer, with the step hooks and scaling."""

    def __init__(self, optimizer: torch.optim.Optimizer, optimization: Optimization,
                 progress: Callable[[], OptimizationProgress]) -> None:
        self.optimizer = optimizer
        self._optimization = optimization
        self._progress = progress

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        optimization, progress = self._optimization, self._progress()
        progress.optimizer.step.increment_ready()
        optimization.hooks.on_before_optimizer_step(self.optimizer)
        result = optimization.precision.step(self.optimizer, closure)
        optimization.stepped = True
        progress.optimizer.step.increment_completed()
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        progress = self._progress()
        progress.optimizer.zero_grad.increment_ready()
        self._optimization.hooks.on_before_zero_grad(self.optimizer)
        progress.optimizer.zero_grad.increment_started()
        self.optimizer.zero_grad(set_to_none=set_to_none)
        progress.optimizer.zero_grad.increment_completed()

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def __repr__(self) -> str:
        return f"ManualOptimizer({self.optimizer!r})"


def takes_optimizer_idx(step: Callable[..., Any]) -> bool:
    try:
        params = [p for p in inspect.signature(step).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 3
