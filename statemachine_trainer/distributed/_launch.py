"""Starting N workers from a plain ``python script.py``, through torch's own elastic launcher.

``Trainer(strategy="ddp", devices=N)`` run as ``torchrun --nproc-per-node N
script.py`` is already a worker: torchrun set the launcher variables (see
:class:`DistributedEnv`).  Run as plain ``python script.py`` it is the
*parent*: no launcher variables, so :func:`should_launch` says yes and
:func:`launch_workers` re-runs the same command line in N workers through
``torch.distributed.launcher.api.elastic_launch`` -- the agent torchrun itself
uses, with torchrun's ``--standalone`` settings -- and waits.  The workers
find the variables set and train; the parent only turns their fate into its
own exit code.  The parent must not build a process group or train itself,
so callers should ask :func:`should_launch` before any expensive setup.

Exit codes: 0 when every worker succeeded; otherwise the first failed
worker's code (torch's root-cause order), so a preempted worker's 75 reaches
the scheduler; a worker killed by signal S gives 128 + S, as in a shell.  A
preemption signal sent to the parent (SIGTERM, SIGUSR1) is forwarded by the
agent to every worker, which then checkpoints and exits (within 30 s, or
TORCH_ELASTIC_SHUTDOWN_TIMEOUT, before the agent SIGKILLs it); torch does not report
their codes after a signal, so the parent answers 75 ("resume me").

Which failure is "first": torch's agent polls its workers every 0.1 s and
reports those that had failed by then; without error files (we keep none)
their timestamps are whole seconds, so in a tie the lowest rank wins.  A rank
that fails *because* a peer died (a :class:`RankFailure`) still has to print
a traceback and tear down, which took longer than one poll in every run we
measured, so the peer's own code is the one reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .._preemption import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNALS
from ._env import DistributedEnv

if TYPE_CHECKING:
    from torch.distributed.launcher.api import LaunchConfig

__all__ = ["launch_workers", "should_launch"]

# Silent on success and on preemption; one line when a worker fails, since its own output may be empty (SIGKILL).
logger = logging.getLogger(__name__)

# torchrun's defaults plus SIGUSR1, our second preemption signal: the agent forwards these to the workers.
_FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1")


def should_launch(devices: int, env: DistributedEnv | None) -> bool:
    """True in a plain ``python script.py`` parent that must start ``devices`` workers.

    False in a worker (``env`` is set) and for a single device.  A worker
    whose launcher started a different number of processes per node than
    ``devices`` is an error: the run would silently use the wrong world.
    """
    if devices < 1:
        raise ValueError(f"devices={devices} must be at least 1.")
    if env is None:
        return devices > 1
    if env.local_world_size != devices:
        raise ValueError(
            f"devices={devices}, but the launcher started LOCAL_WORLD_SIZE={env.local_world_size} processes on "
            f"this node; pass devices={env.local_world_size} or --nproc-per-node {devices} to torchrun."
        )
    return False


def launch_workers(nprocs: int, argv: Sequence[str] | None = None) -> int:
    """Run ``python *argv`` in ``nprocs`` local workers (default: this process's own command line); return an exit code.

    Workers inherit this process's stdout, stderr, working directory and
    environment; torch's own launcher messages are silenced unless LOGLEVEL is
    set.  ``argv`` is what follows the interpreter, e.g. ``["train.py", "--lr",
    "0.1"]`` or ``["-m", "pkg.train"]``.
    """
    # Imported here: only a launching parent needs the elastic agent, not every worker importing this package.
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    if nprocs < 1:
        raise ValueError(f"nprocs={nprocs} must be at least 1.")
    args = list(argv) if argv is not None else _own_command_line()
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",  # torchrun --standalone: a c10d store on localhost, on a free port
        rdzv_endpoint="localhost:0",
        max_restarts=0,  # a failed worker fails the run; resuming is the user's (or scheduler's) call
        # Workers write straight to our stdout/stderr; os.devnull also keeps torch from making log directories.
        logs_specs=DefaultLogsSpecs(log_dir=os.devnull),
        signals_to_handle=",".join(_FORWARDED_SIGNALS),
    )
    with _torchrun_thread_default(nprocs), _parent_state_kept(), _quiet_elastic_logs():
        return _run(config, args)


def _run(config: LaunchConfig, args: list[str]) -> int:
    """Launch and wait; translate torch's ways of reporting failure into an exit code."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        return _worker_exit_code(rank, failure.exitcode)
    except SignalException as stopped:  # the parent got a signal; the agent forwarded it and waited
        return PREEMPTED_EXIT_CODE if stopped.sigval in PREEMPTION_SIGNALS else 128 + int(stopped.sigval)
    return 0


def _worker_exit_code(rank: int, exitcode: int) -> int:
    """The parent's exit code for a failed worker: its own, or 128 + S when signal S killed it (torch says -S)."""
    if exitcode < 0:
        logger.warning("worker rank %d was killed by %s; stopped the other workers.", rank, _signal_name(-exitcode))
        return 128 - exitcode
    if exitcode != PREEMPTED_EXIT_CODE:
        logger.warning("worker rank %d exited with code %d; stopped the other workers.", rank, exitcode)
    return exitcode


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # e.g. a real-time signal, which has no name
        return f"signal {signum}"


def _own_command_line() -> list[str]:
    """This interpreter's arguments (flags, ``-m module`` or script, script arguments), to run again in workers."""
    # sys.orig_argv, unlike sys.argv, keeps "-m pkg.mod" and interpreter flags such as -u or -X.
    if len(sys.orig_argv) < 2 or sys.argv[0] in ("", "-"):
        raise RuntimeError(
            "cannot start workers from an interactive session or a script read from stdin: they re-run this "
            "process's command line. Put the code in a file and run it, or launch with torchrun."
        )
    return list(sys.orig_argv[1:])


@contextlib.contextmanager
def _torchrun_thread_default(nprocs: int) -> Iterator[None]:
    """Give workers OMP_NUM_THREADS=1 when unset, as torchrun does, so both launches compute alike."""
    if "OMP_NUM_THREADS" in os.environ or nprocs < 2:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the agent when it builds the workers' environment
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


@contextlib.contextmanager
def _parent_state_kept() -> Iterator[None]:
    """Undo what torch's agent leaves behind: its signal handlers and TORCHELASTIC_SIGNALS_TO_HANDLE."""
    names = [name for name in _FORWARDED_SIGNALS if hasattr(signal, name)]
    in_main = threading.current_thread() is threading.main_thread()
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in names} if in_main else {}
    variable = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")
    try:
        yield
    finally:
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)
        if variable is None:
            os.environ.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
        else:
            os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = variable


@contextlib.contextmanager
def _quiet_elastic_logs() -> Iterator[None]:
    """Silence the agent's warnings ("closing signal SIGTERM", "failed (exitcode: 75)"); our exit code says it.

    Each elastic module sets its own logger's level, so the parent "torch.distributed" level alone would not do.
    """
    if "LOGLEVEL" in os.environ:  # torch's own switch: the user asked for the agent's logs
        yield
        return
    loggers = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher"))
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
