"""A 2-process fit (tests/test_flags.py) with use_distributed_sampler from argv[1] and a max_time budget:
each rank writes the samples it trained on and why its fit stopped to rank-<r>.txt in the working directory."""

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Trainer, TrainingModule


class Module(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(1, 1)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen += batch[0].flatten().int().tolist()
        if self.trainer.global_rank == 1:
            time.sleep(0.05)  # rank 1 is slower: the max_time decision must still be the same on both ranks
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


use_sampler = sys.argv[1] == "True"
trainer = Trainer(strategy="ddp", devices=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False, use_distributed_sampler=use_sampler,
                  max_epochs=1 if use_sampler else 50, max_time=None if use_sampler else {"seconds": 1})
data = TensorDataset(torch.arange(8.0).unsqueeze(1))
module = Module()
trainer.fit(module, DataLoader(data, batch_size=2))
Path(f"rank-{trainer.strategy.rank}.txt").write_text(
    f"{trainer.global_step}\n{' '.join(map(str, module.seen))}\n{trainer.fit_loop.stop_reason()}\n")
