"""One run per checkpoint directory (issue 16): run ids in every checkpoint, a lock for the length of a fit.

The mistake this guards against: two runs writing into one checkpoint
directory, after which ModelCheckpoint lists the other run's files and
``ckpt_path="latest"`` resumes the wrong run.  Checked with a real second
process holding the lock (it is an OS lock: a thread of the same process
would share it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader

from statemachine_trainer import ConfigError, Trainer
from statemachine_trainer._run_dir import claim_run_dir, run_of
from statemachine_trainer.checkpoint import find_latest

from ._points_module import Net, points

FLAGS = {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
         "num_sanity_val_steps": 0}


def fit(root, ckpt_path=None, trainer=None, **flags):
    trainer = trainer or Trainer(**{**FLAGS, **flags}, default_root_dir=root)
    trainer.fit(Net(), DataLoader(points(16), batch_size=8), ckpt_path=ckpt_path)
    return trainer


def test_every_checkpoint_records_its_run_and_a_resume_keeps_it(tmp_path):
    first = fit(tmp_path)
    (written,) = [p for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert run_of(written) == first.run_id and len(first.run_id) == 32
    resumed = fit(tmp_path, ckpt_path="latest", max_epochs=2)
    assert resumed.run_id == first.run_id
    assert {run_of(p) for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith(".")} == {first.run_id}


def test_a_second_fit_of_the_same_trainer_is_the_same_run(tmp_path):
    trainer = fit(tmp_path)
    fit(tmp_path, trainer=trainer)  # another epoch, written beside its own checkpoints: allowed
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith("."))
    assert len(names) >= 1 and trainer.global_step == 4


def test_a_new_run_into_a_directory_holding_another_runs_checkpoints_is_refused(tmp_path):
    fit(tmp_path)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    model = Net()
    weights = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(**FLAGS, default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"already holds checkpoints of another run \(newest: epoch=0-step=2.ckpt\)"
                                          r".*default_root_dir.*ckpt_path='latest'"):
        trainer.fit(model, DataLoader(points(16), batch_size=8))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before  # nothing written
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))  # nothing trained
    fit(tmp_path / "own")  # its own directory: fine


def test_resuming_into_a_directory_another_run_also_wrote_is_refused(tmp_path):
    fit(tmp_path / "a")
    other = fit(tmp_path / "b")
    # the user's mistake: run b's checkpoint copied beside run a's
    import shutil

    (b_ckpt,) = [p for p in (tmp_path / "b" / "checkpoints").iterdir() if not p.name.startswith(".")]
    shutil.copytree(b_ckpt, tmp_path / "a" / "checkpoints" / "epoch=0-step=9.ckpt")
    assert run_of(find_latest(tmp_path / "a" / "checkpoints")[0]) == other.run_id
    a_first = tmp_path / "a" / "checkpoints" / "epoch=0-step=2.ckpt"
    with pytest.raises(ConfigError, match="holds checkpoints of another run"):
        fit(tmp_path / "a", ckpt_path=a_first, max_epochs=2)


def test_a_fit_without_checkpoints_claims_nothing(tmp_path):
    fit(tmp_path, enable_checkpointing=False)
    assert not (tmp_path / "checkpoints").exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from statemachine_trainer._run_dir import claim_run_dir
    claim = claim_run_dir(Path(sys.argv[1]), "holder", fresh=True)
    print("held", flush=True)
    time.sleep(60)
""")


def test_a_second_process_fitting_into_the_same_directory_at_once_is_refused(tmp_path):
    directory = tmp_path / "checkpoints"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=r"Another process is fitting into .* \(pid \d+ on .*\)"):
            fit(tmp_path)
        holder.kill()  # kill -9: the OS drops the lock of a dead process
        holder.wait()
        claim_run_dir(directory, "next", fresh=True).release()  # free again
    finally:
        holder.kill()
        holder.wait()
