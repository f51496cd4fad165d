"""Callbacks: hooks with the trainer and module passed in; their state is saved with the run."""

from ._base import Callback

__all__ = ["Callback"]
