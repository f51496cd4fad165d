"""``Logger``: where metrics go.  The trainer calls ``log_metrics`` at epoch ends and every
``log_every_n_steps`` batches with plain floats (the ``.item()`` calls happen once, there)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = ["Logger", "VersionedLogger"]


class Logger:
    @property
    def log_dir(self) -> Path:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        """Record the run's hyperparameters (optional)."""

    def save(self) -> None:
        """Flush buffered records to disk."""

    def finalize(self, status: str) -> None:
        """Lightning's end-of-run call (``status``: "success", "failed"...): write what is buffered."""
        self.save()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class VersionedLogger(Logger):
    """A logger writing under ``<save_dir>/<name>/version_<n>/``: each run gets the next free ``n``, chosen lazily.

    The names are Lightning's: ``save_dir`` as given, ``root_dir`` is
    ``save_dir/name``, ``log_dir`` the version's folder.
    """

    def __init__(self, save_dir: str | os.PathLike[str], name: str, version: int | str | None) -> None:
        self.save_dir = Path(save_dir)
        self.name = name
        self._version = version

    @property
    def root_dir(self) -> Path:
        return self.save_dir / self.name

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def log_dir(self) -> Path:
        version = self.version
        return self.root_dir / (version if isinstance(version, str) else f"version_{version}")


def _next_version(folder: Path) -> int:
    existing = [int(m.group(1)) for p in folder.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(existing, default=-1) + 1
