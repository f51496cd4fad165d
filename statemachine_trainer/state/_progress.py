"""Progress trackers: how far a loop has got, as plain counters.

Modelled on Lightning's trackers.  Each unit of work (a batch, an epoch, an
optimizer step) moves through ready -> started -> processed -> completed, and
each counter is kept twice: ``total`` over the whole run and ``current`` since
the last ``reset_on_run``.  These are *reports*, not the resume point: where a
loop resumes is its machine ``Position``, never arithmetic on these counters.
"""

from __future__ import annotations

import types
from typing import Any

import attrs

__all__ = [
    "BatchProgress",
    "NoFields",
    "OptimizationProgress",
    "OptimizerProgress",
    "ProcessedTracker",
    "Progress",
    "ReadyCompletedProgress",
    "ReadyCompletedTracker",
    "StartedProgress",
    "StartedTracker",
]


@attrs.define
class ReadyCompletedTracker:
    ready: int = 0  # units handed to the loop (e.g. batches fetched); ready >= completed
    completed: int = 0  # units whose work finished entirely

    def reset(self) -> None:
        for field in attrs.fields(type(self)):
            setattr(self, field.name, 0)


@attrs.define
class StartedTracker(ReadyCompletedTracker):
    started: int = 0  # units whose work began; ready >= started >= completed


@attrs.define
class ProcessedTracker(StartedTracker):
    processed: int = 0  # units whose main work is done, end hooks pending; started >= processed >= completed


class _Counting:
    """Increment ``total`` and ``current`` together, so they can never disagree.

    Written out per counter (no getattr/setattr by name): these run several
    times per training step.  Each progress class gets its own copy of them
    (``__init_subclass__``): Python 3.11 caches an attribute access per
    bytecode for one type, and one shared body reached with three tracker
    types (a batch's, an optimizer step's, a ``zero_grad``'s) keeps missing
    that cache, every step.
    """

    total: ReadyCompletedTracker
    current: ReadyCompletedTracker

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _COUNTING:
            fn = getattr(_Counting, name)
            setattr(cls, name, types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__))

    def increment_ready(self) -> None:
        self.total.ready += 1
        self.current.ready += 1

    def increment_started(self) -> None:
        self.total.started += 1  # type: ignore[attr-defined]
        self.current.started += 1  # type: ignore[attr-defined]

    def increment_processed(self) -> None:
        self.total.processed += 1  # type: ignore[attr-defined]
        self.current.processed += 1  # type: ignore[attr-defined]

    def increment_completed(self) -> None:
        self.total.completed += 1
        self.current.completed += 1

    def reset(self) -> None:
        """Forget everything (a new fit)."""
        self.total.reset()
        self.current.reset()

    def reset_on_run(self) -> None:
        """A new run of the loop: ``current`` counts from zero again, ``total`` keeps counting."""
        self.current.reset()


#: The methods of _Counting each progress class gets a copy of (the code, and so its attribute caches, its own).
_COUNTING = ("increment_ready", "increment_started", "increment_processed", "increment_completed")


@attrs.define
class Progress(_Counting):
    """ready / started / processed / completed, total and current."""

    total: ProcessedTracker = attrs.Factory(ProcessedTracker)  # since the tracker was created
    current: ProcessedTracker = attrs.Factory(ProcessedTracker)  # since the last reset_on_run


@attrs.define
class StartedProgress(_Counting):
    """ready / started / completed, total and current (e.g. ``zero_grad`` calls)."""

    total: StartedTracker = attrs.Factory(StartedTracker)
    current: StartedTracker = attrs.Factory(StartedTracker)


@attrs.define
class ReadyCompletedProgress(_Counting):
    """ready / completed, total and current (e.g. optimizer or scheduler steps)."""

    total: ReadyCompletedTracker = attrs.Factory(ReadyCompletedTracker)
    current: ReadyCompletedTracker = attrs.Factory(ReadyCompletedTracker)


@attrs.define
class BatchProgress(Progress):
    is_last_batch: bool = False  # the batch being processed is the last the loader will give this epoch


@attrs.define
class OptimizerProgress:
    step: ReadyCompletedProgress = attrs.Factory(ReadyCompletedProgress)  # optimizer.step() calls
    zero_grad: StartedProgress = attrs.Factory(StartedProgress)  # optimizer.zero_grad() calls

    def reset(self) -> None:
        self.step.reset()
        self.zero_grad.reset()

    def reset_on_run(self) -> None:
        self.step.reset_on_run()
        self.zero_grad.reset_on_run()


@attrs.define
class OptimizationProgress:
    optimizer: OptimizerProgress = attrs.Factory(OptimizerProgress)
    optimizer_position: int = 0  # index of the optimizer to step next within one training step; >= 0

    @property
    def optimizer_steps(self) -> int:
        return self.optimizer.step.total.completed

    def reset(self) -> None:
        self.optimizer.reset()
        self.optimizer_position = 0

    def reset_on_run(self) -> None:
        self.optimizer.reset_on_run()
        self.optimizer_position = 0


@attrs.define
class NoFields:
    """The fields of a loop that keeps no state of its own beyond position and progress."""
