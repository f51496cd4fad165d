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

from ._base import VersionedLogger

__all__ = ["CSVLogger"]


class CSVLogger(VersionedLogger):
    def __init__(self, root_dir: str | os.PathLike[str], name: str = "logs", version: int | str | None = None) -> None:
        super().__init__(root_dir, name, version)
        self._rows: list[dict[str, float]] = []
        self._keys: list[str] = []

    @property
    def metrics_file(self) -> Path:
        return self.log_dir / "metrics.csv"

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, **metrics}
        for key in row:
            if key not in self._keys:
                self._keys.append(key)
        self._rows.append(row)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "hparams.json").write_text(json.dumps(dict(params), indent=2, default=str) + "\n")

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
