"""``Profiler``: the interface the Trainer drives (setup, wrap every hook, describe at the end)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .._console import info

__all__ = ["PassThroughProfiler", "Profiler"]


class Profiler:
    """Records durations by action name; subclasses say how they are reported.

    ``dirpath`` and ``filename``: with a filename, ``describe`` writes
    ``{dirpath}/{stage}-{filename}.txt`` (dirpath defaults to the trainer's
    ``default_root_dir``) instead of logging the report, as Lightning does.
    """

    #: Whether the Trainer wraps the loops' hooks with it (PassThroughProfiler: no).
    enabled = True

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None) -> None:
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.filename = filename
        self.stage: str | None = None

    # -- what subclasses provide ------------------------------------------------------------
    def start(self, action: str) -> None:
        raise NotImplementedError

    def stop(self, action: str) -> None:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    # -- driven by the Trainer ----------------------------------------------------------------
    def setup(self, stage: str, default_dir: str | os.PathLike[str] | None = None) -> None:
        """A run of ``stage`` begins; its report covers what is recorded from now on."""
        self.stage = stage
        if self.dirpath is None and default_dir is not None:
            self.dirpath = Path(default_dir)

    def wrap(self, action: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` timed under ``action``: what the dispatcher binds instead of ``fn`` while profiling."""
        start, stop = self.start, self.stop

        def timed(*args: Any, **kwargs: Any) -> Any:
            start(action)
            try:
                return fn(*args, **kwargs)
            finally:
                stop(action)

        return timed

    @contextlib.contextmanager
    def profile(self, action: str) -> Iterator[None]:
        """Time a block of your own code: ``with trainer.profiler.profile("my_block"): ...``."""
        self.start(action)
        try:
            yield
        finally:
            self.stop(action)

    def describe(self) -> str:
        """Write the report (to ``{dirpath}/{stage}-{filename}.txt``, or the log), return it."""
        report = self.summary()
        if self.filename and self.dirpath is not None:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            prefix = f"{self.stage}-" if self.stage else ""
            (self.dirpath / f"{prefix}{self.filename}.txt").write_text(report)
        else:
            info(report)
        return report

    @staticmethod
    def now() -> float:
        return time.perf_counter()


class PassThroughProfiler(Profiler):
    """``trainer.profiler`` without ``profiler=...``: ``profile(...)`` blocks in user code run as they are.

    Lightning code calls ``with self.trainer.profiler.profile("name"):`` whether or
    not a profiler was asked for; this one records nothing, and the Trainer does
    not wrap any hook for it.
    """

    enabled = False

    def start(self, action: str) -> None:
        pass

    def stop(self, action: str) -> None:
        pass

    def summary(self) -> str:
        return ""
