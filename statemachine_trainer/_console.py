"""Where the library's own messages go: the ``statemachine_trainer`` logger, at INFO, on stderr by default.

Lightning's rule, so summaries and reports show up without any setup but
stay out of stdout (scripts that print their own results keep it clean):
when the application configured no logging (the root logger has no
handler), the package logger gets a stream handler of its own; otherwise
messages propagate to the application's handlers.
"""

from __future__ import annotations

import logging

__all__ = ["info"]

_LOGGER = logging.getLogger("statemachine_trainer")


def info(message: str) -> None:
    """Log ``message`` at INFO level (call it on rank 0 only: other ranks would print the same)."""
    if not _LOGGER.handlers and not logging.getLogger().hasHandlers():
        _LOGGER.addHandler(logging.StreamHandler())
        _LOGGER.setLevel(logging.INFO)
        _LOGGER.propagate = False
    elif _LOGGER.level == logging.NOTSET:
        _LOGGER.setLevel(logging.INFO)
    _LOGGER.info(message)
