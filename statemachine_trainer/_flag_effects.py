"""What some flags do beyond limits: torch's global switches, the callbacks they add, the modes around a run.

* ``benchmark`` / ``deterministic``: ``torch.backends.cudnn.benchmark`` is set
  at construction, as Lightning does -- to the flag, or to False when
  ``deterministic=True`` left it unset (cuDNN's autotuner picks
  nondeterministic kernels); both True warns, since PyTorch then ignores
  ``cudnn.deterministic``.
* ``enable_model_summary`` adds a :class:`ModelSummary` and ``max_time`` a
  :class:`Timer`, unless the callbacks already hold one (Lightning's rule).
* :class:`RunModes`: ``detect_anomaly`` holds
  ``torch.autograd.set_detect_anomaly(True)`` for a fit, and the profiler
  wraps the running tree's hooks and writes its report when the run ends.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ._flags import TrainerConfig

__all__ = ["RunModes", "add_flag_callbacks", "set_torch_flags"]


def set_torch_flags(config: TrainerConfig) -> None:
    benchmark = config.benchmark
    if config.deterministic:
        if benchmark is None:
            benchmark = False
        elif benchmark:
            warnings.warn("You passed deterministic=True and benchmark=True. Note that PyTorch ignores "
                          "torch.backends.cudnn.deterministic=True when torch.backends.cudnn.benchmark=True.",
                          stacklevel=3)
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark


def add_flag_callbacks(callbacks: list[Any], config: TrainerConfig) -> None:
    """Append the callbacks the flags ask for (before the checkpoint callback, which must stay last)."""
    from .callbacks import ModelCheckpoint, ModelSummary, Timer

    added = []
    if config.enable_model_summary and not any(isinstance(cb, ModelSummary) for cb in callbacks):
        added.append(ModelSummary())
    if config.max_time is not None:
        timer = next((cb for cb in callbacks if isinstance(cb, Timer)), None)
        if timer is None:
            added.append(Timer(duration={"seconds": config.max_time}, interval="step"))
        else:
            warnings.warn("Ignoring Trainer(max_time=...): the callbacks already hold a Timer.", stacklevel=3)
    at = next((i for i, cb in enumerate(callbacks) if isinstance(cb, ModelCheckpoint)), len(callbacks))
    callbacks[at:at] = added


class RunModes:
    """The modes a run is held in from its assembly to its end (each entered once, left in ``exit``)."""

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self._anomaly: Any = None
        self._profiled: Any = None

    def enter(self, run: Any, root: Any) -> None:
        config = self.config
        if config.detect_anomaly and run.state == "fit":
            self._anomaly = torch.autograd.set_detect_anomaly(True)  # sets the mode now; __exit__ restores it
        if config.profiler.enabled:
            config.profiler.setup(run.state, config.default_root_dir)
            root.profile(config.profiler.wrap)
            self._profiled = root

    def exit(self, run: Any, root: Any) -> None:
        if self._anomaly is not None:
            self._anomaly.__exit__(None, None, None)
            self._anomaly = None
        if self._profiled is not None:
            self._profiled, profiled = None, self._profiled
            if profiled.state in ("START", "END"):
                profiled.profile(None)  # bound plainly again: the next run may be another stage's tree
            if run.is_global_zero:
                self.config.profiler.describe()
