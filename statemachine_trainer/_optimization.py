"""``Optimization``: the actions of an optimization step, one method each, with the flags resolved once per fit.

The optimization loops' tables decide *which* action runs *when* -- their rows
name ``training_step``, ``backward``, ``optimizer_step``, ``zero_grad`` and the
hooks around them (see ``loops/optimization.py``) -- and each row hook calls
one method here.  This object does the acting: precision (autocast, loss
scaling), the DDP parts the strategy lends it (``forward_step``, the loss
``gate``, ``no_sync``), clipping, and the step counters of the loop that asks.
It holds no state that outlives one hook, so a custom optimization loop gets
exactly the built-in step by calling the same methods (or ``step_optimizer``
for the whole STEP row at once), and a checkpoint never needs anything from it.

The epoch loop announces each batch with :meth:`begin_batch` (its index, its
number in the fit, whether it is the epoch's last), so the accumulation window
and the optimizer frequencies are functions of state the loops checkpoint.

The module's step hooks with a default (``backward``, ``optimizer_step``,
``optimizer_zero_grad``, ``configure_gradient_clipping``) are looked up once,
when the run's hook relay is set (:attr:`hooks`): an action calls the
module's override when there is one and does the work itself otherwise, so
a module that overrides none pays nothing.  An overridden ``optimizer_step``
makes every step a closure step (``needs_closure``): the closure runs
``training_step`` and the backward hooks inside ``optimizer.step(closure)``,
as in Lightning.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor  # a global, not torch.Tensor: torch's module __getattr__ defeats attribute caching

from ._hooks import HookRelay
from ._optim import ConfigError, OptimizerSetup
from ._precision import Precision
from ._results import Results
from ._step_args import takes_batch_idx
from ._strategy import identity_gate
from .optimizer import TrainingOptimizer
from .state import OptimizationProgress

__all__ = ["ManualOptimizer", "Optimization", "OptimizerClosureError", "StepOutputError", "batch_end_outputs",
           "loss_of", "manual_outputs"]

#: Optimizers whose step() evaluates the loss itself, possibly several times.
_NEEDS_CLOSURE = (torch.optim.LBFGS,)

#: The old private name of :class:`~statemachine_trainer.optimizer.TrainingOptimizer`.
ManualOptimizer = TrainingOptimizer


class StepOutputError(TypeError):
    """``training_step`` returned something the optimization mode cannot use."""


class OptimizerClosureError(RuntimeError):
    """An overridden ``optimizer_step`` returned without running the closure it was given."""


def loss_of(output: Any) -> torch.Tensor | None:
    """The loss in what ``training_step`` returned (or yielded): the tensor, ``output["loss"]``, or None (skip)."""
    if output is None or isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "loss" in output:
        return output["loss"]
    raise StepOutputError(f"training_step returned {type(output).__name__}; return the loss tensor, a dict with a "
                          "'loss' key, or None to skip the step.")


def batch_end_outputs(output: Any, loss: torch.Tensor | None) -> dict[str, Any]:
    """What ``on_train_batch_end`` gets in automatic optimization (Lightning's ``ClosureResult.asdict()``).

    ``{"loss": loss}`` -- detached, and divided by ``accumulate_grad_batches``
    as it was for backward -- plus a dict output's other keys; ``{}`` when
    the step returned None.  The graph is not kept alive past the step.
    """
    if loss is None:
        return {}
    if isinstance(output, dict):
        return {"loss": loss.detach(), **{key: value for key, value in output.items() if key != "loss"}}
    return {"loss": loss.detach()}


def manual_outputs(output: Any) -> dict[str, Any]:
    """What ``on_train_batch_end`` gets in manual optimization (Lightning's ``ManualResult``).

    A tensor becomes ``{"loss": detached}``, a dict is copied with its
    ``"loss"`` detached, None gives ``{}``; anything else is refused.
    """
    if output is None:
        return {}
    if isinstance(output, torch.Tensor):
        return {"loss": output.detach()}
    if isinstance(output, dict):
        outputs = dict(output)
        if isinstance(outputs.get("loss"), torch.Tensor):
            outputs["loss"] = outputs["loss"].detach()
        return outputs
    raise StepOutputError(f"In manual optimization training_step must return a tensor, a dict, or nothing; it "
                          f"returned {type(output).__name__} ({output!r:.60}). Return the loss tensor (or a dict "
                          "of values) for on_train_batch_end, or None.")


class Optimization:
    def __init__(self, module: Any, setup: OptimizerSetup, precision: Precision, hooks: HookRelay | None,
                 results: Results, accumulate_grad_batches: int, gradient_clip_val: float | None,
                 gradient_clip_algorithm: str | None) -> None:
        self.module, self.setup, self.precision, self.results = module, setup, precision, results
        self.accumulate = accumulate_grad_batches
        self.clip_val, self.clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.optimizers = setup.optimizers
        #: The module's optimization mode for this fit (read once: an attribute of an nn.Module is slow to read).
        self.automatic = bool(module.automatic_optimization)
        self.toggle = len(self.optimizers) > 1 and self.automatic
        self.pass_index = len(self.optimizers) > 1 and takes_optimizer_idx(module.training_step)
        #: training_step(batch) or training_step(batch, batch_idx): its signature says, once per run.
        self.takes_batch_idx = takes_batch_idx(module.training_step)
        #: Per optimizer: whether its step() must get a closure that computes the loss (LBFGS).
        self.needs_closure = tuple(isinstance(opt, _NEEDS_CLOSURE) for opt in self.optimizers)
        self.any_closure = any(self.needs_closure)
        #: What an overridden optimizer_step receives: the optimizers wrapped (the loop counts the steps).
        self.wrapped = tuple(TrainingOptimizer(opt, self) for opt in self.optimizers)
        self.step_override = self.backward_override = self.zero_grad_override = self.clip_override = False
        self._gate: Callable[[torch.Tensor], torch.Tensor] = identity_gate
        self.hooks = hooks  # works out which step hooks the module overrides (again when the Trainer sets it)
        self.batch_idx = 0
        self.batch_number = 0
        self.is_last_batch = False
        self._all = tuple(range(len(self.optimizers)))  # a tuple, not a range: indexing a tuple is cached per step
        #: Indices of the optimizers that step on this batch, in order (all of them without frequencies).
        self.active: Any = self._all
        #: Whether this batch ends a gradient-accumulation window (so the optimizers step).
        self.window_closes = self.accumulate == 1  # what begin_batch says of the first batch of a long epoch
        # The strategy's: training_step (called through DDP under strategy="ddp" when a step runs one backward),
        # its gate for each loss (DDP, several backwards per step) and its no_sync() for the micro-batches of an
        # accumulation window.
        self.forward_step: Callable[..., Any] = module.training_step
        self.no_sync: Callable[[], Any] = contextlib.nullcontext

    @property
    def gate(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The strategy's gate for each loss before backward (DDP); setting it resolves :attr:`plain_backward`."""
        return self._gate

    @gate.setter
    def gate(self, gate: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._gate = gate
        self._resolve_backward()

    def _resolve_backward(self) -> None:
        # Whether a loss goes straight to autograd: no gate (one process), no override, no scaler (not 16-mixed).
        self.plain_backward = (self._gate is identity_gate and not self.backward_override
                               and self.precision.scaler is None)

    @property
    def hooks(self) -> Any:
        """The run's hook relay; setting it works out which of the module's step hooks are overridden."""
        return self._hooks

    @hooks.setter
    def hooks(self, relay: HookRelay | None) -> None:
        self._hooks = relay
        overrides = relay.overrides if relay is not None else (lambda name: False)
        self.backward_override = overrides("backward")
        self.zero_grad_override = overrides("optimizer_zero_grad")
        self.clip_override = overrides("configure_gradient_clipping")
        self.step_override = overrides("optimizer_step")
        self.scheduler_step_override = overrides("lr_scheduler_step")  # read by Run.step_schedulers
        # The two relayed hooks of every automatic step, or None when nobody has them this run (no call per step).
        self._before_step_hook = None if relay is None or relay.idle("on_before_optimizer_step") else \
            relay.on_before_optimizer_step
        self._before_zero_grad_hook = None if relay is None or relay.idle("on_before_zero_grad") else \
            relay.on_before_zero_grad
        closure = tuple(isinstance(opt, _NEEDS_CLOSURE) or self.step_override for opt in self.optimizers)
        self.needs_closure, self.any_closure = closure, any(closure)
        self._resolve_backward()

    @staticmethod
    def runs_one_backward(module: Any, setup: OptimizerSetup) -> bool:
        """Whether every step runs exactly one backward: automatic, one optimizer, a step that returns its loss."""
        return (module.automatic_optimization and len(setup.optimizers) == 1
                and not inspect.isgeneratorfunction(type(module).training_step))

    # -- per batch -----------------------------------------------------------------------
    def begin_batch(self, batch_idx: int, batch_number: int, is_last_batch: bool) -> None:
        """Announce a batch: its index in the epoch, its number in the fit, whether it is the epoch's last.

        What the batch's hooks ask (``active``, ``window_closes``) is worked out here, once per batch.
        """
        self.batch_idx, self.batch_number, self.is_last_batch = batch_idx, batch_number, is_last_batch
        self.active = self._all if self.setup.frequencies is None else self.setup.active_optimizers(batch_number)
        self.window_closes = (batch_idx + 1) % self.accumulate == 0 or is_last_batch

    # -- the step's actions, in the order the automatic tables run them -------------------------
    def call_training_step(self, batch: Any, batch_idx: int, optimizer_idx: int | None) -> Any:
        """``training_step`` (through DDP's forward where the strategy says so); manual mode under autocast."""
        self.results.fx = "training_step"
        if self.automatic:
            # the automatic loops run this (or a generator's next()) under autocast themselves
            if optimizer_idx is not None and self.pass_index:
                return self.module.training_step(batch, batch_idx, optimizer_idx)
            return self.forward_step(batch, batch_idx) if self.takes_batch_idx else self.forward_step(batch)
        with self.precision.autocast():
            if self.takes_batch_idx:
                return self.module.training_step(batch, batch_idx)
            return self.module.training_step(batch)

    def loss_to_backward(self, output: Any) -> torch.Tensor | None:
        """The loss to backpropagate from a step's output; None: the step returned None, skip this optimizer."""
        loss = output if type(output) is Tensor else loss_of(output)  # the usual output first: no call
        if loss is None:
            _warn_no_loss()
        elif self.accumulate > 1:
            loss = loss / self.accumulate  # the window's gradient is the mean of its micro-batches'
        return loss

    def backward_loss(self, loss: torch.Tensor) -> None:
        """The automatic loops' backward: straight to autograd when nothing stands between (``plain_backward``)."""
        if self.plain_backward:
            loss.backward()
        else:
            self.run_backward(loss)

    def run_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()`` with precision scaling -- the loss passing DDP's forward first (the gate).

        The one place a loss meets the gate: ``manual_backward`` comes here, and
        so does the automatic loops' ``backward`` row (:meth:`backward_loss`)
        whenever a gate, an override or a scaler stands between.
        """
        gate = self._gate
        if gate is not identity_gate:  # one process: nothing to pass the loss through
            loss = gate(loss)
        if self.backward_override:  # the module's backward(loss, *args, **kwargs) gets the scaled loss
            self.hooks.backward(self.precision.scale(loss), *args, **kwargs)
        else:
            self.precision.backward(loss, *args, **kwargs)

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, progress: OptimizationProgress) -> None:
        progress.optimizer.step.increment_ready()
        hook = self._before_step_hook
        if hook is not None:
            hook(optimizer)

    def clip(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip before a step: the module's ``configure_gradient_clipping``, or the flags' (``gradient_clip_val``)."""
        if self.clip_override:
            self.hooks.configure_gradient_clipping(optimizer, gradient_clip_val=self.clip_val,  # Lightning's keywords
                                                   gradient_clip_algorithm=self.clip_algorithm)
        elif self.clip_val is not None:
            self.clip_gradients(optimizer, self.clip_val, self.clip_algorithm)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, progress: OptimizationProgress,
                       closure: Callable[[], Any] | None = None) -> Any:
        if closure is None and self.precision.scaler is None:  # no scaler's step between: the optimizer's own
            result = optimizer.step()
        else:
            result = self.precision.step(optimizer, closure)
        progress.optimizer.step.increment_completed()
        return result

    def before_zero_grad(self, optimizer: torch.optim.Optimizer, progress: OptimizationProgress) -> None:
        progress.optimizer.zero_grad.increment_ready()
        hook = self._before_zero_grad_hook
        if hook is not None:
            hook(optimizer)

    def zero_grad(self, optimizer: torch.optim.Optimizer, progress: OptimizationProgress,
                  set_to_none: bool = True) -> None:
        progress.optimizer.zero_grad.increment_started()
        if self.zero_grad_override and self.automatic:
            self.hooks.optimizer_zero_grad(self.module.current_epoch, self.batch_idx, optimizer)
        else:
            optimizer.zero_grad(set_to_none=set_to_none)
        progress.optimizer.zero_grad.increment_completed()

    def closure_step(self, index: int, closure: Callable[[], Any], progress: OptimizationProgress) -> None:
        """One automatic step whose loss comes from ``closure``: ``optimizer.step(closure)``, or the override's.

        An overridden ``optimizer_step`` gets the wrapped optimizer and the
        closure; it must run the closure (directly or through ``step``), or
        there is no loss and no output for this batch.  One step is counted
        per call, whatever the override does with the optimizer (Lightning's
        rule).
        """
        progress.optimizer.step.increment_ready()
        if self.step_override:
            self.hooks.optimizer_step(self.module.current_epoch, self.batch_idx, self.wrapped[index], closure)
        else:
            self.wrapper_step(self.optimizers[index], closure, None)
        progress.optimizer.step.increment_completed()

    # -- what TrainingOptimizer's methods do --------------------------------------------------
    def wrapper_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None,
                     progress: OptimizationProgress | None) -> Any:
        """``TrainingOptimizer.step``: the closure first, then ``on_before_optimizer_step`` and clipping, then step."""
        if progress is not None:
            progress.optimizer.step.increment_ready()
        if closure is None:
            self._after_closure(optimizer)
            result = self.precision.step(optimizer)
        else:
            def closure_then_hooks() -> Any:
                loss = closure()
                self._after_closure(optimizer)
                return loss

            result = self.precision.step(optimizer, closure_then_hooks)
        if progress is not None:
            progress.optimizer.step.increment_completed()
        return result

    def wrapper_zero_grad(self, optimizer: torch.optim.Optimizer, set_to_none: bool,
                          progress: OptimizationProgress | None) -> None:
        """``TrainingOptimizer.zero_grad``: zero, with no hook (counted in manual optimization).

        As Lightning's ``LightningOptimizer``, whose ``zero_grad`` is the torch
        optimizer's own: ``on_before_zero_grad`` and ``optimizer_zero_grad``
        belong to the automatic loops' STEP row, which fires them.  Inside an
        overridden ``optimizer_step`` (``progress`` None) that row counts too.
        """
        if progress is not None:
            progress.optimizer.zero_grad.increment_ready()
            progress.optimizer.zero_grad.increment_started()
        optimizer.zero_grad(set_to_none=set_to_none)
        if progress is not None:
            progress.optimizer.zero_grad.increment_completed()

    def _after_closure(self, optimizer: torch.optim.Optimizer) -> None:
        """Between the gradients and the step: ``on_before_optimizer_step``, then clipping in automatic mode."""
        self.hooks.on_before_optimizer_step(optimizer)
        if self.automatic:
            self.clip(optimizer)

    def step_optimizer(self, optimizer: torch.optim.Optimizer, progress: OptimizationProgress) -> None:
        """Step ``optimizer`` on the gradients it has, then zero them: the automatic tables' STEP row in one call.

        For a custom optimization loop that computes its gradients its own way
        (see ``examples/val_guided.py``): it steps exactly like the built-in
        loops, hooks, clipping and counters included (a test holds this order
        to the STEP row's).
        """
        self.before_optimizer_step(optimizer, progress)
        self.clip(optimizer)
        self.optimizer_step(optimizer, progress)
        self.before_zero_grad(optimizer, progress)
        self.zero_grad(optimizer, progress)

    # -- shared with manual optimization -------------------------------------------------
    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``manual_backward`` (and custom loops): the BACKWARD row's three actions in one call."""
        self.hooks.on_before_backward(loss)
        self.run_backward(loss, *args, **kwargs)
        self.hooks.on_after_backward()

    def clip_gradients(self, optimizer: torch.optim.Optimizer, value: float | None, algorithm: str | None) -> None:
        if value is None:
            return
        algorithm = algorithm or "norm"
        self.precision.unscale(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(params, value)
        elif algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, value)
        else:
            raise ConfigError(f"gradient_clip_algorithm={algorithm!r}: use 'norm' or 'value'.")


def _warn_no_loss() -> None:
    # Lightning's words, so a search for them finds the explanation; shown once per place (warnings' default).
    warnings.warn("`training_step` returned `None`. If this was on purpose, ignore this warning: this optimizer runs "
                  "no backward and no step on this batch.", UserWarning, stacklevel=3)


def takes_optimizer_idx(step: Callable[..., Any]) -> bool:
    try:
        params = [p for p in inspect.signature(step).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 3
