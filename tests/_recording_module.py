"""A TrainingModule and a Callback that record every hook call, for hook-order tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, TrainingModule
from statemachine_trainer._hook_spec import HOOKS, LIFECYCLE
from statemachine_trainer._hooks import HOOK_NAMES

#: Hooks only the module has (Lightning's ModelHooks/DataHooks): a callback never sees them.
MODULE_ONLY = frozenset(h.name for h in HOOKS if "callback" not in h.owners)


def tiny_loader(n: int = 8, batch_size: int = 4, shuffle: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    y = (x.sum(1) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def _recorder(name: str):
    default = getattr(TrainingModule, name)

    def hook(self, *args):
        self.calls.append(name)
        return default(self, *args)  # a no-op stub, or Lightning's default (return/move the batch, eval/train)
    hook.__name__ = name
    return hook


class RecordingModule(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.calls: list[str] = []

    def training_step(self, batch, batch_idx):
        self.calls.append("training_step")
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.calls.append("validation_step")
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def test_step(self, batch, batch_idx):
        self.calls.append("test_step")

    def predict_step(self, batch, batch_idx):
        self.calls.append("predict_step")
        return self.net(batch[0])

    def configure_optimizers(self):
        self.calls.append("configure_optimizers")
        return torch.optim.SGD(self.parameters(), lr=0.1)


for _name in (*HOOK_NAMES, *LIFECYCLE):
    setattr(RecordingModule, _name, _recorder(_name))


class RecordingCallback(Callback):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls


def _callback_recorder(name: str):
    def hook(self, trainer, module, *args):
        self.calls.append(f"Callback.{name}")
    return hook


for _name in HOOK_NAMES:
    if _name not in MODULE_ONLY:
        setattr(RecordingCallback, _name, _callback_recorder(_name))
