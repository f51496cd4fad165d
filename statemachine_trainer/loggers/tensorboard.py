"""``TensorBoardLogger``: event files under ``<root>/<name>/version_<n>/`` for ``tensorboard --logdir``.

It writes through ``torch.utils.tensorboard.SummaryWriter``, which needs the
``tensorboard`` package; that is an optional extra, so the import happens when
a logger is made, and its absence is an ``ImportError`` that says what to
install.  The writer (and its directory) is created at the first write, so a
logger that never logs leaves no empty run behind.  ``save()`` flushes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._base import VersionedLogger

__all__ = ["TensorBoardLogger"]


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError('TensorBoardLogger needs the tensorboard package; install it with '
                          'pip install "statemachine-trainer[tensorboard]" (or pip install tensorboard).') from error
    return SummaryWriter


class TensorBoardLogger(VersionedLogger):
    """Scalars go to ``add_scalar`` (one tag per metric key); hyperparameters to a text summary."""

    def __init__(self, save_dir: str | os.PathLike[str], name: str = "tb_logs", version: int | str | None = None) -> None:
        self._writer_class = _summary_writer_class()  # fail now, not at the first log in the middle of a run
        super().__init__(save_dir, name, version)
        self._writer: Any = None

    @property
    def experiment(self) -> Any:
        """The ``SummaryWriter``, for anything beyond scalars (images, histograms...)."""
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.log_dir))
        return self._writer

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        writer = self.experiment
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        if not params:
            return
        rows = "\n".join(f"| {key} | {json.dumps(value, default=str)} |" for key, value in dict(params).items())
        self.experiment.add_text("hparams", f"| name | value |\n|---|---|\n{rows}", 0)

    def save(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; a later write opens a new one."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._version = state["version"]
