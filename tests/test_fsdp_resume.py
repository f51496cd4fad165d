"""Exact resume under strategy="fsdp" on 2 CPU processes (gloo): killed anywhere, preempted, killed inside an
accumulation window -- each resumed from its sharded checkpoint ends bit-identical to an uninterrupted run.

The run is ``tests/_ddp_script.py --strategy fsdp`` (the DDP tests' run: shuffled data with an augmentation
drawn in a dataloader worker, dropout, accumulation over 2 batches, validation twice per epoch with
``sync_dist``, ReduceLROnPlateau, a checkpoint after every optimizer step).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from statemachine_trainer.checkpoint import load_checkpoint_parts, read_manifest
from statemachine_trainer.checkpoint._inspect import diff_checkpoints
from statemachine_trainer.testing import assert_kill_resume_exact, kill_points

from .test_ddp import run  # the same subprocess helper (and run) as the DDP tests

SCRIPT = str(Path(__file__).parent / "_ddp_script.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", SCRIPT,
            "--strategy", "fsdp"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-process FSDP run under torchrun."""
    root = tmp_path_factory.mktemp("fsdp-reference")
    run(TORCHRUN, root)
    return root


def test_the_run_writes_sharded_checkpoints(reference):
    manifest = read_manifest(reference / "final.ckpt")
    assert manifest["format_version"] == 3 and manifest["world_size"] == 2 and manifest["metadata"]["step"] == 14
    assert {"shards/.metadata", "shards/__0_0.distcp", "shards/__1_0.distcp"} <= set(manifest["files"])


@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(point=kill_points(max_checkpoint=10))
def test_the_whole_job_killed_anywhere_resumes_bit_identical(reference, tmp_path_factory, point):
    workdir = tmp_path_factory.mktemp("fsdp-killed")
    assert_kill_resume_exact(TORCHRUN, workdir, *point, uninterrupted=reference)


def test_killed_after_a_checkpoint_inside_an_accumulation_window_resumes_bit_identical(reference, tmp_path):
    """The checkpoint holds, per rank, the unsharded gradients FSDP keeps inside the window (not on .grad)."""
    done = run([*TORCHRUN, "--mid-window", "4"], tmp_path, check=False)  # batch 4 of epoch 0: 1 of 2 micro-batches
    assert done.returncode != 0
    for rank in range(2):
        _, own, _ = load_checkpoint_parts(tmp_path / "mid.ckpt", rank=rank, world_size=2)
        assert sorted(own["held_grads"]) == ["net.0.bias", "net.0.weight", "net.3.bias", "net.3.weight"]
        assert all(not torch.equal(grad, torch.zeros_like(grad)) for grad in own["held_grads"].values())
    run([*TORCHRUN, "--resume", "mid.ckpt"], tmp_path)
    assert diff_checkpoints(reference / "final.ckpt", tmp_path / "final.ckpt") is None
