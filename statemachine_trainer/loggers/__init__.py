"""Loggers: ``CSVLogger`` (the default) and ``TensorBoardLogger`` (needs the ``tensorboard`` extra)."""

from ._base import Logger
from .csv import CSVLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]


def __getattr__(name: str):
    if name == "TensorBoardLogger":
        from .tensorboard import TensorBoardLogger

        return TensorBoardLogger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
