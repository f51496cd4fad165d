"""Callbacks in real ``Trainer.fit`` runs on tiny generated data.

The module logs a *scripted* validation score per epoch (``scores[epoch]``), so
which checkpoints are kept and when early stopping fires are known exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer._optim import ConfigError
from statemachine_trainer.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
)
from statemachine_trainer.callbacks.lr_monitor import _metric_names
from statemachine_trainer.checkpoint import load_checkpoint_dir
from statemachine_trainer.loggers import CSVLogger
from statemachine_trainer.module import TrainingModule
from statemachine_trainer.trainer import Trainer

BATCHES = 4  # batches per epoch in every loader below


class Scripted(TrainingModule):
    """A 2-layer MLP; validation logs ``score = scores[epoch]`` (the last one repeats)."""

    def __init__(self, scores: list[float] = (1.0,), lr: float = 0.1, scheduler: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.scores, self.lr, self.scheduler = list(scores), lr, scheduler

    def score(self) -> float:
        return self.scores[min(self.current_epoch, len(self.scores) - 1)]

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("score", self.score(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        if not self.scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


class TrainScored(Scripted):
    """No validation: the scripted score is logged at the end of each training epoch."""

    def on_train_epoch_end(self) -> None:
        self.log("score", self.score())


def loader(seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(4 * BATCHES, 4, generator=g), torch.randn(4 * BATCHES, 1, generator=g))
    return DataLoader(data, batch_size=4)


def fit(tmp_path: Path, module: TrainingModule, callbacks: list[Callback], val: bool = True, **flags) -> Trainer:
    flags = {"max_epochs": 5, "logger": False, "enable_progress_bar": False, **flags}
    trainer = Trainer(default_root_dir=tmp_path, callbacks=callbacks, **flags)
    trainer.fit(module, loader(), loader(1) if val else None)
    return trainer


def ckpt_names(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.ckpt")}


# -- ModelCheckpoint -------------------------------------------------------------------------------
SCORES = [5.0, 3.0, 4.0, 1.0, 2.0]


def test_top_k_min_keeps_the_k_lowest_and_deletes_the_rest(tmp_path):
    ckpt = ModelCheckpoint(monitor="score", save_top_k=2, filename="{epoch}-{score:.1f}")
    fit(tmp_path, Scripted(SCORES), [ckpt])
    assert ckpt_names(tmp_path / "checkpoints") == {"epoch=3-score=1.0.ckpt", "epoch=4-score=2.0.ckpt"}
    assert Path(ckpt.best_model_path).name == "epoch=3-score=1.0.ckpt"
    assert ckpt.best_model_score == 1.0
    assert Path(ckpt.kth_best_model_path).name == "epoch=4-score=2.0.ckpt"
    assert {Path(p).name: s for p, s in ckpt.best_k_models.items()} == {"epoch=3-score=1.0.ckpt": 1.0, "epoch=4-score=2.0.ckpt": 2.0}


def test_top_k_max_keeps_the_k_highest(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "best", monitor="score", mode="max", save_top_k=2,
                           filename="{epoch}-{score:.1f}")
    fit(tmp_path, Scripted(SCORES), [ckpt])
    assert ckpt_names(tmp_path / "best") == {"epoch=0-score=5.0.ckpt", "epoch=2-score=4.0.ckpt"}
    assert ckpt.best_model_score == 5.0 and Path(ckpt.best_model_path).name == "epoch=0-score=5.0.ckpt"


def test_without_monitor_keeps_the_latest_plus_last(tmp_path):
    ckpt = ModelCheckpoint(save_last=True)
    fit(tmp_path, Scripted(), [ckpt], max_epochs=3)
    # One save per epoch after validation, never during the sanity check; top_k=1 keeps the newest.
    assert ckpt_names(tmp_path / "checkpoints") == {f"epoch=2-step={3 * BATCHES}.ckpt", "last.ckpt"}
    assert ckpt.best_model_path.endswith(f"epoch=2-step={3 * BATCHES}.ckpt") and ckpt.best_model_score is None
    assert ckpt.last_model_path == str(tmp_path / "checkpoints" / "last.ckpt")


def test_save_top_k_all_saves_once_per_epoch_and_zero_saves_only_last(tmp_path):
    every = ModelCheckpoint(dirpath=tmp_path / "all", save_top_k=-1)
    none = ModelCheckpoint(dirpath=tmp_path / "none", save_top_k=0, save_last=True)
    fit(tmp_path, Scripted(), [every, none], max_epochs=3)
    assert ckpt_names(tmp_path / "all") == {f"epoch={e}-step={(e + 1) * BATCHES}.ckpt" for e in range(3)}
    assert ckpt_names(tmp_path / "none") == {"last.ckpt"} and none.best_model_path == ""


def test_mid_epoch_validation_saves_after_each_validation_but_not_the_sanity_check(tmp_path):
    ckpt = ModelCheckpoint(save_top_k=-1)
    fit(tmp_path, Scripted(), [ckpt], max_epochs=1, val_check_interval=2)
    assert ckpt_names(tmp_path / "checkpoints") == {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"}


def test_every_n_train_steps(tmp_path):
    ckpt = ModelCheckpoint(every_n_train_steps=3, save_top_k=-1)
    fit(tmp_path, Scripted(), [ckpt], val=False, max_epochs=2)  # 8 steps: saves at 3 and 6, none at epoch ends
    assert ckpt_names(tmp_path / "checkpoints") == {"epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"}


def test_every_n_epochs_without_validation(tmp_path):
    ckpt = ModelCheckpoint(every_n_epochs=2, save_top_k=-1)
    fit(tmp_path, Scripted(), [ckpt], val=False, max_epochs=5)
    assert ckpt_names(tmp_path / "checkpoints") == {f"epoch=1-step={2 * BATCHES}.ckpt",
                                                    f"epoch=3-step={4 * BATCHES}.ckpt"}


def test_monitor_of_a_training_epoch_value_without_validation(tmp_path):
    ckpt = ModelCheckpoint(monitor="score", filename="{epoch}")
    fit(tmp_path, TrainScored(SCORES), [ckpt], val=False)
    assert ckpt_names(tmp_path / "checkpoints") == {"epoch=3.ckpt"} and ckpt.best_model_score == 1.0


def test_same_filename_gets_a_version_suffix(tmp_path):
    ckpt = ModelCheckpoint(monitor="score", save_top_k=2, filename="run")
    fit(tmp_path, Scripted([3.0, 2.0, 1.0]), [ckpt], max_epochs=3)
    # Epoch 0 wrote run.ckpt, epoch 1 run-v1.ckpt; epoch 2 replaces the worst (run.ckpt, 3.0) under its name.
    assert ckpt_names(tmp_path / "checkpoints") == {"run.ckpt", "run-v1.ckpt"}
    assert sorted(ckpt.best_k_models.values()) == [1.0, 2.0]
    assert Path(ckpt.best_model_path).name == "run.ckpt"


def test_validate_with_best_checkpoint_loads_the_best_weights(tmp_path):
    ckpt = ModelCheckpoint(monitor="score", filename="{epoch}")
    module = Scripted(SCORES)
    trainer = fit(tmp_path, module, [ckpt])
    best = load_checkpoint_dir(ckpt.best_model_path)[0]["module"]
    assert not all(torch.equal(best[k], v) for k, v in module.state_dict().items())  # training moved on
    result = trainer.validate(module, loader(1), ckpt_path="best")
    assert all(torch.equal(best[k], v) for k, v in module.state_dict().items())
    assert result == [{"score": 2.0}]  # current_epoch stays at 5 -> the last scripted score


def test_fast_dev_run_never_saves(tmp_path):
    ckpt = ModelCheckpoint(save_last=True)
    fit(tmp_path, Scripted(), [ckpt], fast_dev_run=True)
    assert not (tmp_path / "checkpoints").exists() and ckpt.best_model_path == ""


def test_resumed_run_keeps_pruning_the_same_files(tmp_path):
    ckpt = ModelCheckpoint(monitor="score", save_top_k=2, filename="{epoch}-{score:.1f}", save_last=True)
    fit(tmp_path, Scripted(SCORES), [ckpt], max_epochs=3)
    assert ckpt_names(tmp_path / "checkpoints") == {"epoch=1-score=3.0.ckpt", "epoch=2-score=4.0.ckpt", "last.ckpt"}
    again = ModelCheckpoint(monitor="score", save_top_k=2, filename="{epoch}-{score:.1f}", save_last=True)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[again], max_epochs=5, logger=False,
                      enable_progress_bar=False)
    trainer.fit(Scripted(SCORES), loader(), loader(1), ckpt_path=ckpt.last_model_path)
    assert trainer.current_epoch == 5
    assert ckpt_names(tmp_path / "checkpoints") == {"epoch=3-score=1.0.ckpt", "epoch=4-score=2.0.ckpt", "last.ckpt"}


def test_checkpoint_settings_are_checked():
    with pytest.raises(ConfigError, match="mode='best'"):
        ModelCheckpoint(mode="best")
    with pytest.raises(ConfigError, match="save_top_k=-2"):
        ModelCheckpoint(save_top_k=-2)


# -- a monitor that was never logged ----------------------------------------------------------------
@pytest.mark.parametrize("callback", [ModelCheckpoint(monitor="val_acc"), EarlyStopping(monitor="val_acc")],
                         ids=["ModelCheckpoint", "EarlyStopping"])
def test_never_logged_monitor_names_the_key_and_what_was_logged(tmp_path, callback):
    with pytest.raises(ConfigError) as error:
        fit(tmp_path, Scripted(), [callback], max_epochs=1)
    message = str(error.value)
    assert f"{type(callback).__name__} monitors 'val_acc'" in message
    assert "logged: " in message and "score" in message and "train_loss" in message


def test_filename_placeholder_that_was_never_logged(tmp_path):
    with pytest.raises(ConfigError, match="'val_loss'.*logged: .*score"):
        fit(tmp_path, Scripted(), [ModelCheckpoint(filename="{val_loss:.2f}")], max_epochs=1)


# -- EarlyStopping ---------------------------------------------------------------------------------
def test_early_stopping_on_a_constant_metric(tmp_path):
    stop = EarlyStopping(monitor="score", patience=2)
    trainer = fit(tmp_path, Scripted([1.0]), [stop], max_epochs=20)
    # Epoch 0 sets the best; epochs 1 and 2 do not improve -> stop after epoch 2.
    assert stop.stopped_epoch == 2 and trainer.current_epoch == 3
    assert stop.wait_count == 2 and stop.best_score == 1.0
    assert stop.stop_reason == ("Monitored metric score did not improve by more than 0.0 in the last 2 checks. "
                                "Best score: 1.000.")


def test_early_stopping_min_delta_and_max_mode(tmp_path):
    # Improvements of 0.05 do not count with min_delta=0.1: best stays 1.0 from epoch 0.
    stop = EarlyStopping(monitor="score", mode="max", min_delta=0.1, patience=3)
    trainer = fit(tmp_path, Scripted([1.0, 1.05, 1.08, 1.09, 1.5]), [stop], max_epochs=20)
    assert stop.stopped_epoch == 3 and trainer.current_epoch == 4 and stop.best_score == 1.0


def test_early_stopping_respects_min_epochs(tmp_path):
    stop = EarlyStopping(monitor="score", patience=1)
    trainer = fit(tmp_path, Scripted([1.0]), [stop], max_epochs=20, min_epochs=4)
    assert stop.stopped_epoch == 3 and trainer.current_epoch == 4  # asked at epoch 1, honoured at 4


def test_early_stopping_thresholds_and_non_finite(tmp_path):
    good = EarlyStopping(monitor="score", stopping_threshold=2.5)
    assert fit(tmp_path, Scripted([5.0, 4.0, 3.0, 2.0, 1.0]), [good], max_epochs=20).current_epoch == 4
    assert good.stopped_epoch == 3 and good.stop_reason.startswith("Stopping threshold reached: score = 2.000")

    bad = EarlyStopping(monitor="score", divergence_threshold=10.0)
    assert fit(tmp_path / "bad", Scripted([5.0, 4.0, 11.0]), [bad], max_epochs=20).current_epoch == 3
    assert bad.stop_reason.startswith("Divergence threshold reached")

    nan = EarlyStopping(monitor="score", patience=10)
    assert fit(tmp_path / "nan", Scripted([3.0, math.nan]), [nan], max_epochs=20).current_epoch == 2
    assert nan.stop_reason == "Monitored metric score = nan is not finite. Previous best value was 3.000."


def test_early_stopping_without_validation_checks_at_epoch_end(tmp_path):
    stop = EarlyStopping(monitor="score", patience=1)
    trainer = fit(tmp_path, TrainScored([3.0, 2.0, 2.5]), [stop], val=False, max_epochs=20)
    assert stop.stopped_epoch == 2 and trainer.current_epoch == 3 and stop.best_score == 2.0


def test_early_stopping_not_strict_warns_and_goes_on(tmp_path):
    stop = EarlyStopping(monitor="missing", strict=False)
    with pytest.warns(RuntimeWarning, match="'missing' was not logged"):
        trainer = fit(tmp_path, Scripted(), [stop], max_epochs=2)
    assert trainer.current_epoch == 2 and stop.stop_reason is None


# -- LearningRateMonitor ---------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_lr_monitor_epoch_interval_follows_the_scheduler(tmp_path):
    logger = CSVLogger(tmp_path)
    fit(tmp_path, Scripted(scheduler=True), [LearningRateMonitor("epoch")], max_epochs=3, logger=logger)
    lrs = [float(row["lr-SGD"]) for row in read_csv(logger.metrics_file) if row.get("lr-SGD")]
    assert lrs == pytest.approx([0.1, 0.05, 0.025])


def test_lr_monitor_step_interval_logs_every_n_steps(tmp_path):
    logger = CSVLogger(tmp_path)
    fit(tmp_path, Scripted(lr=0.3), [LearningRateMonitor("step")], max_epochs=2, logger=logger, log_every_n_steps=2)
    rows = [row for row in read_csv(logger.metrics_file) if row.get("lr-SGD")]
    assert [int(row["step"]) for row in rows] == [0, 2, 4, 6]
    assert {float(row["lr-SGD"]) for row in rows} == {0.3}


def test_lr_monitor_names_param_groups_and_repeated_optimizers():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    optimizers = [torch.optim.Adam(a.parameters()),
                  torch.optim.Adam([{"params": [a.weight]}, {"params": [a.bias]}]),
                  torch.optim.SGD(b.parameters(), lr=0.1)]
    assert _metric_names(optimizers) == [("lr-Adam",), ("lr-Adam-1/pg0", "lr-Adam-1/pg1"), ("lr-SGD",)]


def test_lr_monitor_needs_a_logger(tmp_path):
    with pytest.raises(ConfigError, match="LearningRateMonitor needs a logger"):
        fit(tmp_path, Scripted(), [LearningRateMonitor()], max_epochs=1, logger=False)


# -- ProgressBar -----------------------------------------------------------------------------------
def test_progress_bar_prints_nothing_without_a_terminal(tmp_path, capsys):
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False, enable_checkpointing=False)
    bar = trainer.callback(ProgressBar)
    assert bar is not None  # added by default
    trainer.fit(Scripted(), loader(), loader(1))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert bar.enabled is False


def render(tmp_path: Path, refresh_rate: int, batches_per_epoch: int = BATCHES) -> str:
    out = io.StringIO()
    bar = ProgressBar(refresh_rate=refresh_rate, console=Console(file=out, force_terminal=True, width=140))
    fit(tmp_path, Scripted(), [bar], max_epochs=2, enable_progress_bar=True, enable_checkpointing=False)
    return out.getvalue()


def test_progress_bar_renders_on_a_terminal(tmp_path):
    text = render(tmp_path, refresh_rate=1)
    for expected in ("Epoch 0", "Epoch 1", "Sanity checking", "Validation", f"3/{BATCHES}", "train_loss=",
                     "score=1"):
        assert expected in text, expected


def test_progress_bar_refresh_rate(tmp_path):
    text = render(tmp_path, refresh_rate=3)
    # Refreshes at batch 3 and at the last batch (4) only.
    assert f"3/{BATCHES}" in text and f"4/{BATCHES}" in text
    assert f"2/{BATCHES}" not in text and f"1/{BATCHES}" not in text


# -- state round trips -----------------------------------------------------------------------------
def test_state_dicts_round_trip_through_json(tmp_path):
    ckpt = ModelCheckpoint(monitor="score", save_top_k=2, save_last=True)
    stop = EarlyStopping(monitor="score", patience=2)
    fit(tmp_path, Scripted([3.0, 2.0, 2.0, 2.0]), [ckpt, stop], max_epochs=10)
    for callback, fresh in ((ckpt, ModelCheckpoint(monitor="score", save_top_k=2, save_last=True)),
                            (stop, EarlyStopping(monitor="score", patience=2)),
                            (LearningRateMonitor(), LearningRateMonitor()), (ProgressBar(), ProgressBar())):
        state = callback.state_dict()
        fresh.load_state_dict(json.loads(json.dumps(state)))
        assert fresh.state_dict() == state and fresh.state_key == callback.state_key
    assert stop.state_dict()["stopped_epoch"] == 3 and len(ckpt.state_dict()["best_k_models"]) == 2


def test_fresh_early_stopping_state_is_json_and_keys_differ_by_settings():
    state = EarlyStopping(monitor="loss").state_dict()
    assert json.loads(json.dumps(state))["best_score"] == math.inf
    keys = {ModelCheckpoint().state_key, ModelCheckpoint(monitor="loss").state_key,
            ModelCheckpoint(monitor="loss", mode="max").state_key, ModelCheckpoint(every_n_train_steps=5).state_key,
            EarlyStopping("loss").state_key, EarlyStopping("acc").state_key}
    assert len(keys) == 6
    assert ModelCheckpoint(monitor="val_loss").state_key.startswith("ModelCheckpoint{'monitor': 'val_loss', 'mode'")
