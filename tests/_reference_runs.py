"""Uninterrupted reference runs of training scripts, for the kill-and-resume tests to compare with."""

from __future__ import annotations

import subprocess
from pathlib import Path


def run_references(tmp_path_factory, runs: dict[str, list[str]]) -> dict[str, Path]:
    """Run each command of ``runs`` once, uninterrupted, in a fresh directory of its own; all started together
    (most of each is importing torch).  Returns each name's directory; a failing run fails with its stderr."""
    dirs = {name: tmp_path_factory.mktemp(f"reference-{name}") for name in runs}
    running = {name: subprocess.Popen(runs[name], cwd=dirs[name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True) for name in runs}
    for process in running.values():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    return dirs
