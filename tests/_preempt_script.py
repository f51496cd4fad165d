"""A training run that a test stops with a signal (run as a subprocess by tests/test_resume.py)."""

import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, Trainer, TrainingModule


class Slow(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        time.sleep(0.01)  # long enough for the test to signal us mid-epoch
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Ready(Callback):
    def on_train_start(self, trainer, module):
        print("training", flush=True)  # the test waits for this line before signalling


root = sys.argv[1]
data = DataLoader(TensorDataset(torch.randn(4000, 4)), batch_size=4)
Trainer(max_epochs=100, default_root_dir=root, enable_progress_bar=False, logger=False,
        callbacks=[Ready()]).fit(Slow(), data)
