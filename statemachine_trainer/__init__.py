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

__all__ = [
    "ADVANCE",
    "END",
    "RESTARTING",
    "START",
    "IllegalTriggerError",
    "Loop",
    "LoopStuckError",
    "Position",
    "Progress",
    "Row",
    "StateError",
    "StateSet",
    "Table",
    "TableError",
    "__version__",
]
