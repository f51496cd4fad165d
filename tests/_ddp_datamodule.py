"""fit(model, datamodule=dm) under strategy="ddp" with 2 processes (tests/test_lifecycle.py).

Each hook call appends ``<hook> rank=<global rank>`` to ``calls.txt`` in the
working directory: ``prepare_data`` must appear once (local rank 0), ``setup``
and ``teardown`` once per rank, and every rank must train on its own shard.
"""

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import DataModule, Trainer, TrainingModule


def record(hook: str) -> None:
    with Path("calls.txt").open("a") as out:
        out.write(f"{hook} rank={os.environ.get('RANK', '?')}\n")


class Data(DataModule):
    def prepare_data(self):
        record("DataModule.prepare_data")
        torch.save(torch.randn(40, 4, generator=torch.Generator().manual_seed(0)), "prepared.pt")

    def setup(self, stage):
        record(f"DataModule.setup:{stage}")
        x = torch.load("prepared.pt")  # written by local rank 0 only: the other rank waited for it
        self.train_set = TensorDataset(x, (x.sum(1) > 0).long())

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=5)

    def teardown(self, stage):
        record(f"DataModule.teardown:{stage}")


class Net(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)

    def prepare_data(self):
        record("prepare_data")

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        record(f"configure_optimizers steps={self.trainer.estimated_stepping_batches}")
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    trainer = Trainer(strategy="ddp", devices=2, accelerator="cpu", max_epochs=1, logger=False,
                      enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(Net(), datamodule=Data())
