"""CUDA-only checks of the Trainer flags (sync_batchnorm under DDP, inference_mode on a GPU).  Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .test_flags import Layered, Modes, numbered, quiet

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


class ThroughBatchNorm(Layered):
    def __init__(self) -> None:
        super().__init__()
        self.layer.requires_grad_(False)  # unused below: DDP expects every trainable parameter in the graph

    def training_step(self, batch, batch_idx):
        return self.body(batch[0]).pow(2).mean()


def test_sync_batchnorm_converts_batchnorm_under_ddp_on_cuda():
    module = ThroughBatchNorm()
    trainer = quiet(max_epochs=1, strategy="ddp", devices=1, accelerator="cuda", sync_batchnorm=True)
    trainer.fit(module, numbered(8))
    assert isinstance(module.body[1], nn.SyncBatchNorm)
    assert next(module.body[1].parameters()).is_cuda
    assert trainer.global_step == 4


def test_evaluation_on_cuda_runs_under_inference_mode():
    module = Modes()
    quiet(max_epochs=1, accelerator="cuda").fit(module, numbered(4), numbered(4))
    assert module.modes["val"] == (True, False)
