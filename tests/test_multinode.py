"""Several nodes: two torchrun agents on this machine, joined by torchrun's c10d rendezvous, as two "nodes".

Each test starts ``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d
--rdzv-endpoint localhost:PORT --rdzv-id ID`` twice (a free port, a fresh id),
both in one directory: the shared filesystem of a cluster.  The run is
``tests/_multinode_script.py`` (``Trainer(strategy="ddp", num_nodes=2,
devices=1)``).  What is checked: each node's worker reads its place right
(local rank 0 on both, node rank = GROUP_RANK), ``prepare_data`` runs once per
node, a rank killed on one node and both nodes restarted with
``ckpt_path="latest"`` ends bit-identical to an uninterrupted run, SIGUSR1 to
one node's worker stops every rank at one boundary with a checkpoint (exit 75),
a per-node checkpoint directory is refused, and the README's two commands run.

Robustness: every process of a test carries a marker in its environment, and
the ``finally`` of :func:`two_nodes` SIGKILLs every process that has it -- the
agents and their workers (which torchrun starts in sessions of their own, so a
process group kill would miss them) -- whatever happened; every wait has a
deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from statemachine_trainer import PREEMPTED_EXIT_CODE, ConfigError, Trainer
from statemachine_trainer.checkpoint import CheckpointError, find_latest, read_manifest
from statemachine_trainer.distributed import DistributedEnv
from statemachine_trainer.testing import compare_final_states

from ._recording_module import RecordingModule, tiny_loader
from .test_distributed_launch import clean_environ

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tests" / "_multinode_script.py")
LIMIT = 180  # seconds one two-node run may take; ~15x what it needs on 2 idle cores
#: The README's SLURM recipe: torchrun forwards SIGUSR1 to its workers only when told to.
FORWARD_SIGUSR1 = ("--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
MARKER = "STATEMACHINE_TRAINER_TWO_NODE_TEST"  # set in every process a test starts, to find them all at the end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun() -> list[str]:
    """The ``torchrun`` next to this interpreter (the README's command), else the module it runs."""
    beside = Path(sys.executable).parent / "torchrun"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "torch.distributed.run"]


def node_command(port: int, job: str, launcher: Sequence[str], script: str, *args: str) -> list[str]:
    return [*torchrun(), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
            f"localhost:{port}", "--rdzv-id", job, *launcher, script, *args]


def _marked(job: str) -> list[int]:
    """Every live process started for ``job`` (its environment holds the marker), however it was re-parented."""
    needle = f"{MARKER}={job}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # exited meanwhile, or not ours
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def _stop_all(job: str) -> None:
    for pid in _marked(job):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def two_nodes(cwd: Path, commands: Sequence[Sequence[str]], label: str, job: str) -> Iterator[list[subprocess.Popen]]:
    """Start one agent per command in ``cwd`` (output to ``label-node<i>.log``); kill everything of ``job`` after."""
    env = clean_environ(**{MARKER: job})
    agents: list[subprocess.Popen] = []
    try:
        for node, command in enumerate(commands):
            with open(cwd / f"{label}-node{node}.log", "w") as log:
                agents.append(subprocess.Popen(list(command), cwd=cwd, env=env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))
        yield agents
    finally:
        _stop_all(job)
        for agent in agents:
            agent.wait(timeout=LIMIT)


def run_two_nodes(cwd: Path, *args: str, label: str = "run", launcher: Sequence[str] = (),
                  wrap: Sequence[Sequence[str]] = ((), ())) -> tuple[list[int], str]:
    """Both nodes of one job, to the end; (their exit codes, both logs).  ``launcher``: more torchrun options;
    ``wrap[i]`` prefixes node i's command."""
    job, port = uuid.uuid4().hex, free_port()
    commands = [[*wrap[node], *node_command(port, job, launcher, SCRIPT, *args)] for node in range(2)]
    deadline = time.monotonic() + LIMIT
    with two_nodes(cwd, commands, label, job) as agents:
        codes = [agent.wait(timeout=max(deadline - time.monotonic(), 1)) for agent in agents]
    logs = "\n".join((cwd / f"{label}-node{node}.log").read_text() for node in range(2))
    return codes, logs


def must_succeed(cwd: Path, *args: str, label: str) -> None:
    codes, logs = run_two_nodes(cwd, *args, label=label)
    assert codes == [0, 0], logs[-6000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted two-node run."""
    root = tmp_path_factory.mktemp("two-nodes")
    must_succeed(root, label="uninterrupted")
    return root


def test_each_node_reads_its_place_prepares_once_and_rank_zero_alone_logs(reference):
    seen = {rank: json.loads((reference / f"seen-rank{rank}.json").read_text()) for rank in (0, 1)}
    for rank, mine in seen.items():
        assert mine["RANK"] == str(rank) and mine["global_rank"] == rank and mine["is_global_zero"] == (rank == 0)
        assert mine["LOCAL_RANK"] == "0" and mine["local_rank"] == 0  # one process per node: local rank 0 on each
        assert mine["node_rank"] == int(mine["GROUP_RANK"])  # the node torchrun's rendezvous numbered
        assert (mine["world_size"], mine["num_nodes"], mine["num_devices"]) == (2, 2, 1)
    assert {seen[0]["node_rank"], seen[1]["node_rank"]} == {0, 1}
    prepared = sorted((reference / "prepared.txt").read_text().splitlines())
    assert prepared == ["node 0 rank 0", "node 1 rank 1"]  # prepare_data_per_node=True: once on each node
    assert read_manifest(reference / "final.ckpt")["world_size"] == 2
    assert sorted(p.name for p in (reference / "logs").iterdir()) == ["version_0"]  # one logger: rank 0's
    logs = "".join(path.read_text() for path in reference.glob("uninterrupted-node*.log"))
    assert "could not delete" not in logs  # top-k deletion is rank 0's: both ranks deleting one directory raced


def test_killed_on_one_node_then_preempted_from_one_node_both_nodes_resume_bit_identical(reference, tmp_path):
    """Three runs of one job: rank 1 SIGKILLs itself after step 2's checkpoint.  Both nodes restarted with
    ``--resume latest``: after step 3 rank 1 sends SIGUSR1 to its node's torchrun (as SLURM's ``--signal`` does),
    which forwards it to its worker (the README's ``--signals-to-handle``); the other node hears nothing, yet every
    rank checkpoints at one boundary and exits 75.  Both restarted again, the job ends as if never stopped."""
    codes, logs = run_two_nodes(tmp_path, "--kill-rank", "1", "--kill-step", "2", label="killed")
    assert all(code != 0 for code in codes), logs[-6000:]  # rank 1 died; rank 0's node stopped too
    latest, _ = find_latest(tmp_path / "checkpoints")
    assert read_manifest(latest)["metadata"]["step"] == 2  # killed right after step 2's checkpoint
    assert not (tmp_path / "final.ckpt").exists()

    for stale in tmp_path.glob("exit-rank*.txt"):  # what the killed run's survivor recorded, if it recorded
        stale.unlink()
    codes, logs = run_two_nodes(tmp_path, "--resume", "latest", "--signal-rank", "1", "--signal-step", "3",
                                "--signal-agent", label="preempted", launcher=FORWARD_SIGUSR1)
    # torchrun exits with 1 both ways: the signalled one after forwarding the signal and waiting for its worker,
    # the other one reporting its worker's non-zero exit -- or, when the signalled agent hosted the rendezvous store
    # and left first, the store's lost connection (torchrun's race, not ours).  So each worker records its own exit.
    assert codes == [1, 1], logs[-6000:]
    assert logs.count("Received 10 death signal, shutting down workers") == 1, logs[-6000:]
    exits = [(tmp_path / f"exit-rank{rank}.txt").read_text() for rank in (0, 1)]
    assert exits == [str(PREEMPTED_EXIT_CODE)] * 2, logs[-6000:]
    (preempted,) = (tmp_path / "checkpoints").glob("preempted-*.ckpt")
    manifest = read_manifest(preempted)
    step = manifest["metadata"]["step"]
    assert manifest["world_size"] == 2 and 3 <= step < 14  # one checkpoint, both ranks' parts
    # The periodic checkpoint requested at the preemption's boundary is written too, and the one it pushed out of
    # the top 3 deleted: exactly the three the preemption checkpoint's ModelCheckpoint lists.
    periodic = sorted(read_manifest(path)["metadata"]["step"] for path in (tmp_path / "checkpoints").glob("epoch=*"))
    assert periodic == [step - 2, step - 1, step]

    must_succeed(tmp_path, "--resume", "latest", label="resumed")
    compare_final_states(reference / "final.ckpt", tmp_path / "final.ckpt")


def test_num_nodes_other_than_the_launchers_is_refused_before_joining(monkeypatch):
    """The worker of node 1 of a ``torchrun --nnodes 2 --nproc-per-node 1`` job, whose script forgot num_nodes."""
    for name, value in DistributedEnv(1, 2, 0, 1, "127.0.0.1", free_port()).to_environ().items():
        monkeypatch.setenv(name, value)
    trainer = Trainer(strategy="ddp", devices=1, accelerator="cpu", logger=False, enable_checkpointing=False)
    refusal = ("Trainer(num_nodes=1, devices=1) expects a world of 1 process, but the launcher reports WORLD_SIZE=2 "
               "(torchrun started 2 node(s) of 1: pass num_nodes=2)")
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        trainer.fit(RecordingModule(), tiny_loader())
    assert not torch.distributed.is_initialized()


def test_a_rank_that_cannot_see_rank_zeros_temporary_directory_names_the_shared_filesystem(tmp_path):
    """What rank 1 meets with a per-node directory, without a second node: rank 0's temp directory is not there.
    (The test below makes it happen with two torchrun nodes, where mount namespaces are allowed.)"""
    from statemachine_trainer.checkpoint._parts import _Plan, _write_rank

    target = tmp_path / "step=1.ckpt"
    plan = _Plan(str(target), str(tmp_path / ".step=1.ckpt.tmp-123"), "crc32", durable=False, sharded=False)
    with pytest.raises(CheckpointError, match=r"rank 1 cannot see .*\.step=1\.ckpt\.tmp-123, the temporary "
                                              r"directory rank 0 made .* a per-node local directory cannot hold"):
        _write_rank(1, target, plan, (None, None, {}, {}))
    assert list(tmp_path.iterdir()) == []


def _can_mount_privately() -> bool:
    try:
        return subprocess.run(["unshare", "--map-root-user", "--mount", "true"], check=False, capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(shutil.which("unshare") is None or not _can_mount_privately(),
                    reason="needs unprivileged user and mount namespaces (unshare -rm) to give one node its own disk")
def test_a_per_node_checkpoint_directory_is_refused_naming_the_shared_filesystem(tmp_path):
    """Node 1 sees its own empty tmpfs at checkpoints/ (a mount namespace of its own): a per-node local directory."""
    (tmp_path / "checkpoints").mkdir()
    own_disk = ["unshare", "--map-root-user", "--mount", "sh", "-c",
                f"mount -t tmpfs node-local {tmp_path / 'checkpoints'} && exec \"$@\"", "sh"]
    codes, logs = run_two_nodes(tmp_path, label="local-dirs", wrap=((), own_disk))
    assert all(code != 0 for code in codes)
    assert re.search(r"rank 1 cannot see \S+/checkpoints/\.epoch=0-step=1\.ckpt\.tmp-\d+, the temporary directory "
                     r"rank 0 made", logs), logs[-6000:]
    assert "needs a directory every rank sees on the same filesystem" in logs
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))  # nothing committed, whichever node rank 0 ran on


def test_the_readmes_two_commands_train_digits_on_two_nodes(tmp_path):
    """The "Several nodes" section's commands, as written there but for the port (and the script's full path)."""
    section = (ROOT / "README.md").read_text().split("<!-- two-node-commands -->")[1]
    commands = [line for line in section.split("```bash\n")[1].split("\n```")[0].splitlines()
                if line.startswith("torchrun ")]
    assert len(commands) == 2 and commands[0] == commands[1]  # the same command on each node
    assert "localhost:29400" in commands[0]
    args = shlex.split(commands[0].replace("localhost:29400", f"localhost:{free_port()}"))[1:]
    args = [str(ROOT / arg) if arg.endswith(".py") else arg for arg in args]  # run from tmp_path, not the checkout
    job = uuid.uuid4().hex
    deadline = time.monotonic() + LIMIT
    with two_nodes(tmp_path, [[*torchrun(), *args]] * 2, "digits", job) as agents:
        codes = [agent.wait(timeout=max(deadline - time.monotonic(), 1)) for agent in agents]
    logs = "\n".join((tmp_path / f"digits-node{node}.log").read_text() for node in range(2))
    assert codes == [0, 0], logs[-6000:]
    assert logs.count("val_acc=") == 1  # printed by rank 0 only
    assert read_manifest(tmp_path / "runs" / "two-nodes" / "final.ckpt")["world_size"] == 2
