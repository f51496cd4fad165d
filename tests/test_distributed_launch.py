"""statemachine_trainer.distributed on real processes: 2-rank gloo groups on CPU, started by torchrun,
by launch_workers, or by hand; plus unit tests of the launcher environment and the one-process fallbacks.

Every subprocess call carries a timeout, so a hung rank fails the test instead of CI.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from statemachine_trainer import distributed as dist
from statemachine_trainer.distributed import DistributedEnv, RankFailure

ROOT = Path(__file__).resolve().parent.parent
WORKER = str(ROOT / "tests" / "_dist_worker.py")
LIMIT = 120  # seconds any one subprocess may take; ~10x what it needs on 2 cores


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without launcher variables, so children decide for themselves what they are."""
    env = {k: v for k, v in os.environ.items() if k not in dist.LAUNCHER_VARIABLES and not k.startswith("TORCHELASTIC")}
    return {**env, **extra}


def results(out: Path) -> dict[int, dict]:
    return {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- two real ranks -------------------------------------------------------------------------------------------------


def check_collectives(out: Path) -> None:
    by_rank = results(out)
    assert sorted(by_rank) == [0, 1]
    for rank, seen in by_rank.items():
        assert seen["world_size"] == 2 and seen["rank"] == rank and seen["is_rank_zero"] == (rank == 0)
        assert seen["any_rank_one"] is True and seen["any_rank_none"] is False
        assert seen["all_equal_same"] is True and seen["all_equal_rank"] is False
        assert seen["gathered"] == [0, 10]
        assert seen["broadcast"] == {"from": 0} and seen["broadcast_src1"] == 1
        assert seen["reduced"] == {"mean": [1.5], "sum": [3.0], "max": [2.0], "min": [1.0]}
        assert seen["mine_untouched"] == [rank + 1.0]
        assert seen["all_gathered"] == [[1.0], [2.0]]  # self.all_gather: stacked on a new first dimension
        assert seen["gather_grad"] == [2.0]  # sync_grads: both ranks' sums reach this rank's input
        assert seen["omp_threads"] == os.environ.get("OMP_NUM_THREADS", "1")  # as torchrun sets it


def test_collectives_under_torchrun(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           WORKER, "collectives", str(tmp_path)]
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=clean_environ(), capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stderr
    check_collectives(tmp_path)


def test_plain_python_parent_relaunches_itself_in_two_workers(tmp_path: Path) -> None:
    start = time.monotonic()
    cmd = [sys.executable, WORKER, "collectives", str(tmp_path)]
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=clean_environ(), capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stderr
    check_collectives(tmp_path)
    assert "torch/distributed/elastic" not in done.stderr  # the agent's own log lines are silenced
    print(f"python parent + 2 workers, end to end: {time.monotonic() - start:.1f} s")


def launch_here(*worker_args: str) -> int:
    """launch_workers(2, argv) called by this test process itself (a plain python process, not a worker).

    No subprocess timeout is possible here; both scenarios end by themselves within seconds (rank 0 sleeps at
    most 30 s, and the agent stops it as soon as rank 1 is gone).
    """
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    code = dist.launch_workers(2, [WORKER, *worker_args])
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # torch's agent replaced them; we restored
    assert "TORCHELASTIC_SIGNALS_TO_HANDLE" not in os.environ
    return code


def test_a_workers_exit_code_becomes_the_parents(tmp_path: Path) -> None:
    assert launch_here("exit", str(tmp_path), "75") == 75


def test_a_worker_killed_by_a_signal_gives_128_plus_the_signal(tmp_path: Path) -> None:
    # The agent notices rank 1's death within 0.1 s and stops rank 0 before (or as) its collective fails.
    assert launch_here("die", str(tmp_path)) == 128 + signal.SIGKILL


def read_lines(proc: subprocess.Popen, count: int, timeout: float) -> list[str]:
    """The first ``count`` lines of ``proc``'s stdout, or TimeoutError: a readline() could block forever."""
    deadline, data = time.monotonic() + timeout, b""
    while data.count(b"\n") < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
            raise TimeoutError(f"got only {data!r} from the workers within {timeout} s")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines()[:count]


def test_preemption_signal_to_the_parent_reaches_workers_and_exits_75(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, WORKER, "preempt", str(tmp_path)], cwd=ROOT, env=clean_environ(),
                              stdout=subprocess.PIPE)
    try:
        assert set(read_lines(parent, 2, LIMIT)) == {"ready 0", "ready 1"}  # workers print to the parent's stdout
    finally:
        # Also when the assertion failed: the workers run in their own sessions and would outlive a killed agent,
        # waiting for this signal (and holding the stdout pipe open) forever.
        parent.send_signal(signal.SIGTERM)
    try:
        assert parent.wait(timeout=LIMIT) == 75
    finally:
        parent.kill()
        parent.communicate(timeout=LIMIT)
    assert results(tmp_path) == {0: {"signals": [signal.SIGTERM]}, 1: {"signals": [signal.SIGTERM]}}


def start_ranks(mode: str, out: Path, timeout_s: int) -> list[subprocess.Popen]:
    """Two workers started by hand, with the variables a launcher would set, and no agent to stop them."""
    port, procs = free_port(), []
    for rank in range(2):
        env = DistributedEnv(rank, 2, rank, 2, "127.0.0.1", port).to_environ()
        procs.append(subprocess.Popen([sys.executable, WORKER, mode, str(out)], cwd=ROOT,
                                      env=clean_environ(**env, STATEMACHINE_TRAINER_DIST_TIMEOUT=str(timeout_s)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def test_a_killed_rank_makes_the_survivor_raise_rank_failure_at_once(tmp_path: Path) -> None:
    survivor, victim = start_ranks("die", tmp_path, timeout_s=10)
    try:
        victim.communicate(timeout=LIMIT)
        assert victim.returncode == -signal.SIGKILL
        _, err = survivor.communicate(timeout=LIMIT)
        assert survivor.returncode == 3, err
    finally:
        for proc in (survivor, victim):
            proc.kill()
            proc.communicate(timeout=LIMIT)
    seen = results(tmp_path)[0]
    assert seen["error"] == "RankFailure"
    assert seen["message"].startswith("rank 0 of 2 failed during any_rank(): another rank crashed, hung, or left")
    assert "at most 10 s; set STATEMACHINE_TRAINER_DIST_TIMEOUT" in seen["message"]
    assert "Connection" in seen["message"]  # gloo: "Connection reset by peer" / "closed by peer"
    assert seen["seconds"] < 5  # a dead peer's sockets close: no need to wait for the timeout


def test_a_hung_rank_makes_the_survivor_raise_rank_failure_after_the_timeout(tmp_path: Path) -> None:
    survivor, hung = start_ranks("hang", tmp_path, timeout_s=3)
    try:
        _, err = survivor.communicate(timeout=LIMIT)
        assert survivor.returncode == 3, err
    finally:
        for proc in (survivor, hung):
            proc.kill()
            proc.communicate(timeout=LIMIT)
    seen = results(tmp_path)[0]
    assert seen["error"] == "RankFailure" and "Timed out" in seen["message"]
    assert 2.5 < seen["seconds"] < 10


# -- the launcher environment ---------------------------------------------------------------------------------------


@st.composite
def distributed_envs(draw: st.DrawFn) -> DistributedEnv:
    world_size = draw(st.integers(1, 64))
    local_world_size = draw(st.integers(1, world_size))
    return DistributedEnv(
        rank=draw(st.integers(0, world_size - 1)),
        world_size=world_size,
        local_rank=draw(st.integers(0, local_world_size - 1)),
        local_world_size=local_world_size,
        master_addr=draw(st.sampled_from(["localhost", "127.0.0.1", "node-7.cluster", "::1"])),
        master_port=draw(st.integers(1, 65535)),
    )


@given(distributed_envs(), st.dictionaries(st.sampled_from(["PATH", "HOME", "OMP_NUM_THREADS"]), st.text()))
def test_environ_round_trips(env: DistributedEnv, unrelated: dict[str, str]) -> None:
    assert DistributedEnv.from_environ({**unrelated, **env.to_environ()}) == env


@given(st.fixed_dictionaries({name: st.integers(-2, 70) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                      "LOCAL_WORLD_SIZE")}))
def test_environ_is_accepted_exactly_when_consistent(ints: dict[str, int]) -> None:
    environ = {**{k: str(v) for k, v in ints.items()}, "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}
    consistent = (0 <= ints["RANK"] < ints["WORLD_SIZE"]
                  and 0 <= ints["LOCAL_RANK"] < ints["LOCAL_WORLD_SIZE"] <= ints["WORLD_SIZE"])
    if consistent:
        assert DistributedEnv.from_environ(environ) is not None
    else:
        with pytest.raises(ValueError, match=r"(RANK|WORLD_SIZE)=-?\d+ must be .*Launch with torchrun"):
            DistributedEnv.from_environ(environ)


def test_no_launcher_variables_means_not_launched() -> None:
    assert DistributedEnv.from_environ({}) is None
    assert DistributedEnv.from_environ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}) is None


def test_partial_environ_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"^RANK, WORLD_SIZE set but LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, "
                                         r"MASTER_PORT not: a partial launcher environment\. Launch with torchrun"):
        DistributedEnv.from_environ({"RANK": "0", "WORLD_SIZE": "2"})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("RANK", "one", r"RANK='one' is not an integer"),
    ("RANK", "2", r"RANK=2 must be in \[0, WORLD_SIZE=2\)"),
    ("LOCAL_WORLD_SIZE", "3", r"LOCAL_WORLD_SIZE=3 must be in \[1, WORLD_SIZE=2\]"),
    ("MASTER_PORT", "70000", r"MASTER_PORT=70000 must be a TCP port"),
    ("MASTER_ADDR", "", r"MASTER_ADDR is empty"),
])
def test_bad_environ_names_the_variable(name: str, value: str, message: str) -> None:
    environ = {**DistributedEnv(1, 2, 1, 2, "localhost", 29500).to_environ(), name: value}
    with pytest.raises(ValueError, match=message):
        DistributedEnv.from_environ(environ)


def test_should_launch_only_in_a_multi_device_parent() -> None:
    worker = DistributedEnv(0, 2, 0, 2, "localhost", 29500)
    assert dist.should_launch(2, None) and not dist.should_launch(1, None)
    assert not dist.should_launch(2, worker)
    with pytest.raises(ValueError, match=r"devices=4, but the launcher started LOCAL_WORLD_SIZE=2"):
        dist.should_launch(4, worker)
    with pytest.raises(ValueError, match=r"devices=0 must be at least 1"):
        dist.should_launch(0, None)


def test_timeout_default_and_override() -> None:
    assert dist.default_timeout({}) == dist.DEFAULT_TIMEOUT
    assert dist.default_timeout({dist.TIMEOUT_VARIABLE: "7.5"}).total_seconds() == 7.5
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(ValueError, match="STATEMACHINE_TRAINER_DIST_TIMEOUT=.* must be a positive number"):
            dist.default_timeout({dist.TIMEOUT_VARIABLE: bad})


# -- one process: no group, then a group of one ---------------------------------------------------------------------


def test_collectives_are_identities_without_a_group() -> None:
    assert not torch.distributed.is_initialized()
    assert (dist.rank(), dist.world_size(), dist.is_rank_zero()) == (0, 1, True)
    assert dist.any_rank(True) is True and dist.any_rank(False) is False
    assert dist.all_equal("x") and dist.gather_objects("x") == ["x"]
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    dist.barrier()
    assert torch.equal(dist.reduce_tensor(torch.tensor([3]), "mean"), torch.tensor([3.0]))
    assert torch.equal(dist.reduce_tensor(torch.tensor([3]), "sum"), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"op='avg' is not a reduction; use one of 'mean', 'sum', 'max', 'min'"):
        dist.reduce_tensor(torch.tensor([3.0]), "avg")  # type: ignore[arg-type]


def test_a_group_of_one_joins_once_and_converts_errors() -> None:
    env = DistributedEnv(0, 1, 0, 1, "127.0.0.1", free_port())
    try:
        assert dist.join_process_group(env, "cpu", timeout=dist.DEFAULT_TIMEOUT) == torch.device("cpu")
        assert dist.join_process_group(env, "cpu") == torch.device("cpu")  # idempotent
        with pytest.raises(RuntimeError, match=r"already initialized as rank 0 of 1 \(gloo\), but this run wants "
                                               r"rank 1 of 2 \(gloo\); call leave_process_group\(\) first"):
            dist.join_process_group(DistributedEnv(1, 2, 1, 2, "127.0.0.1", env.master_port), "cpu")
        assert torch.equal(dist.reduce_tensor(torch.tensor([2.0, 4.0]), "max"), torch.tensor([2.0, 4.0]))
        assert dist.any_rank(True) and dist.all_equal(1)
        expected = r"^rank 0 of 1 failed during test\(\).*at most 120 s.*torch said: boom"
        with pytest.raises(RankFailure, match=expected), dist.collective("test()"):
            raise RuntimeError("boom")
    finally:
        dist.leave_process_group()
        dist.leave_process_group()  # twice is fine
    assert not torch.distributed.is_initialized()


def test_ballots_come_about_every_ballot_seconds_of_the_slowest_ranks_batches() -> None:
    from statemachine_trainer.distributed._agreement import BALLOT_SECONDS, MAX_BATCHES, batches_between_ballots

    assert batches_between_ballots(BALLOT_SECONDS / 20) == 20
    assert batches_between_ballots(BALLOT_SECONDS * 5) == 1  # slow batches: a ballot at every batch end
    assert batches_between_ballots(BALLOT_SECONDS / 10_000) == MAX_BATCHES  # fast ones: capped
    assert batches_between_ballots(float("nan")) == MAX_BATCHES


def test_the_preemption_vote_runs_one_collective_per_ballot_and_acts_on_a_signal_two_ballots_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A group of one, with batches of 10 ms: ballots come every ~BALLOT_SECONDS (not at every batch end), and
    a signal is acted on at the second ballot after it arrived, not before."""
    from statemachine_trainer.distributed._agreement import BALLOT_SECONDS

    reductions = []
    real_all_reduce = torch.distributed.all_reduce
    monkeypatch.setattr(torch.distributed, "all_reduce",
                        lambda *args, **kwargs: reductions.append(1) or real_all_reduce(*args, **kwargs))
    dist.join_process_group(DistributedEnv(0, 1, 0, 1, "127.0.0.1", free_port()), "cpu")
    try:
        vote = dist.PreemptionVote()
        ballots = []
        for batch in range(60):
            time.sleep(0.01)
            before = len(reductions)
            assert not vote.at_batch_end(signalled=False)
            if len(reductions) > before:
                ballots.append(batch)
        gaps = [b - a for a, b in itertools.pairwise(ballots[1:])]  # the first two ballots only measure the pace
        assert ballots[:2] == [0, 1] and gaps and all(2 <= gap <= BALLOT_SECONDS / 0.01 for gap in gaps), ballots
        signalled_at, agreed_at = 60, None
        for batch in range(60, 200):
            time.sleep(0.01)
            before = len(reductions)
            if vote.at_batch_end(signalled=True):
                agreed_at = batch
                break
            if len(reductions) > before:
                ballots.append(batch)
        assert agreed_at is not None and len([b for b in ballots if b >= signalled_at]) == 1  # voted, then read
        assert len(reductions) == len(ballots)  # nothing is reduced after the decision: no ballot left in flight
        vote.close()
    finally:
        dist.leave_process_group()


def test_any_rank_one_call_late_answers_each_call_with_the_previous_calls_flag() -> None:
    """A group of one: every call starts an all-reduce and returns the one before's outcome (False at first);
    close() waits for the last one, after which nothing is in flight and a new series starts at False."""
    dist.join_process_group(DistributedEnv(0, 1, 0, 1, "127.0.0.1", free_port()), "cpu")
    try:
        agreement = dist.AnyRankOneCallLate("test()")
        flags = [False, True, False, False, True, True]
        assert [agreement(flag) for flag in flags] == [False, *flags[:-1]]
        agreement.close()
        assert agreement(True) is False  # the True in flight at close() was waited for, then forgotten
        agreement.abandon()
        assert agreement(False) is False
        agreement.close()
    finally:
        dist.leave_process_group()


def test_unknown_accelerator_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"accelerator='tpu' is not supported; use 'cpu' \(gloo\) or 'cuda'"):
        dist.join_process_group(DistributedEnv(0, 1, 0, 1, "127.0.0.1", 29500), "tpu")  # type: ignore[arg-type]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_group_of_one_uses_nccl_and_keeps_tensors_where_they_were() -> None:
    env = DistributedEnv(0, 1, 0, 1, "127.0.0.1", free_port())
    try:
        assert dist.join_process_group(env, "cuda") == torch.device("cuda", 0)
        assert torch.distributed.get_backend() == "nccl"
        assert dist.any_rank(True) and dist.all_equal("x") and dist.broadcast_object(3) == 3
        reduced = dist.reduce_tensor(torch.tensor([1.0, 2.0]), "sum")  # a CPU value in, via the GPU, CPU out
        assert reduced.device.type == "cpu" and reduced.tolist() == [1.0, 2.0]
        dist.barrier()
    finally:
        dist.leave_process_group()
