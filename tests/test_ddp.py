"""strategy="ddp" on 2 CPU processes (gloo): launch, sharding, exact resume after SIGKILL and SIGTERM, refusals.

``tests/_ddp_script.py`` is the run: shuffled data with an augmentation drawn
in a dataloader worker, dropout, accumulation over 2 batches, validation
twice per epoch with ``sync_dist``, ReduceLROnPlateau, a checkpoint after
every optimizer step and ``final.ckpt`` at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from statemachine_trainer import PREEMPTED_EXIT_CODE, Trainer
from statemachine_trainer.checkpoint import load_checkpoint_parts, read_manifest
from statemachine_trainer.checkpoint._inspect import diff_checkpoints
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.testing import assert_kill_resume_exact, kill_points

from ._manual_accumulation import ManualAccumulation
from ._recording_module import RecordingCallback, RecordingModule, tiny_loader

SCRIPT = str(Path(__file__).parent / "_ddp_script.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", SCRIPT]
PLAIN = [sys.executable, SCRIPT, "--devices", "2"]
TIMEOUT = 240


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-process run under torchrun."""
    root = tmp_path_factory.mktemp("ddp-reference")
    run(TORCHRUN, root)
    return root


def test_a_torchrun_run_writes_one_replicated_state_and_a_part_per_rank(reference):
    manifest = read_manifest(reference / "final.ckpt")
    assert manifest["world_size"] == 2 and manifest["metadata"]["step"] == 14  # 100 samples a rank: 13 batches
    replicated, rank0, _ = load_checkpoint_parts(reference / "final.ckpt", rank=0, world_size=2)
    _, rank1, _ = load_checkpoint_parts(reference / "final.ckpt", rank=1, world_size=2)
    assert "module" in replicated and "module" not in rank0
    assert not torch.equal(rank0["rng"]["torch"], rank1["rng"]["torch"])  # each rank's own dropout stream
    assert sorted(p.name for p in (reference / "logs").iterdir()) == ["version_0"]  # rank 0 logs, once
    assert "val_loss" in (reference / "logs" / "version_0" / "metrics.csv").read_text()


def test_plain_python_with_devices_2_launches_workers_and_matches_torchrun(reference, tmp_path):
    run(PLAIN, tmp_path)
    assert diff_checkpoints(reference / "final.ckpt", tmp_path / "final.ckpt") is None


def test_the_trainer_shards_like_distributed_sampler():
    data = TensorDataset(torch.arange(23))
    loader = ResumableLoader(DataLoader(data, batch_size=4, shuffle=True), seed=7)
    for rank in range(3):
        ours = [batch[0].tolist() for batch in loader.shard(rank, 3)]
        sampler = DistributedSampler(data, num_replicas=3, rank=rank, shuffle=True, seed=7)
        theirs = [batch[0].tolist() for batch in DataLoader(data, batch_size=4, sampler=sampler)]
        assert ours == theirs


@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(point=kill_points(max_checkpoint=10))
def test_the_whole_job_killed_anywhere_resumes_bit_identical(reference, tmp_path_factory, point):
    workdir = tmp_path_factory.mktemp("ddp-killed")
    assert_kill_resume_exact(TORCHRUN, workdir, *point, uninterrupted=reference)


def _workers(agent: int) -> list[int]:
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    return [int(pid) for pid in children]


def _wait_for_checkpoints(root: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while len(list((root / "checkpoints").glob("*.ckpt"))) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_one_rank_killed_ends_the_job_and_it_resumes_bit_identical(reference, tmp_path):
    process = subprocess.Popen(TORCHRUN, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoints(tmp_path, 3, process)
    os.kill(_workers(process.pid)[-1], signal.SIGKILL)  # one rank dies; the launcher stops the other
    process.communicate(timeout=TIMEOUT)
    assert process.returncode != 0
    run([*TORCHRUN, "--resume", "latest"], tmp_path)
    assert diff_checkpoints(reference / "final.ckpt", tmp_path / "final.ckpt") is None


def test_sigterm_to_one_rank_preempts_both_at_one_boundary_and_exits_75(reference, tmp_path):
    process = subprocess.Popen([*PLAIN, "--slow"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    _wait_for_checkpoints(tmp_path, 2, process)
    os.kill(_workers(process.pid)[-1], signal.SIGTERM)  # only one rank (the agent runs in the parent)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    (preempted,) = (tmp_path / "checkpoints").glob("preempted-*.ckpt")
    assert read_manifest(preempted)["world_size"] == 2  # one checkpoint, both ranks' parts
    run([*PLAIN, "--resume", str(preempted)], tmp_path)
    assert diff_checkpoints(reference / "final.ckpt", tmp_path / "final.ckpt") is None


def test_resuming_at_another_world_size_is_refused_naming_the_saved_one(reference, tmp_path):
    done = run([sys.executable, SCRIPT, "--devices", "1", "--resume", str(reference / "final.ckpt")], tmp_path,
               check=False)
    assert done.returncode != 0
    assert "world size 2" in done.stderr and "this run has world size 1" in done.stderr, done.stderr[-2000:]


def test_the_digits_example_runs_under_torchrun_and_self_launched_alike(tmp_path):
    digits = str(Path(__file__).parents[1] / "examples" / "digits.py")
    args = ["--strategy", "ddp", "--epochs", "3", "--root", "run"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    torchrun = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", digits,
                    *args], tmp_path / "a")
    plain = run([sys.executable, digits, *args, "--devices", "2"], tmp_path / "b")
    first, second = torchrun.stdout.splitlines()[-1], plain.stdout.splitlines()[-1]
    assert first.startswith("val_acc=") and first == second  # printed once (rank 0), the same both ways
    assert torchrun.stdout.count("val_acc=") == 1


def test_a_loader_that_keeps_its_own_position_is_delegated_to_unsharded():
    class Stateful:
        """A loader with torchdata's StatefulDataLoader protocol, sharding itself (e.g. its own sampler)."""

        def __iter__(self):
            return iter([torch.zeros(1)])

        def __len__(self):
            return 1

        def state_dict(self):
            return {"position": 0}

        def load_state_dict(self, state):
            pass

    loader = ResumableLoader(Stateful())
    assert loader.shard(1, 2) is loader  # per rank, as it is: its own state_dict is saved in the rank's part


def test_validate_alone_shares_rank_zeros_weights_and_sync_dist_and_metrics_reduce_over_ranks(tmp_path):
    run([sys.executable, str(Path(__file__).parent / "_ddp_validate.py")], tmp_path)
    # After teardown no gloo thread is left: one alive into interpreter finalization once aborted the process
    # ("terminate called without an active exception": see statemachine_trainer/distributed/_group.py).
    for rank in (0, 1):
        threads = (tmp_path / f"threads-{rank}.txt").read_text().split()
        assert not [name for name in threads if "gloo" in name], threads
    (checksum0, value0, local0, metric0), (checksum1, value1, local1, metric1) = (
        (tmp_path / f"rank-{rank}.txt").read_text().split() for rank in (0, 1))
    assert checksum0 == checksum1  # DDP gave rank 1 rank 0's (unseeded) weights
    # Rows 0,2,4,6,8 on rank 0 and 1,3,5,7,9 on rank 1, each row three copies of its index:
    assert (float(local0), float(local1)) == (60.0, 75.0)  # per-batch sums, not synced: each rank's own
    assert float(value0) == float(value1) == 67.5  # sync_dist: the mean over both ranks' batches
    assert float(metric0) == float(metric1) == 4.5  # torchmetrics synced at compute: rank 0 alone would say 4.0


def test_idle_ranks_observe_only_the_epoch_loop_and_a_request_still_waits_for_the_first_boundary(tmp_path):
    """Under DDP the writer watches the epoch loop's boundaries (the vote) and the whole tree only while a request
    waits: ~2 observer calls per step instead of ~13, and a request is written where one process writes it."""
    script = str(Path(__file__).parent / "_ddp_boundaries.py")
    run([sys.executable, script, "--strategy", "auto"], tmp_path)
    alone = json.loads((tmp_path / "boundaries-0.json").read_text())
    assert alone["written_at_step"] == 2  # asked as batch 2 starts: written before its step, at the batch loop's
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script], tmp_path)
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"boundaries-{rank}.json").read_text())
        assert set(seen["idle"]) == {"training_epoch_loop"}, seen  # (the old writer: every loop, 207 calls)
        assert 16 <= seen["idle"]["training_epoch_loop"] <= 3 * 16, seen  # 16 batches: the vote saw each end
        assert seen["pending"] == {"batch_loop": 1}, seen  # the request, at the tree's next boundary
        assert seen["written_at_step"] == alone["written_at_step"]
    assert read_manifest(tmp_path / "asked.ckpt")["world_size"] == 2


class _TracedStep(RecordingModule):
    """Records the Python functions of ours that run from batch 3's training_step to batch 4's."""

    def __init__(self) -> None:
        super().__init__()
        self.traced: list[str] = []

    def training_step(self, batch, batch_idx):
        if batch_idx == 4:
            sys.setprofile(None)
        elif batch_idx == 3:
            sys.setprofile(self._record)
        return super().training_step(batch, batch_idx)

    def _record(self, frame, event, arg):
        code = frame.f_code
        if event == "call" and ("statemachine_trainer" in code.co_filename or code.co_filename.startswith("<")):
            self.traced.append(f"{Path(code.co_filename).name}:{code.co_name}")


def test_a_world_of_one_under_ddp_runs_the_same_python_per_step_as_auto(tmp_path):
    """Issue 13: in a world of one, nothing of "ddp" may cost more per step than "auto" -- the same functions of
    ours, called as often (DDP's wrapper, the loss gate and the vote are all left out there)."""
    traced = {}
    for strategy in ("auto", "ddp"):
        module = _TracedStep()
        trainer = Trainer(max_epochs=1, strategy=strategy, devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path / strategy)
        try:
            trainer.fit(module, ResumableLoader(tiny_loader(n=24, batch_size=4, shuffle=True), seed=3))
        finally:
            sys.setprofile(None)  # a step that raised between batches 3 and 4 must not leave it recording
        traced[strategy] = module.traced
    assert len(traced["auto"]) > 20, traced["auto"]  # the step's loops and hooks were seen
    assert traced["ddp"] == traced["auto"]


# -- several backwards per step: every optimizer steps on gradients averaged over the ranks -------------------
GAN_SCRIPT = str(Path(__file__).parent / "_ddp_gan.py")


def _rank_digests(cwd: Path, *runs: tuple[str, ...]) -> list[list[tuple[str, str]]]:
    """Start tests/_ddp_gan.py once per argument tuple, all at once; per run, each rank's (generator,
    discriminator) parameter digests, rank 0 first."""
    dirs = [cwd / f"run-{i}" for i in range(len(runs))]
    started = []
    for directory, args in zip(dirs, runs):
        directory.mkdir()
        started.append(subprocess.Popen([sys.executable, GAN_SCRIPT, *args], cwd=directory, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for process in started:
        _, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err[-3000:]
    return [[tuple(path.read_text().split()) for path in sorted(d.glob("rank-*.txt"))] for d in dirs]


@pytest.mark.parametrize(("mode", "accumulate"), [("yield", "1"), ("manual", "1"), ("index", "3")],
                         ids=["generator", "manual", "optimizer_idx-accumulate3"])
def test_every_backward_of_a_step_is_averaged_over_the_ranks(tmp_path, mode, accumulate):
    """A GAN step runs two backwards; DDP's loss gate all-reduces each.  The same data on both ranks must give
    exactly one process's result (an average, not a sum, of both models' gradients); each rank its own shard
    must still leave both ranks with the same weights (so the gradients were synced)."""
    flags = (mode, "--accumulate", accumulate)
    alone, same, sharded = _rank_digests(tmp_path, (*flags, "--devices", "1"), (*flags, "--same-data"), flags)
    assert same == alone * 2
    assert len(sharded) == 2 and sharded[0] == sharded[1] != alone[0]


def test_without_the_loss_gate_the_ranks_drift_apart(tmp_path):
    """The control for the test above: with the gate switched off, nothing syncs the two models' gradients."""
    ((g0, d0), (g1, d1)), = _rank_digests(tmp_path, ("manual", "--ungated"))
    assert g0 != g1 and d0 != d1


# -- manual accumulation: no_backward_sync(); teardown frees DDP ----------------------------------------------
def test_no_backward_sync_keeps_a_manual_windows_first_backward_local_and_teardown_frees_ddp(tmp_path):
    """tests/_ddp_no_sync.py on 2 processes: 8 batches a rank, one backward each, a step every 2nd.  Inside
    no_backward_sync() DDP all-reduces nothing; the window's last backward all-reduces what it accumulated.  After
    teardown nothing of ours keeps DDP alive, and the group is gone."""
    run([sys.executable, str(Path(__file__).parent / "_ddp_no_sync.py")], tmp_path)
    rank0, rank1 = ((tmp_path / f"rank-{rank}.txt").read_text().split() for rank in (0, 1))
    assert rank0 == rank1  # the counts, the weights (synced: each rank had its own shard) and the teardown
    assert rank0[:2] == ["8", "4"] and rank0[3] == "True"


# -- a world of one: the module runs unwrapped --------------------------------------------------------------
@pytest.mark.parametrize("skip_sync", [False, True])
def test_a_world_of_one_steps_unwrapped_and_no_backward_sync_does_nothing(skip_sync):
    """devices=1 in this process: no DDP wrapper (nothing to all-reduce), the same weights bit for bit as one
    process under strategy="auto", with or without no_backward_sync()."""
    data = TensorDataset(torch.randn(32, 3, generator=torch.Generator().manual_seed(1)))
    weights = {}
    for strategy in ("ddp", "auto"):
        module = ManualAccumulation(skip_sync)
        trainer = Trainer(strategy=strategy, devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                          enable_checkpointing=False)
        trainer.fit(module, ResumableLoader(DataLoader(data, batch_size=4)))
        weights[strategy] = module.net.weight.detach().clone()
        if strategy == "ddp":
            assert trainer.strategy.ddp is None and trainer.strategy.world_size == 1
    assert torch.equal(weights["ddp"], weights["auto"])
    assert not torch.equal(weights["ddp"], ManualAccumulation(skip_sync).net.weight)  # it trained


def test_a_world_of_one_calls_the_hooks_of_one_process_and_keeps_the_distributed_checkpoint(tmp_path):
    """devices=1 under "ddp" against strategy="auto" on the same loaders: the same hook calls in the same order,
    the same weights bit for bit; its checkpoints keep the distributed format (world size 1, a part for rank 0)."""
    runs = {}
    for strategy in ("ddp", "auto"):
        torch.manual_seed(0)
        module = RecordingModule()
        trainer = Trainer(strategy=strategy, devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=tmp_path / strategy,
                          callbacks=[RecordingCallback(module.calls)])
        trainer.fit(module, ResumableLoader(tiny_loader(shuffle=True), seed=3), ResumableLoader(tiny_loader()))
        runs[strategy] = module.calls, module.net.weight.detach().clone(), trainer.checkpoint_callback.best_model_path
    (ddp_calls, ddp_weight, ddp_ckpt), (auto_calls, auto_weight, _) = runs["ddp"], runs["auto"]
    assert "training_step" in ddp_calls and ddp_calls == auto_calls
    assert torch.equal(ddp_weight, auto_weight)
    assert read_manifest(ddp_ckpt)["world_size"] == 1
    replicated, rank0, _ = load_checkpoint_parts(ddp_ckpt, rank=0, world_size=1)
    assert torch.equal(replicated["module"]["net.weight"], ddp_weight) and "rng" in rank0
