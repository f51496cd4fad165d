"""kill -9 a whole training process at a drawn moment, resume with ``--resume latest``: bit-identical.

Each run is killed (SIGKILL to its process group: the trainer and its
dataloader workers) at a moment Hypothesis draws -- some milliseconds after
its n-th checkpoint, which lands kills inside steps, inside validation and
inside the next checkpoint's write -- then resumed from the newest valid
checkpoint, must end with a final checkpoint that ``statemachine-trainer
diff`` finds bit-identical to an uninterrupted run's:

* ``tests/_kill_classifier.py``: shuffle, an augmentation drawn in 2 worker
  processes, dropout, accumulate_grad_batches=3, mid-epoch validation,
  ReduceLROnPlateau, CSV log (whose rows must match too);
* ``examples/gan_yield.py`` (generator ``training_step``) and
  ``examples/manual_gan.py`` (manual optimization), as users run them, in
  one process and in two (``--strategy ddp --devices 2``);
* ``digits.py`` in two processes under ``--strategy fsdp`` (sharded
  parameters and optimizer state, written as DCP shards);
* the other four examples with the same flags: ``digits.py``,
  ``val_guided.py`` (a custom optimization loop), and ``kfold.py`` and
  ``active_learning.py`` (a user's loop wrapping the fit loop: kills land
  mid-fold, between folds, while scoring the pool).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine_trainer.testing import assert_kill_resume_exact, kill_points

from ._reference_runs import run_references

ROOT = Path(__file__).resolve().parents[1]
GAN_ARGS = ("--root", ".", "--epochs", "2", "--checkpoint-every", "4", "--seed", "1")
EXAMPLE_ARGS = ("--root", ".", "--checkpoint-every", "4", "--seed", "1")
DDP_ARGS = ("--strategy", "ddp", "--devices", "2")
RUNS = {
    "classifier": [sys.executable, str(ROOT / "tests" / "_kill_classifier.py"), "."],
    "classifier_bf16": [sys.executable, str(ROOT / "tests" / "_kill_classifier.py"), ".", "--precision", "bf16-mixed"],
    "gan_yield": [sys.executable, str(ROOT / "examples" / "gan_yield.py"), *GAN_ARGS],
    "manual_gan": [sys.executable, str(ROOT / "examples" / "manual_gan.py"), *GAN_ARGS],
    # Two processes (self-launched): every backward of a step all-reduced through DDP's loss gate.
    "gan_yield_ddp": [sys.executable, str(ROOT / "examples" / "gan_yield.py"), *GAN_ARGS, *DDP_ARGS],
    "manual_gan_ddp": [sys.executable, str(ROOT / "examples" / "manual_gan.py"), *GAN_ARGS, *DDP_ARGS],
    # The same flags on every example: --root, --checkpoint-every, --max-steps, --resume latest, --seed.
    "digits": [sys.executable, str(ROOT / "examples" / "digits.py"), *EXAMPLE_ARGS, "--epochs", "2"],
    # Two processes under FSDP2: sharded parameters and optimizer state, checkpointed as DCP shards.
    "digits_fsdp": [sys.executable, str(ROOT / "examples" / "digits.py"), *EXAMPLE_ARGS, "--epochs", "2",
                    "--strategy", "fsdp", "--devices", "2"],
    "val_guided": [sys.executable, str(ROOT / "examples" / "val_guided.py"), *EXAMPLE_ARGS, "--epochs", "2"],
    "kfold": [sys.executable, str(ROOT / "examples" / "kfold.py"), *EXAMPLE_ARGS, "--folds", "3", "--epochs", "2"],
    "active_learning": [sys.executable, str(ROOT / "examples" / "active_learning.py"), *EXAMPLE_ARGS,
                        "--budget", "60", "--max-steps", "12"],
}
CHECKPOINTS = {"classifier": 20, "classifier_bf16": 20, "gan_yield": 32, "manual_gan": 24,  # how many each writes
               "gan_yield_ddp": 16, "manual_gan_ddp": 12,  # each rank has half the batches
               "digits": 11, "digits_fsdp": 6, "val_guided": 9, "kfold": 28, "active_learning": 9}
KEPT = {"digits": 5}  # checkpoints left in checkpoints/ at the end: the newest 3 (+ best and last.ckpt for digits)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One uninterrupted run of each, started together."""
    return run_references(tmp_path_factory, RUNS)


@pytest.mark.parametrize("name", list(RUNS))
def test_reference_runs_write_the_expected_checkpoints(references, name):
    seen = len(list((references[name] / "checkpoints").glob("*.ckpt")))
    assert 3 <= seen <= KEPT.get(name, 4) and (references[name] / "final.ckpt" / "manifest.json").is_file()


def _kill_and_resume(references, tmp_path_factory, name: str, point: tuple[int, float]) -> Path:
    checkpoint, delay = point
    workdir = tmp_path_factory.mktemp(f"killed-{name}")
    assert_kill_resume_exact(RUNS[name], workdir, checkpoint, delay, uninterrupted=references[name])
    return workdir / "killed"


def _diff_cli(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "statemachine_trainer.cli", "diff", str(a), str(b)],
                          capture_output=True, text=True, timeout=120, check=False)


# Each example is a killed run plus its resume (two processes, ~10-20 s on 2 cores): few examples per run, but
# Hypothesis draws new kill points every CI run.
SETTINGS = settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GAN_SETTINGS = settings(SETTINGS, max_examples=1)


@SETTINGS
@given(point=kill_points(max_checkpoint=CHECKPOINTS["classifier"] - 2))
def test_classifier_killed_anywhere_resumes_bit_identical(references, tmp_path_factory, point):
    killed = _kill_and_resume(references, tmp_path_factory, "classifier", point)
    assert _diff_cli(references["classifier"] / "final.ckpt", killed / "final.ckpt").returncode == 0
    log = Path("logs") / "version_0" / "metrics.csv"
    assert (killed / log).read_text() == (references["classifier"] / log).read_text()
    assert not (killed / "logs" / "version_1").exists()


@GAN_SETTINGS
@given(point=kill_points(max_checkpoint=CHECKPOINTS["classifier_bf16"] - 2))
def test_bf16_mixed_killed_anywhere_resumes_bit_identical(references, tmp_path_factory, point):
    """Autocast (bf16 on CPU here; tests/test_cuda.py repeats it on a GPU with 16-mixed's GradScaler too)."""
    killed = _kill_and_resume(references, tmp_path_factory, "classifier_bf16", point)
    assert _diff_cli(references["classifier_bf16"] / "final.ckpt", killed / "final.ckpt").returncode == 0
    assert _diff_cli(references["classifier"] / "final.ckpt", killed / "final.ckpt").returncode == 1  # bf16 counts


@pytest.mark.parametrize("name", ["gan_yield", "manual_gan", "gan_yield_ddp", "manual_gan_ddp", "digits", "digits_fsdp",
                                  "val_guided", "kfold", "active_learning"])
@GAN_SETTINGS
@given(data=st.data())
def test_example_killed_anywhere_resumes_bit_identical(references, tmp_path_factory, name, data):
    """Every example (both GANs in one process and in two): the kill point is drawn from the run's own checkpoints."""
    point = data.draw(kill_points(max_checkpoint=CHECKPOINTS[name] - 2), label="point")
    killed = _kill_and_resume(references, tmp_path_factory, name, point)
    assert _diff_cli(references[name] / "final.ckpt", killed / "final.ckpt").returncode == 0


def test_diff_fails_on_runs_that_differ(references):
    """The check can fail: two different runs' final states differ, and diff names where."""
    done = _diff_cli(references["gan_yield"] / "final.ckpt", references["manual_gan"] / "final.ckpt")
    assert done.returncode == 1 and "$." in done.stdout + done.stderr

