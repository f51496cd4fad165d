"""Resuming refuses what does not fit, falls back past damaged checkpoints, and keeps the logs exact.

- A checkpoint from another model (other shapes, keys, optimizers, loop
  tree) is refused with an error naming the key and the fix, before any of
  it is applied.
- ``ckpt_path="latest"`` skips corrupted, truncated, bit-flipped and
  pickle-carrying checkpoints, says why, and resumes from the newest valid
  one -- exactly as resuming from that one by name does.
- The CSV logger's rows are part of the state: after a crash and a resume,
  ``metrics.csv`` equals the uninterrupted run's, row for row.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from statemachine_trainer import Callback, ConfigError, Trainer
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.checkpoint._hashing import hash_bytes
from statemachine_trainer.data import ResumableLoader

from ._ckpt_edit import write_manifest
from .test_resume import Net, Plateau, assert_same_run, loader


def fit_with_checkpoints(root: Path, module: Net, ckpt_path=None, max_epochs: int = 2, **kwargs) -> Trainer:
    saver = ModelCheckpoint(dirpath=root / "ckpts", every_n_train_steps=1, save_top_k=-1)
    trainer = Trainer(max_epochs=max_epochs, seed=5, enable_progress_bar=False, default_root_dir=root,
                      callbacks=[saver], num_sanity_val_steps=0, **kwargs)
    trainer.fit(module, ResumableLoader(loader(0), seed=3), ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A checkpoint written mid-epoch by a fit of ``Net``."""
    root = tmp_path_factory.mktemp("saved")
    fit_with_checkpoints(root, Net(init_seed=0), max_epochs=1, logger=False)
    return root / "ckpts" / "epoch=0-step=3.ckpt"


class Wider(Net):
    def __init__(self) -> None:
        super().__init__(init_seed=0)
        self.net[0] = nn.Linear(6, 20)
        self.net[3] = nn.Linear(20, 2)


class Renamed(Net):
    def __init__(self) -> None:
        super().__init__(init_seed=0)
        self.head = self.net
        del self.net

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.head(batch[0]), batch[1])


class TwoGroups(Net):
    def __init__(self) -> None:
        super().__init__(init_seed=0)

    def configure_optimizers(self):
        opt = torch.optim.Adam([{"params": self.net[0].parameters()}, {"params": self.net[3].parameters()}])
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1)}


@pytest.mark.parametrize(("module", "message"), [
    (Wider, r"\$\.module\['net\.0\.weight'\] has shape \(16, 6\) in the checkpoint but \(20, 6\) in the module"),
    (Renamed, r"\$\.module\['head\.0\.weight'\] is missing from the checkpoint"),
    (TwoGroups, r"\$\.optimizers\[0\]\.param_groups hold \[4\] parameters per group in the checkpoint but \[2, 2\]"),
], ids=["other-shapes", "other-keys", "other-optimizer"])
def test_a_checkpoint_from_another_model_is_refused_naming_the_key(saved, tmp_path, module, message):
    target = module()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match=message) as raised:
        trainer.fit(target, ResumableLoader(loader(0), seed=3), ckpt_path=saved)
    assert "resume with the module" in str(raised.value)  # the fix
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # nothing was applied


def test_a_checkpoint_from_another_loop_tree_is_refused(saved):
    from statemachine_trainer.loops import FitLoop, TrainingEpochLoop

    class EpochWithExtraChild(TrainingEpochLoop):
        def __init__(self) -> None:
            super().__init__()
            self.extra_loop = FitLoop()

    trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.fit_loop.epoch_loop = EpochWithExtraChild()
    with pytest.raises(ConfigError, match=r"does not match this loop tree: \$\.loops: .*missing .*extra_loop"):
        trainer.fit(Net(init_seed=0), ResumableLoader(loader(0), seed=3), ckpt_path=saved)


def test_a_weights_only_checkpoint_cannot_resume_fit_but_loads_for_validation(tmp_path, saved):
    trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.validate(Net(init_seed=1), loader(1), ckpt_path=saved)  # weights from a fit checkpoint: fine
    weights = tmp_path / "weights.ckpt"
    from statemachine_trainer.checkpoint import save_checkpoint_dir

    save_checkpoint_dir(weights, {"module": dict(Net(init_seed=1).state_dict())})
    with pytest.raises(ConfigError, match=r"cannot resume fit\(\): it has no \$\.loops, .*holds weights only"):
        trainer.fit(Net(init_seed=0), ResumableLoader(loader(0), seed=3), ckpt_path=weights)


# -- latest falls back past damaged checkpoints ----------------------------------------------------------------


def _flip_a_bit(ckpt: Path) -> None:
    data = bytearray((ckpt / "tensors.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (ckpt / "tensors.pt").write_bytes(bytes(data))


def _truncate(ckpt: Path) -> None:
    data = (ckpt / "state.json").read_bytes()
    (ckpt / "state.json").write_bytes(data[: len(data) // 2])


class Evil:
    def __reduce__(self):
        return print, ("pwned",)


def _pickle_payload(ckpt: Path) -> None:
    # A payload that would run code if unpickled, with a manifest made to match it: only the loader's
    # weights_only refusal stands between it and execution.
    torch.save({"module/net.0.weight": Evil()}, ckpt / "tensors.pt")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    data = (ckpt / "tensors.pt").read_bytes()
    manifest["files"]["tensors.pt"] = {"size": len(data), manifest["hash"]: hash_bytes(manifest["hash"], data)}
    write_manifest(ckpt, manifest)


def _no_manifest(ckpt: Path) -> None:
    (ckpt / "manifest.json").unlink()  # what a save killed before its last write leaves


@pytest.mark.parametrize(("damage", "reason"), [
    (_flip_a_bit, "checksum"), (_truncate, "truncated"), (_pickle_payload, "unpickling it could run arbitrary code"),
    (_no_manifest, "manifest"),
], ids=["bit-flip", "truncated", "pickle", "no-manifest"])
def test_latest_skips_a_damaged_newest_checkpoint_and_resumes_from_the_previous(tmp_path, capfd, damage, reason):
    root = tmp_path / "run"
    fit_with_checkpoints(root, Net(init_seed=0), max_epochs=1, logger=False)
    ckpts = root / "ckpts"
    newest, previous = ckpts / "epoch=0-step=5.ckpt", ckpts / "epoch=0-step=4.ckpt"
    damage(newest)
    shutil.copytree(previous, tmp_path / "previous.ckpt")
    with pytest.warns(UserWarning, match=rf"skipped .*step=5\.ckpt: .*({reason})"):
        via_latest = fit_with_checkpoints(root, Net(init_seed=7), ckpt_path="latest", logger=False)
    by_name = fit_with_checkpoints(tmp_path / "other", Net(init_seed=8), ckpt_path=tmp_path / "previous.ckpt",
                                   logger=False)
    assert_same_run(by_name, via_latest)
    assert via_latest.global_step == 10
    assert "pwned" not in capfd.readouterr().out


def test_latest_with_nothing_valid_says_so(tmp_path):
    (tmp_path / "checkpoints" / "epoch=0-step=1.ckpt").mkdir(parents=True)
    (tmp_path / "checkpoints" / "epoch=0-step=1.ckpt" / "state.json").write_text("{")  # a save that died early
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False, logger=False)
    with (pytest.raises(FileNotFoundError, match=r"no valid checkpoint under .*checkpoints \(1 invalid ones skipped\)"),
          pytest.warns(UserWarning, match="skipped")):
        trainer.fit(Net(init_seed=0), loader(0), ckpt_path="latest")


# -- logs ----------------------------------------------------------------------------------------------------


class Crash(Exception):
    pass


def test_metrics_csv_after_a_crash_and_resume_equals_the_uninterrupted_run(tmp_path):
    def run(root: Path, callbacks=(), ckpt_path=None) -> Trainer:
        trainer = Trainer(max_epochs=2, seed=5, accumulate_grad_batches=3, val_check_interval=0.5,
                          num_sanity_val_steps=0, enable_progress_bar=False, enable_checkpointing=False,
                          default_root_dir=root, log_every_n_steps=1, callbacks=list(callbacks))
        train, val = ResumableLoader(loader(0), seed=3), ResumableLoader(loader(1, shuffle=False))
        trainer.fit(Plateau(init_seed=0), train, val, ckpt_path=ckpt_path)
        return trainer

    run(tmp_path / "full")
    ckpt = tmp_path / "crashed" / "mid.ckpt"

    class CheckpointThenCrash(Callback):
        calls = 0

        def on_train_batch_end(self, trainer, *args):
            self.calls += 1
            if self.calls == 3:
                trainer.request_checkpoint(ckpt)
            if self.calls == 6:  # three batches after the checkpoint: rows the resumed run must not repeat
                raise Crash

    with pytest.raises(Crash):
        run(tmp_path / "crashed", [CheckpointThenCrash()])
    crashed_csv = tmp_path / "crashed" / "logs" / "version_0" / "metrics.csv"
    assert crashed_csv.is_file()  # the crash flushed what it had logged, past the checkpoint
    run(tmp_path / "crashed", ckpt_path=ckpt)
    assert not (tmp_path / "crashed" / "logs" / "version_1").exists()  # the resumed run kept its version
    full_csv = tmp_path / "full" / "logs" / "version_0" / "metrics.csv"
    assert crashed_csv.read_text() == full_csv.read_text()
    assert len(full_csv.read_text().splitlines()) > 10
