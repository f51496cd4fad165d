"""``SimpleProfiler``: per action, the number of calls, mean and total seconds (Lightning's table)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

from ._base import Profiler

__all__ = ["SimpleProfiler"]


class SimpleProfiler(Profiler):
    """Times each action with ``time.perf_counter``; ``summary()`` is Lightning's "Profiler Report" table.

    ``extended=True`` (default) adds the call count and each action's share of
    the stage's wall time.  A nested call of the same action (a loop whose hook
    runs the same loop class again) is timed per call.
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None,
                 extended: bool = True) -> None:
        super().__init__(dirpath, filename)
        self.extended = extended
        self.recorded_durations: dict[str, list[float]] = {}
        self._started: dict[str, list[float]] = {}
        self.start_time = time.perf_counter()

    def setup(self, stage: str, default_dir: Any = None) -> None:
        super().setup(stage, default_dir)
        self.recorded_durations, self._started = {}, {}
        self.start_time = time.perf_counter()

    def start(self, action: str) -> None:
        self._started.setdefault(action, []).append(time.perf_counter())

    def stop(self, action: str) -> None:
        end = time.perf_counter()
        starts = self._started.get(action)
        if not starts:
            raise ValueError(f"SimpleProfiler.stop({action!r}) without a matching start({action!r}).")
        self.recorded_durations.setdefault(action, []).append(end - starts.pop())

    def report(self) -> list[tuple[str, float, int, float, float]]:
        """(action, mean s, calls, total s, % of the stage's time), the longest total first."""
        elapsed = max(time.perf_counter() - self.start_time, 1e-12)
        rows = []
        for action, durations in self.recorded_durations.items():
            total = math.fsum(durations)
            rows.append((action, total / len(durations), len(durations), total, 100.0 * total / elapsed))
        rows.sort(key=lambda row: row[3], reverse=True)
        return rows

    def summary(self) -> str:
        title = f"{self.stage.upper()} Profiler Report" if self.stage else "Profiler Report"
        rows = self.report()
        width = max([len("Action"), *(len(row[0]) for row in rows)])
        if self.extended:
            header = ("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
            cells = [(a, f"{mean:.5}", str(n), f"{total:.5}", f"{share:.5}") for a, mean, n, total, share in rows]
            elapsed = time.perf_counter() - self.start_time
            total_row = ("Total", "-", str(sum(row[2] for row in rows)), f"{elapsed:.5}", "100 %")
            cells.insert(0, total_row)
        else:
            header = ("Action", "Mean duration (s)", "Total time (s)")
            cells = [(a, f"{mean:.5}", f"{total:.5}") for a, mean, _, total, _ in rows]
        line = "-" * (width + 20 * (len(header) - 1) + 3 * len(header) + 1)
        out = [title, line, _row(header, width), line]
        out += [_row(cell, width) for cell in cells]
        out.append(line)
        return os.linesep.join(out) + os.linesep


def _row(cells: tuple[str, ...], width: int) -> str:
    first, rest = cells[0], cells[1:]
    return f"|  {first:<{width}}  |" + "".join(f"  {cell:<17} |" for cell in rest)
