"""The one error type of the checkpoint package."""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read as it is; the message names the problem and the fix."""
