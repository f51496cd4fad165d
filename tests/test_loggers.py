"""``TensorBoardLogger``: real event files, read back with tensorboard's own reader."""

from __future__ import annotations

import csv
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer.loggers import CSVLogger
from statemachine_trainer.module import TrainingModule
from statemachine_trainer.trainer import Trainer


class MLP(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.hparams = {"hidden": 8, "lr": 0.1}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)), batch_size=4)


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from statemachine_trainer.loggers import TensorBoardLogger

    tb, reference = TensorBoardLogger(tmp_path), CSVLogger(tmp_path)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, logger=[tb, reference], log_every_n_steps=1,
                      enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(MLP(), loader(0), loader(1))

    assert tb.log_dir == tmp_path / "tb_logs" / "version_0"
    assert list(tb.log_dir.glob("events.out.tfevents.*"))
    written = scalars(tb.log_dir)
    with open(reference.metrics_file, newline="") as f:
        rows = list(csv.DictReader(f))
    for tag in ("train_loss", "val_loss"):
        expected = [(int(r["step"]), float(r[tag])) for r in rows if r.get(tag)]
        assert len(expected) == (8 if tag == "train_loss" else 2)
        assert [step for step, _ in written[tag]] == [step for step, _ in expected]
        assert [value for _, value in written[tag]] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_tensorboard_versions_hparams_and_flush(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from statemachine_trainer.loggers import TensorBoardLogger

    first = TensorBoardLogger(tmp_path, name="runs")
    first.log_hyperparams({"lr": 0.1, "layers": [8, 8]})
    first.log_metrics({"a": 1.5}, step=3)
    first.save()  # flushed: readable while the writer is still open
    assert scalars(first.log_dir) == {"a": [(3, 1.5)]}
    events = EventAccumulator(str(first.log_dir))
    events.Reload()
    assert "hparams/text_summary" in events.Tags()["tensors"]
    first.close()

    second = TensorBoardLogger(tmp_path, name="runs")
    assert second.log_dir.name == "version_1" and not second.log_dir.exists()  # nothing written yet
    restored = TensorBoardLogger(tmp_path, name="runs")
    restored.load_state_dict(first.state_dict())
    assert restored.log_dir == first.log_dir


def test_tensorboard_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    from statemachine_trainer.loggers.tensorboard import TensorBoardLogger

    with pytest.raises(ImportError, match=r'pip install "statemachine-trainer\[tensorboard\]"'):
        TensorBoardLogger(tmp_path)
