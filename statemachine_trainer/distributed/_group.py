"""Joining torch's default process group, and turning a dead peer into one clear error.

Every collective blocks until all ranks arrive.  If a rank is gone, the
others must not wait forever: they must fail, say so, and exit, so the
launcher (or the scheduler) can stop the job and a resume can start from the
last checkpoint.  What actually happens with gloo on CPU (measured with
torch 2.13, two processes on one host):

* a peer **killed** (SIGKILL, OOM, segfault) -- before or during a collective
  -- closes its sockets, so the survivors' collective raises *at once*
  (within ~20 ms) with ``RuntimeError: [.../gloo/transport/tcp/pair.cc:537]
  Read error ...: Connection reset by peer`` or ``pair.cc:553 Connection
  closed by peer``;
* a peer **alive but absent** (hung, stuck in a long step, deadlocked) is
  only noticed after the process-group timeout: ``RuntimeError:
  [.../unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation to
  complete``.  The group is unusable afterwards: every later collective
  fails at once with ``Application timeout caused pair closure``.

So the timeout bounds the *hung*-peer case; :data:`DEFAULT_TIMEOUT` is long
enough for a slow rank to finish a step and write a checkpoint, and short
enough that a stuck job ends within minutes instead of torch's default 30
(gloo) or 10 (NCCL) minutes.  Under the elastic launcher the agent usually
wins the race anyway: it notices a worker's exit within its 0.1 s monitor
interval and stops the others with SIGTERM.

gloo raises a plain ``RuntimeError`` (NCCL raises ``DistBackendError``, a
subclass); :func:`collective` rewraps both as :class:`RankFailure`.

Leaving the group must *free* it, not only deregister it.  torch's
``destroy_process_group`` drops torch's own references, but the gloo backend
-- and its worker threads -- live on while anything else holds it (a
``DistributedDataParallel``'s reducer, above all).  A worker thread that is
still alive when the interpreter finalizes is a crash waiting for a
scheduler: after running a collective it drops its reference to the work;
if that is the last one, the work's tensors release their Python objects,
which needs the GIL, and during finalization Python answers a thread asking
for the GIL with ``pthread_exit``.  The forced unwind meets a ``noexcept``
destructor (``~AsyncAllgatherWork`` in the core dump we took) and the C++
runtime aborts: "terminate called without an active exception", SIGABRT,
exit 134 from the launcher -- rarely, since the worker must be descheduled
between finishing the collective and dropping it until the main thread has
reached finalization (2 in 68 validate-only runs on a loaded 2-core machine,
while our teardown still left DDP reachable).  So: leave the group (in a
``finally``, also after a failure) once nothing of ours holds DDP, and the
backend's destructor joins its threads while Python is whole.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator, Mapping
from typing import Literal

import torch
import torch.distributed as dist

from ._env import DistributedEnv

__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_VARIABLE",
    "RankFailure",
    "collective",
    "default_timeout",
    "join_process_group",
    "leave_process_group",
]

#: How long a collective waits for every rank before failing (see the module docstring).
DEFAULT_TIMEOUT = datetime.timedelta(seconds=120)
#: Environment variable overriding DEFAULT_TIMEOUT, in seconds (e.g. "600" for slow checkpoint writes).
TIMEOUT_VARIABLE = "STATEMACHINE_TRAINER_DIST_TIMEOUT"

_BACKENDS = {"cpu": "gloo", "cuda": "nccl"}

# The timeout the default group was joined with, kept for RankFailure's message:
# torch offers no public way to read it back.  Process-global, like the group itself.
_joined_timeout: datetime.timedelta | None = None


class RankFailure(RuntimeError):
    """A collective failed because another rank crashed, hung, or left; this rank cannot go on.

    The process group is unusable after this; the job must stop and be
    resumed from its last checkpoint.
    """

    def __init__(self, what: str, rank: int, world_size: int, timeout: datetime.timedelta | None, cause: str) -> None:
        self.what, self.rank, self.world_size, self.timeout = what, rank, world_size, timeout
        waited = f"{timeout.total_seconds():g} s" if timeout is not None else "the process group's timeout"
        super().__init__(
            f"rank {rank} of {world_size} failed during {what}: another rank crashed, hung, or left the "
            f"process group (collectives wait at most {waited}; set {TIMEOUT_VARIABLE} to change that). "
            f"Look for the first error in the other ranks' output, then resume from the last checkpoint "
            f"with ckpt_path='latest'. torch said: {cause}"
        )


def default_timeout(environ: Mapping[str, str] = os.environ) -> datetime.timedelta:
    """DEFAULT_TIMEOUT, or the number of seconds in STATEMACHINE_TRAINER_DIST_TIMEOUT."""
    text = environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # also rejects nan
        raise ValueError(f"{TIMEOUT_VARIABLE}={text!r} must be a positive number of seconds, e.g. 120.")
    return datetime.timedelta(seconds=seconds)


def join_process_group(
    env: DistributedEnv,
    accelerator: Literal["cpu", "cuda"] = "cpu",
    timeout: datetime.timedelta | None = None,
) -> torch.device:
    """Join the default process group as ``env`` describes (gloo on CPU, NCCL on CUDA); return this rank's device.

    Idempotent: joining again with the same rank, world size and backend does
    nothing, so the Trainer may call it from fit, validate and test alike.
    ``timeout`` None means :func:`default_timeout`.
    """
    global _joined_timeout
    if accelerator not in _BACKENDS:
        raise ValueError(f"accelerator={accelerator!r} is not supported; use 'cpu' (gloo) or 'cuda' (nccl).")
    backend = _BACKENDS[accelerator]
    device = _device_for(env, accelerator)
    if dist.is_initialized():
        _check_same_world(env, backend)
        return device
    timeout = default_timeout() if timeout is None else timeout
    # Imported before the group exists, on purpose: DDP's constructor imports torch._dynamo lazily, which imports
    # this; imported while a group exists, it leaves that group unfreeable by destroy_process_group (gloo's threads
    # then live into interpreter exit, the abort of issue 16).  Found by bisection; the mechanism is not known yet.
    import torch.distributed._shard  # noqa: F401

    dist.init_process_group(
        backend,
        # tcp:// rather than env:// so the group follows `env`, not whatever os.environ holds;
        # under torchrun both connect to the agent's store (TORCHELASTIC_USE_AGENT_STORE).
        init_method=f"tcp://{_url_host(env.master_addr)}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
        # Binding NCCL to its device up front avoids torch guessing "cuda:0" for every rank.
        device_id=device if accelerator == "cuda" else None,
    )
    _joined_timeout = timeout
    return device


def leave_process_group() -> None:
    """Destroy the default group if there is one; safe to call twice or without a group.

    Call it in a ``finally``, after a :class:`RankFailure` too: destroying a broken gloo group
    returns at once.  The group's threads end here only if nothing else holds the group (see the
    module docstring): drop your references to DDP first.
    """
    global _joined_timeout
    if dist.is_available() and dist.is_initialized():
        # What still holds the group -- a DistributedDataParallel whose forward never ran, above all -- can sit in
        # reference cycles that only the garbage collector frees.  Free it now, while the group is whole, and the
        # group itself right after, so its worker threads are joined before interpreter finalization.
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
    _joined_timeout = None


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Run a collective, turning torch's error for a missing peer into :class:`RankFailure` naming ``what``."""
    try:
        yield
    except RankFailure:
        raise
    except RuntimeError as error:  # gloo: RuntimeError; NCCL: DistBackendError, a RuntimeError
        if not dist.is_initialized():  # not a collective failure: there is no group to fail
            raise
        raise RankFailure(what, dist.get_rank(), dist.get_world_size(), _joined_timeout, str(error)) from error


def _device_for(env: DistributedEnv, accelerator: str) -> torch.device:
    if accelerator == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available() or env.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"accelerator='cuda' needs a GPU for LOCAL_RANK={env.local_rank}, but this node has "
            f"{torch.cuda.device_count()}; start at most that many workers per node, or use accelerator='cpu'."
        )
    torch.cuda.set_device(env.local_rank)  # so NCCL and every .cuda() call use this rank's GPU
    return torch.device("cuda", env.local_rank)


def _check_same_world(env: DistributedEnv, backend: str) -> None:
    """An existing group is fine only if it is the one we would have created."""
    current = (dist.get_rank(), dist.get_world_size(), dist.get_backend())
    if current != (env.rank, env.world_size, backend):
        raise RuntimeError(
            f"a process group is already initialized as rank {current[0]} of {current[1]} ({current[2]}), but this "
            f"run wants rank {env.rank} of {env.world_size} ({backend}); call leave_process_group() first."
        )


def _url_host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
