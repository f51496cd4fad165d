"""One run per checkpoint directory: a run id in every checkpoint, and a lock held for the length of a fit.

Two runs writing checkpoints into one directory (a user mistake: the same
``default_root_dir`` twice) corrupt each other silently: one run's
ModelCheckpoint lists files that hold the other's state, and
``ckpt_path="latest"`` resumes whichever wrote last.  So a fit that writes
checkpoints (it has a ModelCheckpoint, or ``save_on_exception``) first
*claims* the directory:

* a lock (``.run.lock``, ``fcntl.flock``; it also says who holds it: pid,
  host, since when) held until the fit ends -- a second
  process fitting into the same directory at the same time is refused, and
  the operating system drops the lock of a process that died (kill -9
  included), so a crashed run never blocks its own resume;
* the run id: a fresh fit gets a new one, a resumed fit the id of the
  checkpoint it resumes (its manifest's ``metadata.run``), and every
  checkpoint the run writes records it.  A fresh fit into a directory that
  already holds checkpoints, or a resumed one into a directory holding
  another run's, is refused, naming the directory, the other run's newest
  checkpoint and the ways out.

Only rank 0 claims; under DDP its verdict is broadcast so every rank raises
the same error.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from ._optim import ConfigError

__all__ = ["RunDirClaim", "claim_run_dir", "new_run_id", "run_of"]

_LOCK = ".run.lock"  # the one entry the claim adds to the directory (hidden, like unfinished saves)


def new_run_id() -> str:
    return uuid.uuid4().hex


def run_of(checkpoint: Path) -> str | None:
    """The run id a checkpoint records (None: written before run ids, or unreadable)."""
    from .checkpoint import CheckpointError
    from .checkpoint._manifest import read_manifest

    try:
        metadata = read_manifest(checkpoint).get("metadata")
    except (CheckpointError, OSError, ValueError):
        return None
    run = metadata.get("run") if isinstance(metadata, dict) else None
    return run if isinstance(run, str) else None


class RunDirClaim:
    """A held claim on a checkpoint directory; ``release()`` (idempotent) drops the lock."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def claim_run_dir(directory: Path, run_id: str, fresh: bool) -> RunDirClaim:
    """Lock ``directory`` for run ``run_id``; ConfigError if another run is writing there or has written there."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"Another process is fitting into {directory} now ({_owner_text(directory)}): two runs "
                          "would write checkpoints over each other. Give this run its own directory "
                          "(Trainer(default_root_dir=...) or ModelCheckpoint(dirpath=...)).") from None
    try:
        _refuse_foreign_checkpoints(directory, run_id, fresh)
        _write_owner(fd, run_id)
    except BaseException:
        os.close(fd)
        raise
    return RunDirClaim(directory, fd)


def _refuse_foreign_checkpoints(directory: Path, run_id: str, fresh: bool) -> None:
    from .checkpoint._latest import candidates

    for path in candidates(directory):  # newest first
        run = run_of(path)
        foreign = run != run_id if fresh else (run is not None and run != run_id)
        if not foreign:
            continue
        whose = "another run" if run is not None else "an earlier run"
        if fresh:
            raise ConfigError(f"{directory} already holds checkpoints of {whose} (newest: {path.name}); a new run "
                              "writing there would mix its checkpoints with those, and ckpt_path='latest' would "
                              "resume the wrong one. Give this run its own directory (Trainer(default_root_dir=...) "
                              "or ModelCheckpoint(dirpath=...)), resume that run with ckpt_path='latest', or delete "
                              "those checkpoints.")
        raise ConfigError(f"{directory} holds checkpoints of another run (e.g. {path.name}) than the one being "
                          "resumed; two runs wrote there, so 'latest' and the top-k files cannot be trusted. Resume "
                          "from a copy of this run's checkpoints in a directory of its own.")


def _write_owner(fd: int, run_id: str) -> None:
    """Who holds the directory, into the lock file, for the message a second process gets."""
    owner = {"run": run_id, "pid": os.getpid(), "host": socket.gethostname(),
             "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)


def _owner_text(directory: Path) -> str:
    try:
        owner: Any = json.loads((directory / _LOCK).read_text())
        return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"
