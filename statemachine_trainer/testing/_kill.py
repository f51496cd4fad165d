"""Kill a user's training *process* with SIGKILL at a drawn moment, resume it, and demand the same result.

The in-process check (:func:`assert_resume_exact`) interrupts at a chosen
hook; this one does what a preempted or crashed job does: the process dies
at whatever instruction it is on -- inside a step, inside a checkpoint write,
inside a dataloader worker's fetch -- with no handler run and nothing
flushed.  What it checks is the whole promise: the newest *valid*
checkpoint is intact, and resuming from it ends bit-identical.

The user's script is the unit under test, with three conventions:

* it runs in the working directory it is started in (relative paths), so
  two runs in two directories write the same state;
* it writes checkpoints under ``checkpoints/`` there while it runs (e.g.
  ``ModelCheckpoint(dirpath="checkpoints", every_n_train_steps=1)``), and its
  final state to ``final.ckpt`` (``trainer.save_checkpoint("final.ckpt")``);
* given ``--resume latest`` (``resume_args``), it passes
  ``ckpt_path="latest"`` to ``fit``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import diff_checkpoints, find_latest, read_manifest
from ..checkpoint._latest import candidates
from ._resume import ResumeMismatch

__all__ = ["KillMissed", "RunFailed", "assert_kill_resume_exact", "compare_final_states", "kill_points"]

_POLL_SECONDS = 0.005


class RunFailed(RuntimeError):
    """A run of the script under test failed on its own; the message ends with its stderr."""


class KillMissed(RuntimeError):
    """The process finished (or failed) before the drawn kill moment; draw an earlier one."""


def kill_points(max_checkpoint: int, max_delay: float = 0.05) -> Any:
    """Hypothesis strategy: ``(checkpoint, delay)`` -- kill ``delay`` seconds after the ``checkpoint``-th one.

    ``checkpoint`` counts checkpoints by step number (1 = the first one
    written); the delay lands the kill anywhere in the work that follows,
    including inside the next checkpoint's write.
    """
    from hypothesis import strategies as st

    return st.tuples(st.integers(1, max_checkpoint), st.floats(0.0, max_delay))


def assert_kill_resume_exact(command: Sequence[str], workdir: str | os.PathLike[str], checkpoint: int,
                             delay: float = 0.0, *, resume_args: Sequence[str] = ("--resume", "latest"),
                             final: str = "final.ckpt", checkpoints: str = "checkpoints",
                             env: dict[str, str] | None = None, timeout: float = 300.0,
                             uninterrupted: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run ``command`` uninterrupted, and killed after its ``checkpoint``-th checkpoint plus ``delay``, then resumed.

    The runs happen in ``workdir/uninterrupted`` and ``workdir/killed``.  Pass
    ``uninterrupted`` (a directory where ``command`` already ran to the end) to
    reuse one reference run across many drawn kill points.  Raises :class:`ResumeMismatch` naming the first difference between the two
    final states, :class:`KillMissed` when the run ended before the kill, and
    :class:`RunFailed` (with its stderr) when a run fails.  Returns what happened:
    the step of the checkpoint the resume started from and the kill time.
    """
    root = Path(workdir)
    killed = root / "killed"
    killed.mkdir(parents=True, exist_ok=True)
    if uninterrupted is None:
        full = root / "uninterrupted"
        full.mkdir(parents=True, exist_ok=True)
        _run(command, full, env, timeout)
    else:
        full = Path(uninterrupted)
    killed_at = _run_and_kill(command, killed, killed / checkpoints, checkpoint, delay, env, timeout)
    resumed_from, _ = find_latest(killed / checkpoints)
    _run([*command, *resume_args], killed, env, timeout)
    compare_final_states(full / final, killed / final)
    return {"killed_after_seconds": killed_at,
            "resumed_from": None if resumed_from is None else resumed_from.name}


def compare_final_states(expected: str | os.PathLike[str], got: str | os.PathLike[str]) -> None:
    """Raise :class:`ResumeMismatch` unless two checkpoints hold bit-identical state (metadata aside)."""
    difference = diff_checkpoints(expected, got)  # every rank's part too, for a multi-process run
    if difference is not None:
        raise ResumeMismatch(f"the killed and resumed run ended differently from the uninterrupted one "
                             f"({got} vs {expected}): {difference}")


def _run(command: Sequence[str], cwd: Path, env: dict[str, str] | None, timeout: float) -> None:
    done = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RunFailed(f"{' '.join(command)} (in {cwd}) exited with {done.returncode}:\n{done.stderr[-3000:]}")


def _run_and_kill(command: Sequence[str], cwd: Path, checkpoints: Path, checkpoint: int, delay: float,
                  env: dict[str, str] | None, timeout: float) -> float:
    """Start ``command`` in its own process group; SIGKILL the whole group at the drawn moment."""
    start = time.monotonic()
    process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: set[Any] = set()  # steps of the checkpoints seen so far (top-k pruning deletes old ones)
    try:
        while len(_note_checkpoints(checkpoints, seen)) < checkpoint:
            if process.poll() is not None:
                raise KillMissed(f"{' '.join(command)} exited with {process.returncode} after "
                                 f"{len(seen)} checkpoint(s), before checkpoint "
                                 f"{checkpoint}; draw an earlier kill point.\n{process.stderr.read()[-2000:]}")
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"no checkpoint {checkpoint} under {checkpoints} within {timeout} s")
            time.sleep(_POLL_SECONDS)
        time.sleep(delay)
        _kill_tree(process.pid)  # the job, its workers and theirs, all at once: as a scheduler kills a job
        process.wait(timeout=timeout)
        return time.monotonic() - start
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every descendant, even those in sessions of their own.

    torchrun starts each worker in a new session, so killing the launcher's
    group alone would leave the ranks running on; a cluster scheduler kills
    them all (a cgroup), and so does this.
    """
    tree, frontier = [pid], [pid]
    while frontier:
        children = []
        for parent in frontier:
            for task in Path(f"/proc/{parent}/task").glob("*"):
                try:
                    children += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    continue  # exited meanwhile
        tree += children
        frontier = children
    for target in tree:
        try:
            os.kill(target, signal.SIGSTOP)  # freeze the whole tree first, so nothing reacts to the others dying
        except ProcessLookupError:
            continue
    os.killpg(pid, signal.SIGKILL)
    for target in tree:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            continue


def _note_checkpoints(folder: Path, seen: set[Any]) -> set[Any]:
    """Add the steps of the committed checkpoints now under ``folder`` to ``seen``; return it."""
    try:
        listed = candidates(folder)  # installed ones only, not a save's hidden temporary directory
    except OSError:
        return seen  # one was pruned while being listed: look again at the next poll
    for path in listed:
        try:
            seen.add(read_manifest(path)["metadata"].get("step"))
        except (OSError, ValueError, KeyError):
            continue  # e.g. removed by top-k pruning since it was listed
    return seen
