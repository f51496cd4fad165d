"""A worker for tests/test_distributed_launch.py: joins a real gloo group and acts out one scenario.

Run plainly (``python tests/_dist_worker.py MODE OUT``) it is the parent: no
launcher variables, so it re-runs its own command line in two workers with
launch_workers and exits with their code.  Run by torchrun, or by a test that
sets the launcher variables itself, it is a worker.  Each rank writes what it
saw to OUT/rank<R>.json; the test asserts on those files.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from statemachine_trainer import distributed as dist

MODE, OUT = sys.argv[1], Path(sys.argv[2])


def report(who: int, **values: object) -> None:
    (OUT / f"rank{who}.json").write_text(json.dumps(values))


def collectives(rank: int) -> None:
    """Every wrapper once, with values whose reduction is known: rank r contributes r + 1."""
    mine = torch.tensor([rank + 1.0])
    report(
        rank,
        world_size=dist.world_size(),
        rank=dist.rank(),
        is_rank_zero=dist.is_rank_zero(),
        any_rank_one=dist.any_rank(rank == 1),
        any_rank_none=dist.any_rank(False),
        all_equal_same=dist.all_equal(("fit", "ADVANCE")),
        all_equal_rank=dist.all_equal(rank),
        gathered=dist.gather_objects(rank * 10),
        broadcast=dist.broadcast_object({"from": rank}),
        broadcast_src1=dist.broadcast_object(rank, src=1),
        reduced={op: dist.reduce_tensor(mine, op).tolist() for op in ("mean", "sum", "max", "min")},
        mine_untouched=mine.tolist(),
        all_gathered=dist.all_gather_tensor(mine).tolist(),
        gather_grad=_gather_grad(mine),
        omp_threads=os.environ.get("OMP_NUM_THREADS"),
    )
    dist.barrier()


def _gather_grad(mine: torch.Tensor) -> list[float]:
    """The gradient that reaches this rank's input through all_gather(sync_grads=True) of every rank's sum."""
    leaf = mine.clone().requires_grad_()
    dist.all_gather_tensor(leaf, sync_grads=True).sum().backward()
    return leaf.grad.tolist()


def exit_code(rank: int) -> None:
    """Rank 1 leaves with the code in argv[3]; rank 0 is busy elsewhere (not in a collective) until stopped."""
    if rank == 1:
        sys.exit(int(sys.argv[3]))
    time.sleep(30)


def die_then_collect(rank: int) -> None:
    """Rank 1 is SIGKILLed; rank 0 then needs it for a collective and must fail with RankFailure."""
    dist.barrier()  # both ranks fully joined: the death happens between collectives, not during the join
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.5)  # let the kill land first, so the failure is "a dead peer", not a race
    start = time.monotonic()
    try:
        dist.any_rank(False)
    except dist.RankFailure as failure:
        report(rank, error=type(failure).__name__, message=str(failure), seconds=time.monotonic() - start)
        sys.exit(3)
    report(rank, error=None)


def hang_then_collect(rank: int) -> None:
    """Rank 1 is alive but never arrives; rank 0 must give up after the timeout, not wait forever."""
    if rank == 1:
        time.sleep(60)
        sys.exit(0)
    start = time.monotonic()
    try:
        dist.any_rank(False)
    except dist.RankFailure as failure:
        report(rank, error=type(failure).__name__, message=str(failure), seconds=time.monotonic() - start)
        sys.exit(3)


def preempt(rank: int) -> None:
    """Wait for SIGTERM (forwarded by the parent's agent), agree on it with any_rank, exit 75 as the Trainer does."""
    requested = []
    signal.signal(signal.SIGTERM, lambda signum, frame: requested.append(signum))
    # One write() of the whole line: the workers share the parent's stdout, and print() writes the text and the
    # newline separately (unbuffered under the agent), so two ranks' lines could interleave as "ready 1ready 0".
    os.write(sys.stdout.fileno(), f"ready {rank}\n".encode())
    while not dist.any_rank(bool(requested)):
        time.sleep(0.05)
    deadline = time.monotonic() + 10  # the agent signals its workers one after another: ours may be on its way
    while not requested and time.monotonic() < deadline:
        time.sleep(0.01)
    report(rank, signals=requested)
    sys.exit(75)


SCENARIOS = {"collectives": collectives, "exit": exit_code, "die": die_then_collect, "hang": hang_then_collect,
             "preempt": preempt}


def main() -> int:
    env = dist.DistributedEnv.from_environ()
    if dist.should_launch(2, env):
        return dist.launch_workers(2)  # re-runs this very command line in two workers
    dist.join_process_group(env, "cpu")
    assert dist.join_process_group(env, "cpu") == torch.device("cpu")  # idempotent
    try:
        SCENARIOS[MODE](env.rank)
    finally:
        # Also after a RankFailure: exiting with a live (if broken) group leaves its threads to
        # interpreter teardown, where torch once aborted with "terminate called without an active exception".
        dist.leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
