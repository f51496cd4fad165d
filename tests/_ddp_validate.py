"""validate() alone under strategy="ddp" (tests/test_ddp.py): unseeded weights, a rank-dependent value logged
with sync_dist, and a torchmetrics MeanMetric of rank-dependent values; each rank writes
"weights-checksum value local metric" to rank-<r>.txt in the working directory, and at exit, after the Trainer's
teardown, the names of the threads still running to threads-<r>.txt."""

import atexit
import os
from pathlib import Path

import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Trainer, TrainingModule


class Module(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)  # not seeded: every process starts with different weights
        self.mean = torchmetrics.MeanMetric()  # syncs its state over the ranks itself, at compute()

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("value", batch[0].sum(), sync_dist=True)  # unshuffled shards: rank 0 gets rows 0,2,..; rank 1 1,3,..
        self.log("local", batch[0].sum())  # not synced: stays this rank's own
        self.mean.update(batch[0][:, 0])
        self.log("metric", self.mean)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _threads_left() -> None:
    """Registered before the Trainer's teardown, so it runs after it (atexit runs last-registered first)."""
    tasks = Path("/proc/self/task")
    if "RANK" in os.environ and tasks.is_dir():  # a worker (the launching parent has no RANK), on Linux
        names = sorted((task / "comm").read_text().strip() for task in tasks.iterdir())
        Path(f"threads-{os.environ['RANK']}.txt").write_text(" ".join(names) + "\n")


atexit.register(_threads_left)
trainer = Trainer(strategy="ddp", devices=2, accelerator="cpu", logger=False, enable_progress_bar=False)
data = TensorDataset(torch.arange(10.0).repeat_interleave(3).view(10, 3))
module = Module()
(result,) = trainer.validate(module, DataLoader(data, batch_size=5))
checksum = float(sum(p.detach().double().sum() for p in module.parameters()))
Path(f"rank-{trainer.strategy.rank}.txt").write_text(f"{checksum:.6f} {result['value']} {result['local']} "
                                                   f"{result['metric']}\n")
