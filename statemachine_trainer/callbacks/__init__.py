"""Callbacks: hooks with the trainer and module passed in; their state is saved with the run."""

from ._base import Callback
from .checkpoint import ModelCheckpoint
from .early_stopping import EarlyStopping
from .lr_monitor import LearningRateMonitor
from .model_summary import ModelSummary
from .progress import ProgressBar
from .timer import Timer

__all__ = ["Callback", "EarlyStopping", "LearningRateMonitor", "ModelCheckpoint", "ModelSummary", "ProgressBar",
           "Timer"]
