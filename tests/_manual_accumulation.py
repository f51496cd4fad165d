"""A manual-optimization module stepping every 2nd batch, for the DDP no_backward_sync tests.

Imported by ``tests/test_ddp.py`` (one process) and run by ``tests/_ddp_no_sync.py`` under torchrun (whose
directory is on ``sys.path``), so both test the very same module.
"""

from __future__ import annotations

import contextlib

import torch

from statemachine_trainer import TrainingModule


class ManualAccumulation(TrainingModule):
    """Manual optimization stepping every 2nd batch; with ``skip_sync`` the window's first backward runs in
    ``no_backward_sync()`` (stays local under DDP)."""

    automatic_optimization = False

    def __init__(self, skip_sync: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net, self.skip_sync = torch.nn.Linear(3, 1), skip_sync

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = self.net(batch[0]).pow(2).mean() / 2
        closes = batch_idx % 2 == 1
        with self.no_backward_sync() if self.skip_sync and not closes else contextlib.nullcontext():
            self.manual_backward(loss)
        if closes:
            opt.step()
            opt.zero_grad()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
