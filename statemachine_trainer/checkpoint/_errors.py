"""The error types of the checkpoint package."""

from __future__ import annotations

__all__ = ["AsyncWriteError", "CheckpointError", "WorldSizeError"]


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read as it is; the message names the problem and the fix."""


class WorldSizeError(CheckpointError):
    """A valid checkpoint written by another number of processes than the run trying to load it.

    Unlike damage, this is not a reason to fall back to an older checkpoint:
    ``load_latest`` and ``load_latest_parts`` raise it instead of skipping, so a
    resume at the wrong world size stops rather than silently losing progress.
    """


class AsyncWriteError(CheckpointError):
    """An asynchronous checkpoint write failed in the background; raised at the next save, wait or exit.

    Its ``__cause__`` is the original error (e.g. ``OSError: No space left on
    device``); the message names the checkpoint that was not written.  The
    checkpoints written before it are intact.
    """
