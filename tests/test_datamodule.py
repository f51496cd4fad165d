"""``DataModule``: Lightning's ``LightningDataModule`` contract, and its state in the checkpoint.

The hook order is compared with Lightning 2's own expectation
(``tests/tests_pytorch/models/test_hooks.py::test_trainer_datamodule_hook_system``):
``prepare_data, setup(stage), <the stage's dataloaders>, teardown(stage)``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import nn
from torch.utils.data import DataLoader

import statemachine_trainer
from statemachine_trainer import ConfigError, DataModule, Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.checkpoint import CheckpointError, load_checkpoint_dir
from statemachine_trainer.testing import ResumeMismatch, assert_kill_resume_exact, kill_points

from ._points_module import Net, points


class Points(DataModule):
    """Records its hook calls, as Lightning's ``HookedDataModule`` does."""

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.calls: list[tuple[str, ...]] = []
        self.served = 0  # train_dataloader() calls over the data module's life: its state

    def prepare_data(self):
        self.calls.append(("prepare_data",))

    def setup(self, stage):
        self.calls.append(("setup", stage))
        self.train_set, self.val_set = points(32, 0), points(16, 1)

    def train_dataloader(self):
        self.calls.append(("train_dataloader",))
        self.served += 1
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        self.calls.append(("val_dataloader",))
        return DataLoader(self.val_set, batch_size=8)

    def test_dataloader(self):
        self.calls.append(("test_dataloader",))
        return DataLoader(self.val_set, batch_size=8)

    def predict_dataloader(self):
        self.calls.append(("predict_dataloader",))
        return DataLoader(self.val_set, batch_size=8)

    def teardown(self, stage):
        self.calls.append(("teardown", stage))

    def state_dict(self):
        self.calls.append(("state_dict",))
        return {"served": self.served, "seen": torch.arange(self.served)}

    def load_state_dict(self, state_dict):
        self.calls.append(("load_state_dict",))
        self.served = state_dict["served"]


def quiet(tmp_path, **flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "logger": False, "enable_checkpointing": False,
                "default_root_dir": tmp_path, "max_epochs": 1}
    return Trainer(**{**defaults, **flags})


def test_the_package_exports_datamodule():
    assert statemachine_trainer.DataModule is DataModule
    assert "DataModule" in statemachine_trainer.__all__


# -- Lightning's hook order -------------------------------------------------------------------------
def test_fit_calls_the_datamodules_hooks_in_lightnings_order(tmp_path):
    dm = Points()
    quiet(tmp_path, enable_checkpointing=True).fit(Net(), datamodule=dm)
    # Lightning's expectation, state_dict included (the epoch-end checkpoint holds it).
    assert dm.calls == [("prepare_data",), ("setup", "fit"), ("val_dataloader",), ("train_dataloader",),
                        ("state_dict",), ("teardown", "fit")]


@pytest.mark.parametrize(("entry", "loader"), [("validate", "val_dataloader"), ("test", "test_dataloader"),
                                               ("predict", "predict_dataloader")])
def test_validate_test_predict_call_the_datamodules_hooks_in_lightnings_order(tmp_path, entry, loader):
    dm = Points()
    getattr(quiet(tmp_path), entry)(Net(), datamodule=dm)
    assert dm.calls == [("prepare_data",), ("setup", entry), (loader,), ("teardown", entry)]


# -- how a data module is passed ----------------------------------------------------------------------
def test_a_datamodule_passed_positionally_is_taken_as_the_datamodule(tmp_path):
    trainer, dm = quiet(tmp_path), Points()
    trainer.fit(Net(), dm)  # Lightning accepts it in train_dataloaders' place
    assert trainer.global_step == 4 and trainer.datamodule is dm
    (result,) = trainer.validate(Net(), dm, verbose=False)
    assert set(result) == {"val_loss"}


def test_keywords_work_as_in_lightning(tmp_path):
    trainer = quiet(tmp_path)
    trainer.fit(model=Net(), train_dataloaders=DataLoader(points(32, 0), batch_size=8),
                val_dataloaders=DataLoader(points(8, 1), batch_size=8))
    assert trainer.global_step == 4
    (result,) = trainer.test(model=Net(), dataloaders=DataLoader(points(8, 1), batch_size=8), verbose=False)
    assert "test_loss" in result


def test_dataloaders_and_a_datamodule_together_are_refused_before_anything_runs(tmp_path):
    dm = Points()
    with pytest.raises(ConfigError, match="train_dataloaders and a datamodule; pass the dataloaders or the"):
        quiet(tmp_path).fit(Net(), DataLoader(points(8, 0)), datamodule=dm)
    with pytest.raises(ConfigError, match="dataloaders and a datamodule"):
        quiet(tmp_path).test(Net(), DataLoader(points(8, 0)), datamodule=dm)
    with pytest.raises(ConfigError, match="two data modules"):
        quiet(tmp_path).fit(Net(), dm, datamodule=Points())
    assert dm.calls == []


def test_something_else_as_datamodule_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs a DataModule, got DataLoader"):
        quiet(tmp_path).fit(Net(), datamodule=DataLoader(points(8, 0)))


def test_the_datamodule_replaces_the_modules_own_dataloaders(tmp_path):
    class WithOwnData(Net):
        def train_dataloader(self):
            raise AssertionError("the data module's train_dataloader is the one to use")

    dm = Points()
    quiet(tmp_path).fit(WithOwnData(), datamodule=dm)
    assert ("train_dataloader",) in dm.calls


def test_a_datamodule_without_the_stages_dataloader_gets_a_clear_error(tmp_path):
    class TrainOnly(DataModule):
        def train_dataloader(self):
            return DataLoader(points(8, 0))

    with pytest.raises(ConfigError, match=r"No test data: .* define TrainOnly.test_dataloader\(\)"):
        quiet(tmp_path).test(Net(), datamodule=TrainOnly())


def test_trainer_datamodule_is_readable_from_the_module_and_callbacks(tmp_path):
    seen = {}

    class Reads(Net):
        def configure_optimizers(self):
            seen["configure_optimizers"] = self.trainer.datamodule
            return super().configure_optimizers()

        def training_step(self, batch, batch_idx):
            seen["training_step"] = self.trainer.datamodule
            return super().training_step(batch, batch_idx)

    dm = Points()
    trainer = quiet(tmp_path)
    trainer.fit(Reads(), datamodule=dm)
    assert seen == {"configure_optimizers": dm, "training_step": dm}
    assert trainer.datamodule is dm and dm.trainer is trainer.run


def test_save_hyperparameters_records_the_datamodules_arguments():
    assert Points(batch_size=4).hparams == {"batch_size": 4}


# -- state in the checkpoint ----------------------------------------------------------------------------
def test_the_checkpoint_holds_the_datamodules_state_and_a_resume_gives_it_back_before_the_dataloaders(tmp_path):
    dm = Points()
    trainer = quiet(tmp_path, max_epochs=1)
    trainer.fit(Net(), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    state, _ = load_checkpoint_dir(tmp_path / "one.ckpt")
    assert state["datamodule"]["class"] == "Points"
    assert state["datamodule"]["state"]["served"] == 1
    assert torch.equal(state["datamodule"]["state"]["seen"], torch.arange(1))
    readable = json.loads((tmp_path / "one.ckpt" / "state.json").read_text())["datamodule"]
    assert readable["class"] == "Points" and readable["state"]["served"] == 1  # plain JSON, tensors apart

    fresh = Points()
    quiet(tmp_path, max_epochs=2).fit(Net(), datamodule=fresh, ckpt_path=tmp_path / "one.ckpt")
    assert fresh.calls[:4] == [("prepare_data",), ("setup", "fit"), ("load_state_dict",), ("val_dataloader",)]
    assert fresh.served == 2  # restored to 1, then train_dataloader() once more


def test_a_datamodule_state_that_json_and_tensors_cannot_hold_is_refused_when_saved(tmp_path):
    class Unsaveable(Points):
        def state_dict(self):
            return {"lookup": {1, 2}}

    trainer = quiet(tmp_path)
    trainer.fit(Net(), datamodule=Unsaveable())
    with pytest.raises(CheckpointError, match=r"\$\.datamodule\.state\.lookup: cannot store a set"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")


def test_a_datamodule_state_dict_that_is_no_dict_is_refused(tmp_path):
    class ReturnsList(Points):
        def state_dict(self):
            return [1, 2]

    trainer = quiet(tmp_path)
    trainer.fit(Net(), datamodule=ReturnsList())
    with pytest.raises(ConfigError, match=r"ReturnsList.state_dict\(\) returned list; return a dict"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")


def test_another_datamodules_checkpoint_is_refused_before_anything_is_applied(tmp_path):
    trainer = quiet(tmp_path)
    module = Net()
    trainer.fit(module, datamodule=Points())
    trainer.save_checkpoint(tmp_path / "points.ckpt")

    class Other(Points):
        pass

    other, resumed = Other(), Net()
    before = {k: v.clone() for k, v in resumed.state_dict().items()}
    with pytest.raises(ConfigError, match="holds the state of data module Points, but this run's data module is "
                                          ".*Other; resume with the data module that wrote the checkpoint"):
        quiet(tmp_path, max_epochs=2).fit(resumed, datamodule=other, ckpt_path=tmp_path / "points.ckpt")
    assert ("load_state_dict",) not in other.calls and other.served == 0
    assert all(torch.equal(before[k], v) for k, v in resumed.state_dict().items())
    assert other.calls[-1] == ("teardown", "fit")  # set up, so torn down


def test_a_checkpoints_datamodule_state_without_a_datamodule_warns(tmp_path):
    trainer = quiet(tmp_path)
    trainer.fit(Net(), datamodule=Points())
    trainer.save_checkpoint(tmp_path / "points.ckpt")
    with pytest.warns(UserWarning, match="holds the state of data module Points, but this run has no data module"):
        quiet(tmp_path, max_epochs=2).fit(Net(), DataLoader(points(32, 0), batch_size=8),
                                          ckpt_path=tmp_path / "points.ckpt")


def test_a_run_without_datamodule_writes_no_datamodule_key(tmp_path):
    trainer = quiet(tmp_path)
    trainer.fit(Net(), DataLoader(points(16, 0), batch_size=8))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    state, _ = load_checkpoint_dir(tmp_path / "plain.ckpt")
    assert "datamodule" not in state


def test_validate_after_fit_restores_the_datamodule_state_from_the_checkpoint_too(tmp_path):
    dm = Points()
    trainer = quiet(tmp_path, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck")])
    trainer.fit(Net(), datamodule=dm)
    later = Points()
    trainer.validate(Net(), datamodule=later, ckpt_path="best", verbose=False)
    assert later.served == 1 and ("load_state_dict",) in later.calls


# -- kill -9 and resume: the data module's state comes back --------------------------------------------
KILL_SCRIPT = [sys.executable, str(Path(__file__).parent / "_kill_datamodule.py"), "."]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datamodule-reference")
    subprocess.run(KILL_SCRIPT, cwd=root, check=True, capture_output=True, timeout=300)
    return root


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(point=kill_points(max_checkpoint=20))  # 24 steps, a checkpoint after each
def test_a_fit_with_a_datamodule_killed_anywhere_resumes_bit_identical(uninterrupted, tmp_path_factory, point):
    workdir = tmp_path_factory.mktemp("datamodule-killed")
    assert_kill_resume_exact(KILL_SCRIPT, workdir, *point, uninterrupted=uninterrupted)
    state, _ = load_checkpoint_dir(workdir / "killed" / "final.ckpt")
    assert state["datamodule"] == {"class": "Drifting", "state": {"seen": 24}}


def test_the_kill_test_fails_when_the_datamodule_forgets_its_state(uninterrupted, tmp_path):
    with pytest.raises(ResumeMismatch):
        assert_kill_resume_exact(KILL_SCRIPT, tmp_path, 6, 0.0, resume_args=("--resume", "latest", "--forget-state"),
                                 uninterrupted=uninterrupted)


def test_the_loggers_record_the_module_and_datamodule_hyperparameters(tmp_path):
    class WithRate(Net):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()

    Trainer(max_epochs=1, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path).fit(
        WithRate(), datamodule=Points(batch_size=4))
    assert json.loads((tmp_path / "logs" / "version_0" / "hparams.json").read_text()) == {"lr": 0.1, "batch_size": 4}


def test_a_hyperparameter_the_module_and_datamodule_disagree_on_is_refused(tmp_path):
    class WithBatchSize(Net):
        def __init__(self, batch_size=16):
            super().__init__()
            self.save_hyperparameters()

    with pytest.raises(ConfigError, match="'batch_size' is 16 in WithBatchSize but 4 in Points"):
        Trainer(max_epochs=1, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path).fit(
            WithBatchSize(), datamodule=Points(batch_size=4))


def test_from_datasets_serves_the_given_datasets(tmp_path):
    dm = DataModule.from_datasets(train_dataset=points(32, 0), test_dataset=points(8, 1), batch_size=8)
    assert dm.val_dataloader is None and dm.train_dataloader().batch_size == 8
    trainer = quiet(tmp_path)
    trainer.fit(Net(), datamodule=dm)
    assert trainer.global_step == 4
    (result,) = trainer.test(Net(), datamodule=dm, verbose=False)
    assert "test_loss" in result


def test_resuming_a_stateful_datamodule_from_a_checkpoint_without_its_state_warns(tmp_path):
    trainer = quiet(tmp_path)
    trainer.fit(Net(), DataLoader(points(32, 0), batch_size=8))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    dm = Points()
    with pytest.warns(UserWarning, match="holds no data module state .* Points.load_state_dict is not called"):
        quiet(tmp_path, max_epochs=2).fit(Net(), datamodule=dm, ckpt_path=tmp_path / "plain.ckpt")
    assert ("load_state_dict",) not in dm.calls


def test_a_module_without_validation_step_does_not_read_the_datamodules_validation_data(tmp_path):
    class NoValidation(TrainingModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = Points()
    quiet(tmp_path).fit(NoValidation(), datamodule=dm)
    assert ("val_dataloader",) not in dm.calls and ("train_dataloader",) in dm.calls
