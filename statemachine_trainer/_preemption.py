"""Preemption: SIGTERM / SIGUSR1 ask for a checkpoint at the next transition boundary, then a clean exit.

The signal handler only records which signal arrived -- no I/O, no
allocation-heavy work, nothing that could interrupt a half-done optimizer
step.  The Trainer's boundary observer sees the flag, writes one checkpoint
(so it holds an exact position, never half a transition), and raises
:class:`Preempted`, a ``SystemExit`` with :data:`PREEMPTED_EXIT_CODE` (75,
``EX_TEMPFAIL``: "try again"), which schedulers and wrapper scripts can tell
apart from success (0) and from a crash (1).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["PREEMPTED_EXIT_CODE", "PREEMPTION_SIGNALS", "Preempted", "PreemptionGuard"]

#: The process exit status after a preemption checkpoint was written.
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is on disk; exits the process with PREEMPTED_EXIT_CODE."""

    def __init__(self, signum: int, path: Any) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.signum, self.path = signum, path

    def __str__(self) -> str:
        return (f"received {signal.Signals(self.signum).name}: wrote {self.path} and stopped "
                f"(exit code {PREEMPTED_EXIT_CODE}); resume with ckpt_path='latest'.")


class PreemptionGuard:
    """While active (a ``with`` block around fit), remembers the first preemption signal received."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.on_signal: Any = None  # called (no arguments) when the first signal arrives, e.g. to start observing
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:  # noqa: PYI034 - final class, no subclass Self needed
        self.signum = None
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            for sig in PREEMPTION_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            if self.on_signal is not None:
                self.on_signal()
