"""Loggers: ``CSVLogger`` (the default) and ``TensorBoardLogger`` (needs the ``tensorboard`` extra).

Lightning's other loggers (``WandbLogger``, ``MLFlowLogger``...) raise
``UnsupportedError`` naming what to do instead (``_refused.LOGGER_ADVICE``).
"""

from .._refused import LOGGER_ADVICE, refused_name
from ._base import Logger
from .csv import CSVLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]


def __getattr__(name: str):
    if name == "TensorBoardLogger":
        from .tensorboard import TensorBoardLogger

        return TensorBoardLogger
    if name in LOGGER_ADVICE:
        raise refused_name(__name__, name, LOGGER_ADVICE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
