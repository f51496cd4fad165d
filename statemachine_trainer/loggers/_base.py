"""``Logger``: where metrics go.  The trainer calls ``log_metrics`` at epoch ends and every
``log_every_n_steps`` batches with plain floats (the ``.item()`` calls happen once, there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["Logger"]


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

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
