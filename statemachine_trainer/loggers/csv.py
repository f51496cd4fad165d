"""``CSVLogger``: the default logger -- ``metrics.csv`` under ``<root>/<name>/version_<n>/``.

Rows are buffered and written on ``save()`` (epoch ends and the end of a run),
so per-step logging costs no file I/O on the hot path.  A new metric key
widens the header; the file is rewritten whole, through a temporary file and
a rename, so a crash never leaves a half-written CSV.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch

from ._base import VersionedLogger

__all__ = ["CSVLogger"]


class CSVLogger(VersionedLogger):
    """``metrics.csv`` and ``hparams.json`` in ``<save_dir>/<name>/version_<n>/``.

    ``experiment`` is the logger itself, which has what Lightning's CSV
    experiment writer has (``log_metrics(metrics, step=None)``,
    ``log_hparams``, ``save``, ``metrics_file_path``), so ported code that
    writes through ``self.logger.experiment`` keeps working.
    """

    def __init__(self, save_dir: str | os.PathLike[str], name: str = "logs", version: int | str | None = None) -> None:
        super().__init__(save_dir, name, version)
        self._rows: list[dict[str, float]] = []
        self._keys: list[str] = []

    @property
    def metrics_file(self) -> Path:
        return self.log_dir / "metrics.csv"

    @property
    def experiment(self) -> CSVLogger:
        return self

    @property
    def metrics_file_path(self) -> str:
        return str(self.metrics_file)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """One row; ``step`` defaults to the number of rows so far, tensors become numbers (as Lightning's writer)."""
        values = {key: value.item() if isinstance(value, torch.Tensor) else value for key, value in metrics.items()}
        row = {"step": len(self._rows) if step is None else step, **values}
        for key in row:
            if key not in self._keys:
                self._keys.append(key)
        self._rows.append(row)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        if not params:  # nothing recorded, or save_hyperparameters(logger=False): no file, as in Lightning
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "hparams.json").write_text(json.dumps(dict(params), indent=2, default=str) + "\n")

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Lightning's experiment-writer name for ``log_hyperparams``."""
        self.log_hyperparams(params)

    def save(self) -> None:
        if not self._rows:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.metrics_file.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._keys)
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(tmp, self.metrics_file)

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "rows": list(self._rows), "keys": list(self._keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._version, self._rows, self._keys = state["version"], list(state["rows"]), list(state["keys"])
