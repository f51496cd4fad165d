"""Callbacks: hooks with the trainer and module passed in; their state is saved with the run.

Lightning's callbacks this library does not have (``StochasticWeightAveraging``,
``BackboneFinetuning``, the tuner's finders...) raise ``UnsupportedError``
naming what to do instead (the table: ``_refused.CALLBACK_ADVICE``).
"""

from .._refused import CALLBACK_ADVICE, refused_name
from ._base import Callback
from .checkpoint import ModelCheckpoint
from .early_stopping import EarlyStopping
from .lambda_function import LambdaCallback
from .lr_monitor import LearningRateMonitor
from .model_summary import ModelSummary
from .progress import ProgressBar, RichProgressBar, TQDMProgressBar
from .timer import Timer

__all__ = ["Callback", "EarlyStopping", "LambdaCallback", "LearningRateMonitor", "ModelCheckpoint", "ModelSummary",
           "ProgressBar", "RichProgressBar", "TQDMProgressBar", "Timer"]


def __getattr__(name: str):
    if name in CALLBACK_ADVICE:
        raise refused_name(__name__, name, CALLBACK_ADVICE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
