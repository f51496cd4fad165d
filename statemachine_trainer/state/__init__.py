"""State as data: positions, progress trackers, the state set and its converter.

Everything a loop tree needs to resume lives in ``attrs`` classes defined here
(or in the loops' own ``fields_class``) and crosses the disk boundary through
one library-owned ``cattrs`` converter.  Torch-free, like ``machine``.
"""

from ._converter import (
    SCHEMA_VERSION,
    LoopState,
    StateError,
    StateSet,
    check_json,
    converter,
    dumps,
    make_converter,
    structure_state_set,
    unstructure_state_set,
)
from ._position import Position
from ._progress import (
    BatchProgress,
    NoFields,
    OptimizationProgress,
    OptimizerProgress,
    ProcessedTracker,
    Progress,
    ReadyCompletedProgress,
    ReadyCompletedTracker,
    StartedProgress,
    StartedTracker,
)

__all__ = [
    "SCHEMA_VERSION",
    "BatchProgress",
    "LoopState",
    "NoFields",
    "OptimizationProgress",
    "OptimizerProgress",
    "Position",
    "ProcessedTracker",
    "Progress",
    "ReadyCompletedProgress",
    "ReadyCompletedTracker",
    "StartedProgress",
    "StartedTracker",
    "StateError",
    "StateSet",
    "check_json",
    "converter",
    "dumps",
    "make_converter",
    "structure_state_set",
    "unstructure_state_set",
]
