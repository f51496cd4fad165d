"""Profilers: where a run's time goes, per hook of the loop tree.

``Trainer(profiler="simple")`` (or ``profiler=SimpleProfiler(...)``) times
every hook the dispatcher fires -- each row hook of every loop's table, named
``LoopClass.hook`` (``OptimizerLoop.training_step``,
``TrainingEpochLoop.advance``...) -- and prints a table at the end of the
stage: calls, mean and total seconds, share of the stage's time.  The timing
is installed into the bound rows once per run (see
:meth:`statemachine_trainer.machine.Loop.profile`), so without a profiler the
hot path is exactly what it is without this module.  Hooks nest (a parent's
``advance`` runs its child loop), so totals overlap, as in Lightning's table.
"""

from ._base import PassThroughProfiler, Profiler
from .simple import SimpleProfiler

__all__ = ["PassThroughProfiler", "Profiler", "SimpleProfiler"]
