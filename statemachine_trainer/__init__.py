"""statemachine_trainer: PyTorch training loops as explicit, checkpointable state machines.

The machine core (tables, dispatcher, loop trees, diagrams) and the state
classes import no torch, so ``import statemachine_trainer`` stays light.
"""

from .machine import (
    ADVANCE,
    END,
    RESTARTING,
    START,
    IllegalTriggerError,
    Loop,
    LoopStuckError,
    Row,
    Table,
    TableError,
)
from .state import Position, Progress, StateError, StateSet

__version__ = "0.1.0"

#: Names that need torch, imported on first use so ``import statemachine_trainer`` stays light.
_LAZY = {
    "Trainer": "trainer",
    "seed_everything": "trainer",
    "TrainingModule": "module",
    "DataModule": "datamodule",
    "FunctionModule": "module",
    "ManualOptimizationError": "module",
    "TrainingOptimizer": "optimizer",
    "OptimizerClosureError": "_optimization",
    "StepOutputError": "_optimization",
    "ConfigError": "_optim",
    "PREEMPTED_EXIT_CODE": "_preemption",
    "Preempted": "_preemption",
    "Callback": "callbacks",
    "save_loop_checkpoint": "_loop_checkpoint",
    "load_loop_checkpoint": "_loop_checkpoint",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ADVANCE",
    "END",
    "PREEMPTED_EXIT_CODE",
    "RESTARTING",
    "START",
    "Callback",
    "ConfigError",
    "DataModule",
    "FunctionModule",
    "IllegalTriggerError",
    "Loop",
    "LoopStuckError",
    "ManualOptimizationError",
    "OptimizerClosureError",
    "Position",
    "Preempted",
    "Progress",
    "Row",
    "StateError",
    "StateSet",
    "StepOutputError",
    "Table",
    "TableError",
    "Trainer",
    "TrainingModule",
    "TrainingOptimizer",
    "__version__",
    "load_loop_checkpoint",
    "save_loop_checkpoint",
    "seed_everything",
]
