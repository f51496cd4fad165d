"""The Trainer: hook order against specs/, flags, the loop tree, logging, and the four entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, FunctionModule, Trainer, TrainingModule
from statemachine_trainer.loops import EvaluationLoop, FitLoop, TrainingEpochLoop

from ._recording_module import MODULE_ONLY, RecordingCallback, RecordingModule, tiny_loader

SPEC = json.loads((Path(__file__).resolve().parent.parent / "specs" / "module_hook_order.json").read_text())


def quiet(**flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "enable_checkpointing": False, "logger": False}
    return Trainer(**{**defaults, **flags})


# -- hook order ---------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ["fit", "validate", "test", "predict"])
def test_module_hook_order_matches_spec(entry):
    module = RecordingModule()
    trainer = quiet(max_epochs=1, num_sanity_val_steps=1)
    if entry == "fit":
        trainer.fit(module, tiny_loader(8), tiny_loader(4))
    else:
        getattr(trainer, entry)(module, tiny_loader(4))
    assert module.calls == SPEC["scenarios"][entry]


def test_callback_hooks_follow_the_module_hook_of_the_same_name():
    module = RecordingModule()
    trainer = quiet(max_epochs=1, num_sanity_val_steps=1, callbacks=[RecordingCallback(module.calls)])
    trainer.fit(module, tiny_loader(8), tiny_loader(4))
    expected = []
    for name in SPEC["scenarios"]["fit"]:
        expected.append(name)
        if name.startswith("on_") and name not in MODULE_ONLY:
            expected.append(f"Callback.{name}")
    assert module.calls == expected


# -- a LightningModule-style module, as in the README ------------------------------------------------
class DigitsLike(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)}


def blobs(n: int = 240, seed: int = 0, batch_size: int = 24, shuffle: bool = True) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 8, generator=generator) + nn.functional.one_hot(y, 8).float() * 3
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def test_fit_validate_test_predict_on_a_lightning_style_module(tmp_path):
    torch.manual_seed(0)
    module = DigitsLike()
    trainer = quiet(max_epochs=4, default_root_dir=tmp_path)
    trainer.fit(module, blobs(), blobs(seed=1, shuffle=False))
    metrics = trainer.callback_metrics
    assert {"train_loss_step", "train_loss_epoch", "val_loss", "val_acc"} <= set(metrics)
    assert metrics["val_acc"] > 0.9
    assert trainer.current_epoch == 4 and trainer.global_step == 40
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    (validated,) = trainer.validate(module, blobs(seed=1, shuffle=False))
    assert validated["val_acc"] == pytest.approx(float(metrics["val_acc"]))  # same weights, same data
    (tested,) = trainer.test(module, blobs(seed=2, shuffle=False))
    assert tested["test_acc"] > 0.9
    predictions = trainer.predict(module, blobs(n=48, seed=3, shuffle=False))
    assert len(predictions) == 2 and predictions[0].shape == (24, 3)


def test_metric_objects_are_computed_and_reset_each_epoch():
    torch.manual_seed(0)
    module = DigitsLike()
    trainer = quiet(max_epochs=1, num_sanity_val_steps=0)
    val = blobs(seed=1, shuffle=False)
    trainer.fit(module, blobs(), val)
    manual = torchmetrics.classification.MulticlassAccuracy(num_classes=3)
    module.eval()
    with torch.no_grad():
        for x, y in val:
            manual.update(module(x), y)
    assert torch.equal(trainer.callback_metrics["val_acc"], manual.compute())
    assert module.val_acc.update_count == 0  # reset after compute


class LogModes(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        value = batch[0].sum()
        self.log("mean", value, on_step=False, on_epoch=True)
        self.log("total", value, on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("top", value, on_step=False, on_epoch=True, reduce_fx="max")
        self.log("both", value, on_step=True, on_epoch=True)
        return self.w(batch[0]).mean()

    def on_train_epoch_end(self):
        self.log("from_hook", 42.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_log_reductions_and_names():
    values = torch.arange(1.0, 7.0).reshape(6, 1)  # batches of 2: sums 3, 7, 11
    loader = DataLoader(TensorDataset(values), batch_size=2)
    trainer = quiet(max_epochs=1)
    trainer.fit(LogModes(), loader)
    m = trainer.callback_metrics
    assert m["mean"] == pytest.approx(7.0)  # (3*2 + 7*2 + 11*2) / 6, weighted by batch size
    assert m["total"] == pytest.approx(21.0)
    assert m["top"] == pytest.approx(11.0)
    assert m["both_step"] == pytest.approx(11.0) and m["both_epoch"] == pytest.approx(7.0)
    assert m["from_hook"] == pytest.approx(42.0)


def test_csv_logger_writes_step_and_epoch_rows(tmp_path):
    values = torch.arange(1.0, 9.0).reshape(8, 1)
    trainer = Trainer(max_epochs=2, enable_progress_bar=False, enable_checkpointing=False,
                      default_root_dir=tmp_path, log_every_n_steps=2)
    trainer.fit(LogModes(), DataLoader(TensorDataset(values), batch_size=2))
    text = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = text[0].split(",")
    assert {"step", "both_step", "both_epoch", "mean", "from_hook", "epoch"} <= set(header)
    assert len(text) == 1 + 2 * (2 + 1)  # per epoch: 2 step rows (every 2nd of 4 batches) + 1 epoch row


# -- flags ------------------------------------------------------------------------------------------
def count_calls(flags: dict, train_batches: int = 8, val_batches: int = 4) -> RecordingModule:
    module = RecordingModule()
    quiet(**flags).fit(module, tiny_loader(train_batches * 2, 2), tiny_loader(val_batches * 2, 2))
    return module


def test_limits_sanity_steps_and_val_interval():
    module = count_calls({"max_epochs": 2, "limit_train_batches": 6, "limit_val_batches": 2,
                          "num_sanity_val_steps": 1, "val_check_interval": 3})
    assert module.calls.count("training_step") == 12
    assert module.calls.count("on_sanity_check_start") == 1
    # sanity: 1 batch; then two validations per epoch (after batches 3 and 6) of 2 batches each
    assert module.calls.count("validation_step") == 1 + 2 * 2 * 2


def test_sanity_check_of_minus_one_runs_every_validation_batch():
    module = count_calls({"max_epochs": 1, "limit_train_batches": 1, "num_sanity_val_steps": -1})
    assert module.calls.count("validation_step") == 4 + 4  # the sanity check, then end-of-epoch validation


def test_check_val_every_n_epoch_and_fractional_interval():
    module = count_calls({"max_epochs": 4, "check_val_every_n_epoch": 2, "val_check_interval": 0.5,
                          "num_sanity_val_steps": 0})
    assert module.calls.count("on_validation_start") == 2 * 2  # epochs 2 and 4, twice each


def test_fast_dev_run_runs_each_loop_briefly():
    module = count_calls({"fast_dev_run": 2, "max_epochs": 10})
    assert module.calls.count("training_step") == 2
    assert module.calls.count("validation_step") == 2
    assert "on_sanity_check_start" not in module.calls


def test_max_steps_stops_mid_epoch():
    trainer = quiet(max_steps=5)
    module = RecordingModule()
    trainer.fit(module, tiny_loader(16, 2))
    assert trainer.global_step == 5 and module.calls.count("training_step") == 5


class StopAt(Callback):
    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


def test_should_stop_waits_for_min_epochs():
    trainer = quiet(max_epochs=10, min_epochs=3, callbacks=[StopAt()])
    trainer.fit(RecordingModule(), tiny_loader(8, 4))
    assert trainer.current_epoch == 3
    assert trainer.fit_loop.stop_reason() == "should_stop was set (e.g. by EarlyStopping)"


def test_accumulation_steps_on_the_last_partial_window():
    trainer = quiet(max_epochs=1, accumulate_grad_batches=3)
    trainer.fit(RecordingModule(), tiny_loader(14, 2))  # 7 batches: windows of 3, 3, 1
    assert trainer.global_step == 3


# -- the loop tree ------------------------------------------------------------------------------------
class CountingEpochLoop(TrainingEpochLoop):
    runs = 0

    def on_run_start(self) -> None:
        type(self).runs += 1
        super().on_run_start()


class TwoEpochFit(FitLoop):
    @property
    def done(self) -> bool:
        return self.progress.total.completed >= 2


def test_fit_loop_and_epoch_loop_can_be_replaced():
    trainer = quiet(max_epochs=100)
    trainer.fit_loop = TwoEpochFit()
    trainer.fit_loop.epoch_loop = CountingEpochLoop()
    trainer.fit(RecordingModule(), tiny_loader(8, 4))
    assert trainer.current_epoch == 2 and CountingEpochLoop.runs == 2


def test_connect_and_replace_sub_loops():
    trainer = quiet(max_epochs=1)
    old_batch_loop = trainer.fit_loop.epoch_loop.batch_loop
    trainer.fit_loop.replace(epoch_loop=CountingEpochLoop)
    assert isinstance(trainer.fit_loop.epoch_loop, CountingEpochLoop)
    assert trainer.fit_loop.epoch_loop.batch_loop is old_batch_loop  # sub-loops carried over
    trainer.fit_loop.epoch_loop.connect(val_loop=EvaluationLoop("validate"))
    module = RecordingModule()
    trainer.fit(module, tiny_loader(8, 4), tiny_loader(4, 4))
    assert module.calls.count("validation_step") == 1 + 1  # sanity check + end of epoch


def test_state_set_names_every_loop_of_the_tree():
    trainer = quiet(max_epochs=1)
    trainer.fit(RecordingModule(), tiny_loader(8, 4))
    paths = set(trainer.fit_loop.state_dict()["loops"])
    assert paths == {"fit_loop", "fit_loop.epoch_loop", "fit_loop.epoch_loop.batch_loop",
                     "fit_loop.epoch_loop.batch_loop.optimizer_loop", "fit_loop.epoch_loop.batch_loop.generator_loop",
                     "fit_loop.epoch_loop.batch_loop.manual_loop", "fit_loop.epoch_loop.val_loop"}
    assert trainer.fit_loop.state_dict()["loops"]["fit_loop"]["position"]["state"] == "END"


# -- research code: a plain nn.Module and functions ----------------------------------------------------
def test_function_module_trains_a_plain_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def step(net, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(net(x), y)

    module = FunctionModule(model, training_step=step, validation_step=step,
                            configure_optimizers=lambda net: torch.optim.Adam(net.parameters(), 1e-2))
    trainer = quiet(max_epochs=3)
    trainer.fit(module, blobs(), blobs(seed=1, shuffle=False))
    assert trainer.callback_metrics["val_loss"] < 0.5
    assert trainer.callback_metrics["train_loss"] < 1.0


# -- checkpoints ----------------------------------------------------------------------------------
def test_save_checkpoint_and_validate_from_it(tmp_path):
    from statemachine_trainer.checkpoint import load_checkpoint_dir, verify_checkpoint

    torch.manual_seed(0)
    module = DigitsLike()
    trainer = quiet(max_epochs=2)
    trainer.fit(module, blobs(), blobs(seed=1, shuffle=False))
    path = trainer.save_checkpoint(tmp_path / "model.ckpt")
    assert verify_checkpoint(path) == []
    state, manifest = load_checkpoint_dir(path)
    assert manifest["metadata"]["step"] == trainer.global_step == 20
    assert set(state) >= {"module", "loops", "optimizers", "schedulers", "callbacks", "rng"}
    assert state["loops"]["loops"]["fit_loop"]["position"]["state"] == "END"
    fresh = DigitsLike()
    (result,) = quiet().validate(fresh, blobs(seed=1, shuffle=False), ckpt_path=path)
    assert result["val_acc"] == pytest.approx(float(trainer.callback_metrics["val_acc"]))


class WithHparams(TrainingModule):
    def __init__(self, hidden: int = 4, lr: float = 0.1, **extra) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(3, hidden)


def test_save_hyperparameters_and_the_csv_logger(tmp_path):
    module = WithHparams(hidden=5, tag="x")
    assert module.hparams == {"hidden": 5, "lr": 0.1, "tag": "x"} and module.hparams.lr == 0.1
    from statemachine_trainer.loggers import CSVLogger

    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(module.hparams)
    assert json.loads((logger.log_dir / "hparams.json").read_text())["hidden"] == 5
