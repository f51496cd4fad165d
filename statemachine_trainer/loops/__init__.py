"""The built-in loops: the tree ``Trainer`` runs, each loop a table (see ``specs/loops``).

::

    fit_loop: FitLoop                       START -> SANITY_CHECK -> ADVANCE (epochs) -> END
      epoch_loop: TrainingEpochLoop         ADVANCE (batches) <-> VALIDATE
        batch_loop: BatchLoop               on_train_batch_start, optimize, on_train_batch_end
          optimizer_loop: OptimizerLoop     automatic, one ADVANCE per optimizer
          generator_loop: GeneratorLoop     automatic, training_step yields one loss per optimizer
          manual_loop: ManualLoop           automatic_optimization = False
        val_loop: EvaluationLoop("validate")
    validate_loop / test_loop: EvaluationLoop
    predict_loop: PredictionLoop
"""

from ._base import TrainerLoop
from .batch import BatchLoop
from .epoch import TrainingEpochLoop
from .evaluation import EvaluationLoop
from .fit import FitLoop
from .optimization import GeneratorLoop, GeneratorStepError, ManualLoop, OptimizerLoop
from .prediction import PredictionLoop

__all__ = [
    "BatchLoop",
    "EvaluationLoop",
    "FitLoop",
    "GeneratorLoop",
    "GeneratorStepError",
    "ManualLoop",
    "OptimizerLoop",
    "PredictionLoop",
    "TrainerLoop",
    "TrainingEpochLoop",
]
