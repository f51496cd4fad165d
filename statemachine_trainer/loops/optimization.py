"""The optimization loops: what happens to one batch between ``on_train_batch_start`` and ``_end``.

Three modes, three tables; the batch loop runs the one the module asks for.
The step's actions are the rows' hooks, so each table *is* the step's hook
order, and ``statemachine-trainer diagram`` shows where backward and
``optimizer.step`` happen.

``OptimizerLoop`` (automatic).  One pass through BACKWARD (and STEP) per
optimizer that steps on this batch -- all of them, or the one ``frequency``
picks::

    START    --run-->                                   ADVANCE  / reset, on_run_start
    ADVANCE  --advance [done]-->                        END      / on_run_end
    ADVANCE  --advance [needs_closure and not window_open]-->
                                                        ADVANCE  / toggle, closure_step, on_before_zero_grad,
                                                                   optimizer_zero_grad, untoggle, next_optimizer
    ADVANCE  --advance-->                               BACKWARD / toggle, training_step
    BACKWARD --backward [no_loss]-->                    ADVANCE  / untoggle, next_optimizer
    BACKWARD --backward [window_open]-->                ADVANCE  / on_before_backward, backward, on_after_backward,
                                                                   untoggle, next_optimizer
    BACKWARD --backward-->                              STEP     / on_before_backward, backward, on_after_backward
    STEP     --step-->                                  ADVANCE  / on_before_optimizer_step,
                                                                   configure_gradient_clipping, optimizer_step,
                                                                   on_before_zero_grad, optimizer_zero_grad,
                                                                   untoggle, next_optimizer

* ``toggle``, with several optimizers, freezes the other optimizers'
  parameters (``toggle_optimizer``) so this loss's backward never writes
  gradients another optimizer will step on; ``untoggle`` undoes it.
* Hooks that would do nothing in a run are left out of the rows for that
  run (``Loop.skip_hooks``, worked out in ``on_attach``): ``toggle`` and
  ``untoggle`` with one optimizer, ``configure_gradient_clipping`` without
  ``gradient_clip_val`` unless the module overrides it,
  ``on_before_backward`` / ``on_after_backward`` when neither the module nor
  a callback overrides them.
* ``backward``, ``optimizer_step``, ``optimizer_zero_grad`` and
  ``configure_gradient_clipping`` are the module's hooks of those names
  (Lightning's signatures): the row does the work itself unless the module
  overrides the hook, and then calls the override.
* ``training_step`` returning None (``no_loss``) skips this optimizer: no
  backward, no step.
* ``window_open``: the batch is inside a gradient-accumulation window, so the
  gradients accumulate and nobody steps.  Under DDP its ``training_step`` and
  ``backward`` run under ``no_sync()`` (the window's last backward all-reduces).
* ``needs_closure``: LBFGS and the like evaluate the loss themselves, possibly
  several times, and a module that overrides ``optimizer_step`` decides when
  the loss is computed: ``closure_step`` is ``optimizer.step(closure)`` -- or
  the module's ``optimizer_step(epoch, batch_idx, optimizer, closure)`` --
  the closure being this table's training_step, on_before_backward, backward
  and on_after_backward; the optimizer wrapper adds on_before_optimizer_step
  and configure_gradient_clipping after it, before the parameters move.  An
  override that never runs the closure raises ``OptimizerClosureError``.

``GeneratorLoop`` (automatic, ``training_step`` is a generator).  The same
BACKWARD and STEP rows (one copy: :data:`STEP_ROWS`); ``on_run_start`` makes
the generator and each ``training_step`` hook takes its next ``yield``, so
shared work before the first ``yield`` runs once per batch.  No closure row:
a yielded loss cannot be evaluated again, so closure optimizers and an
overridden ``optimizer_step`` are refused when the fit starts.

``ManualLoop`` (``automatic_optimization = False``).  One transition that calls
``training_step``; the step calls ``manual_backward`` and ``opt.step()``
itself, and those calls fire the backward / optimizer-step hooks (an
overridden ``backward`` included).  ``optimizer_step``,
``optimizer_zero_grad``, ``configure_gradient_clipping`` and
``lr_scheduler_step`` overrides would never be called there: refused when the
fit starts.

What every mode hands ``on_train_batch_end`` is Lightning's: a dict with the
detached ``"loss"`` (and a dict output's other keys), ``{}`` for None.

Checkpoints and resume
----------------------
A boundary falls between every two hooks of these rows, but a checkpoint can
only hold what the state set holds.  So ``checkpointable`` is False while the
loop holds something no state set can: the loss with its autograd graph
(BACKWARD), parameters frozen by ``toggle``, the generator's frame between two
yields, and the step's output that ``on_train_batch_end`` will receive.  It is
True before the batch's first ``training_step`` and between two optimizers'
parts (the earlier output is dead then: the next ``training_step`` replaces
it).  A request made inside a step is written at the next such boundary --
at the latest when the batch ends -- and what crosses a boundary lives in the
loop's progress (``optimizer_position``, the step counters) and the batch
loop's fields, with partial gradients in the checkpoint's ``grads``.

If a hook raises, :meth:`OptimizerLoop.run` untoggles before the exception
leaves the loop, so the module's ``requires_grad`` flags stay balanced.
"""

from __future__ import annotations

from typing import Any

from .._optim import ConfigError
from .._optimization import OptimizerClosureError, batch_end_outputs, manual_outputs
from ..machine import ADVANCE, END, START, Row, Table, noop_hook
from ..state import OptimizationProgress
from ._base import TrainerLoop

__all__ = ["GENERATOR_TABLE", "MANUAL_TABLE", "OPTIMIZER_TABLE", "STEP_ROWS", "GeneratorLoop", "GeneratorStepError",
           "ManualLoop", "OptimizerLoop"]

BACKWARD, STEP = "BACKWARD", "STEP"

#: The hooks of one backward: the loss from ``training_step`` into gradients.
_BACKWARD_HOOKS = ("on_before_backward", "backward", "on_after_backward")
#: The hooks of one optimizer step, with its hooks and counters (``Optimization.step_optimizer`` in one call).
_STEP_HOOKS = ("on_before_optimizer_step", "configure_gradient_clipping", "optimizer_step", "on_before_zero_grad",
               "optimizer_zero_grad")
#: Every per-optimizer part ends here: the parameters thawed, the next optimizer's turn.
_NEXT = ("untoggle", "next_optimizer")

#: From the loss to the next optimizer's turn: shared by the automatic tables (one copy, two tables).
STEP_ROWS = (
    Row("backward", BACKWARD, ADVANCE, conditions="no_loss", hooks=_NEXT),
    Row("backward", BACKWARD, ADVANCE, conditions="window_open", hooks=(*_BACKWARD_HOOKS, *_NEXT)),
    Row("backward", BACKWARD, STEP, hooks=_BACKWARD_HOOKS),
    Row("step", STEP, ADVANCE, hooks=(*_STEP_HOOKS, *_NEXT)),
)

_RUN_ROW = Row("run", START, ADVANCE, hooks=("reset", "on_run_start"))
_DONE_ROW = Row("advance", ADVANCE, END, conditions="done", hooks="on_run_end")
_TRAINING_STEP_ROW = Row("advance", ADVANCE, BACKWARD, hooks=("toggle", "training_step"))
_AUTOMATIC_STATES = (START, ADVANCE, BACKWARD, STEP, END)

OPTIMIZER_TABLE = Table(
    name="OptimizerLoop",
    states=_AUTOMATIC_STATES,
    rows=(
        _RUN_ROW,
        _DONE_ROW,
        Row("advance", ADVANCE, ADVANCE, conditions="needs_closure", unless="window_open",
            hooks=("toggle", "closure_step", "on_before_zero_grad", "optimizer_zero_grad", *_NEXT)),
        _TRAINING_STEP_ROW,
        *STEP_ROWS,
    ),
)
GENERATOR_TABLE = Table(name="GeneratorLoop", states=_AUTOMATIC_STATES,
                        rows=(_RUN_ROW, _DONE_ROW, _TRAINING_STEP_ROW, *STEP_ROWS))

MANUAL_TABLE = Table(
    name="ManualLoop",
    states=(START, END),
    rows=(Row("run", START, END, hooks=("reset", "training_step")),),
)


class GeneratorStepError(RuntimeError):
    """A generator ``training_step`` yielded a different number of losses than there are optimizers."""


class OptimizerLoop(TrainerLoop):
    """Automatic optimization: training_step, backward and step for each optimizer in turn (table above)."""

    table = OPTIMIZER_TABLE
    progress_class = OptimizationProgress

    def __init__(self) -> None:
        super().__init__()
        # None of this is state.  The first three are looked up again as each batch starts and on resume; the rest
        # lives only between toggle and next_optimizer (and the output until on_run_end), where checkpointable is
        # False, so no checkpoint ever needs them.
        self._opt: Any = None  # the run's Optimization, per batch (reset_optimizers may replace it between rounds)
        self._active: Any = ()  # indices of the optimizers that step on this batch
        self._window_open = False  # this batch accumulates without stepping
        self._index = 0  # the optimizer whose turn it is (set by toggle)
        self._optimizer: Any = None
        self._toggled: Any = None  # the optimizer toggle_optimizer was called for, until untoggle
        self._loss: Any = None  # training_step's loss, with its graph until backward
        self._outputs: Any = None  # training_step's output: run()'s return value, for on_train_batch_end
        self._last_loss: Any = None  # that output's loss, as backpropagated: on_train_batch_end's "loss"

    def run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._machine.run(args, kwargs)  # Loop.run's body: one frame less per batch
        except BaseException:
            self._release()  # a hook raised between toggle and untoggle: thaw the parameters before it leaves
            raise

    def on_attach(self) -> None:
        """Leave out, for this run, the step's hooks that would do nothing (worked out once, not per batch)."""
        run = self.context
        opt = run.optimization
        if opt is None:
            self.skip_hooks(())
            return
        idle = {name for name in ("on_before_backward", "on_after_backward") if not run.hooks.overrides(name)}
        if opt.clip_val is None and not opt.clip_override:
            idle.add("configure_gradient_clipping")
        if not opt.toggle:  # one optimizer (or manual mode): nothing to freeze
            idle |= {"toggle", "untoggle"}
        self.skip_hooks(idle)

    # -- conditions ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.progress.optimizer_position >= len(self._active)

    @property
    def needs_closure(self) -> bool:
        opt = self._opt
        return opt.any_closure and opt.needs_closure[self._active[self.progress.optimizer_position]]

    @property
    def window_open(self) -> bool:
        return self._window_open

    @property
    def no_loss(self) -> bool:
        return self._loss is None

    @property
    def checkpointable(self) -> bool:
        position = self.position
        if position.state in (START, END):
            return True
        if position.state != ADVANCE or position.row is not None:
            return False  # mid-step: a loss with its graph, frozen parameters, or a step's output in hand
        # Between two optimizers' parts: the output is dead if another training_step will replace it.
        return self._outputs is None or self.progress.optimizer_position < len(self._active)

    # -- hooks, in table order -------------------------------------------------------------------
    def reset(self) -> None:
        self.progress.optimizer_position = 0
        self._outputs = self._loss = self._last_loss = None
        self._begin()

    @noop_hook
    def on_run_start(self, batch: Any, batch_idx: int) -> None:
        """Nothing to prepare for a plain step (so it is not dispatched); the generator loop makes its generator."""

    def on_restart(self) -> None:
        self._begin()
        self._outputs = self._loss = self._last_loss = None
        if self.position.state in (BACKWARD, STEP):
            # Only a checkpoint written regardless of `checkpointable` (save_checkpoint called inside a hook) stops
            # here: toggle again, so that the rest of the row's untoggle stays balanced.
            self.toggle()

    def toggle(self) -> None:
        opt = self._opt
        if opt.toggle:  # several optimizers: freeze the others' parameters for this one's part
            opt.module.toggle_optimizer(self._optimizer)
            self._toggled = self._optimizer

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if self._window_open:
            with self._opt.no_sync():  # DDP: when the step is DDP's forward, it must not prepare an all-reduce
                output = self._produce(batch, batch_idx)
        else:
            output = self._produce(batch, batch_idx)
        self._outputs = output
        self._loss = self._last_loss = self._opt.loss_to_backward(output)

    def on_before_backward(self) -> None:
        self._opt.hooks.on_before_backward(self._loss)

    def backward(self) -> None:
        if self._window_open:
            with self._opt.no_sync():  # DDP: keep this micro-batch's gradients local; the window's last syncs
                self._opt.backward_loss(self._loss)
        else:
            self._opt.backward_loss(self._loss)

    def on_after_backward(self) -> None:
        self._opt.hooks.on_after_backward()

    def on_before_optimizer_step(self) -> None:
        self._opt.before_optimizer_step(self._optimizer, self.progress)

    def configure_gradient_clipping(self) -> None:
        self._opt.clip(self._optimizer)  # the module's override, or the flags' clipping

    def optimizer_step(self) -> None:
        self._opt.optimizer_step(self._optimizer, self.progress)

    def on_before_zero_grad(self) -> None:
        self._opt.before_zero_grad(self._optimizer, self.progress)

    def optimizer_zero_grad(self) -> None:
        self._opt.zero_grad(self._optimizer, self.progress)  # the module's override, or optimizer.zero_grad()

    def untoggle(self) -> None:
        toggled, self._toggled = self._toggled, None
        if toggled is not None:
            self._opt.module.untoggle_optimizer(toggled)

    def next_optimizer(self) -> None:
        self._loss = None
        self.progress.optimizer_position += 1
        self._select()

    def closure_step(self, batch: Any, batch_idx: int) -> None:
        """``optimizer.step(closure)`` (or the module's ``optimizer_step``): the closure is the BACKWARD row's work."""
        ran = []

        def closure() -> Any:
            ran.append(True)
            self.training_step(batch, batch_idx)
            loss = self._loss
            if loss is not None:
                self.on_before_backward()
                self.backward()
                self.on_after_backward()
            return loss

        self._opt.closure_step(self._index, closure, self.progress)
        if not ran:
            raise OptimizerClosureError(
                f"{type(self._opt.module).__name__}.optimizer_step returned without running optimizer_closure, so "
                "training_step and backward never ran for this batch. Call optimizer.step(closure=optimizer_closure) "
                "or optimizer_closure() in it.")

    def on_run_end(self) -> Any:
        outputs, loss, self._outputs, self._last_loss = self._outputs, self._last_loss, None, None
        return batch_end_outputs(outputs, loss)

    # -- helpers ---------------------------------------------------------------------------------
    def _begin(self) -> None:
        """What the batch's hooks read, looked up once per batch (and again on resume: none of it is state)."""
        self._opt = opt = self.context.optimization
        self._active = opt.active
        self._window_open = not opt.window_closes
        self._select()

    def _select(self) -> None:
        """The optimizer whose turn it is (``optimizer_position``), if any is left."""
        position = self.progress.optimizer_position
        if position < len(self._active):
            self._index = index = self._active[position]
            self._optimizer = self._opt.optimizers[index]
        else:
            self._optimizer = None

    def _produce(self, batch: Any, batch_idx: int) -> Any:
        """This optimizer's training_step output (the generator loop: the generator's next yield)."""
        opt = self._opt
        if not opt.precision.autocasts:  # full precision: no context to enter and leave per step
            return opt.call_training_step(batch, batch_idx, self._index)
        with opt.precision.autocast():
            return opt.call_training_step(batch, batch_idx, self._index)

    def _release(self) -> None:
        self.untoggle()
        self._loss = self._last_loss = self._outputs = self._optimizer = None


class GeneratorLoop(OptimizerLoop):
    """Automatic optimization where ``training_step`` yields one loss per optimizer."""

    table = GENERATOR_TABLE

    def __init__(self) -> None:
        super().__init__()
        self._generator: Any = None

    def reset(self) -> None:
        super().reset()
        opt = self._opt
        if opt.step_override:
            raise GeneratorStepError(f"{type(opt.module).__name__} overrides optimizer_step, whose optimizer_closure "
                                     "computes the loss when the override asks; a generator training_step yields "
                                     "each loss once. Return the loss from a plain training_step, or leave "
                                     "optimizer_step alone and adjust the optimizer in on_before_optimizer_step.")
        if opt.any_closure:
            names = ", ".join(type(o).__name__ for o, c in zip(opt.optimizers, opt.needs_closure) if c)
            raise GeneratorStepError(f"{names} evaluates the loss several times per step (through a closure), but "
                                     "a generator training_step yields each loss once; return the loss from a "
                                     "plain training_step for such optimizers.")

    @property
    def checkpointable(self) -> bool:
        # Between two yields the generator's frame holds the shared work (e.g. a GAN's fake batch, made
        # with the weights from before the first optimizer stepped): no state set can hold it.  So a
        # checkpoint requested mid-step is written right after the step, when this loop is idle again.
        position = self.position
        if position.state in (START, END):
            return True
        return position.state == ADVANCE and position.row is None and self.progress.optimizer_position == 0

    def on_run_start(self, batch: Any, batch_idx: int) -> None:
        self._generator = self._opt.call_training_step(batch, batch_idx, None)

    def on_restart(self) -> None:
        # Resumed at the start of a step (the only point a checkpoint can hold): the generator is re-created.
        self._generator = None
        super().on_restart()

    def on_run_end(self) -> Any:
        generator, self._generator = self._generator, None
        if generator is not None:
            extra = next(generator, _EXHAUSTED)
            if extra is not _EXHAUSTED:
                raise GeneratorStepError(
                    f"training_step yielded more losses than there are optimizers "
                    f"({len(self._active)}); yield exactly one loss per optimizer, in the order "
                    "configure_optimizers returns them.")
        return super().on_run_end()

    def _produce(self, batch: Any, batch_idx: int) -> Any:
        opt = self._opt
        if self._generator is None:
            self._replay(batch, batch_idx)
        opt.results.fx = "training_step"  # self.log between two yields logs from training_step
        with opt.precision.autocast():
            output = next(self._generator, _EXHAUSTED)
        if output is _EXHAUSTED:
            raise GeneratorStepError(
                f"training_step yielded {self.progress.optimizer_position} loss(es), but there are "
                f"{len(self._active)} optimizers; yield one loss per optimizer.")
        return output

    def _replay(self, batch: Any, batch_idx: int) -> None:
        self._generator = self._opt.call_training_step(batch, batch_idx, None)
        for _ in range(self.progress.optimizer_position):
            next(self._generator)

    def _release(self) -> None:
        super()._release()
        self._generator = None


_EXHAUSTED = object()

#: The module's step hooks only automatic optimization calls.
_AUTOMATIC_ONLY = ("optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping", "lr_scheduler_step")


class ManualLoop(TrainerLoop):
    """Manual optimization: ``training_step`` does its own backward and steps."""

    table = MANUAL_TABLE
    progress_class = OptimizationProgress

    def on_attach(self) -> None:
        """Refuse, before anything trains, step hooks that manual optimization would never call."""
        run = self.context
        if run.optimization is None or run.module.automatic_optimization:
            return
        ignored = [name for name in _AUTOMATIC_ONLY if run.hooks.overrides(name)]
        if ignored:
            raise ConfigError(f"{type(run.module).__name__} overrides {', '.join(ignored)}, but with "
                              "automatic_optimization = False training_step steps the optimizers (and schedulers) "
                              "itself, so the Trainer never calls them. Do that work in training_step (opt.step(), "
                              "opt.zero_grad(), self.clip_gradients(opt, ...), self.lr_schedulers().step()), or use "
                              "automatic optimization.")

    def reset(self) -> None:
        self.progress.optimizer_position = 0

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return manual_outputs(self.context.optimization.call_training_step(batch, batch_idx, None))
