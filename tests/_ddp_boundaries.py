"""Which boundaries the checkpoint writer observes under strategy="ddp" (tests/test_ddp.py).

Run under torchrun with 2 processes (or in one, with ``--strategy auto``): it
counts the writer's observer calls by loop, split by whether a checkpoint
request was waiting, and asks for a checkpoint in ``on_train_batch_start`` of
batch 4; each rank writes ``boundaries-<rank>.json`` in the working directory:
``{"idle": {loop: calls}, "pending": {loop: calls}, "written_at_step": S}``.
"""

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, Trainer, TrainingModule
from statemachine_trainer._boundary import BoundaryWriter

calls: dict[str, Counter] = {"idle": Counter(), "pending": Counter()}
observed = BoundaryWriter._at_boundary_ranks


def counting(self, loop):
    calls["pending" if self._pending else "idle"][loop.name] += 1
    observed(self, loop)


BoundaryWriter._at_boundary_ranks = counting  # the observer under DDP; in one process it is not installed


class Module(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class AskInsideABatch(Callback):
    """Asks for a checkpoint as the first epoch's batch 2 starts; records the optimizer steps taken when it is written."""

    written_at_step = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 2 and trainer.current_epoch == 0:
            trainer.request_checkpoint("asked.ckpt", on_written=lambda path: self._written(trainer))

    def _written(self, trainer):
        self.written_at_step = trainer.global_step


parser = argparse.ArgumentParser()
parser.add_argument("--strategy", default="ddp")
args = parser.parse_args()
ask = AskInsideABatch()
trainer = Trainer(strategy=args.strategy, devices=2 if args.strategy == "ddp" else 1, accelerator="cpu",
                  max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                  enable_model_summary=False, callbacks=[ask])
trainer.fit(Module(), DataLoader(TensorDataset(torch.randn(64, 3)), batch_size=4))
rank = os.environ.get("RANK", "0")
Path(f"boundaries-{rank}.json").write_text(json.dumps({"idle": calls["idle"], "pending": calls["pending"],
                                                       "written_at_step": ask.written_at_step}))
