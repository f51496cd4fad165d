"""CUDA-only check of the global-batch order: GPU dropout is keyed by the micro-batch.  Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer.data import ResumableLoader

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_dropout_masks_belong_to_the_micro_batch_at_any_world_size():
    torch.zeros(1, device="cuda")  # CUDA initialized: the training stream then seeds the current device's generator
    base = ResumableLoader(DataLoader(TensorDataset(torch.arange(64.0)), batch_size=4, shuffle=True), seed=3)
    dropout = torch.nn.Dropout(0.5).cuda()

    def masks(world: int) -> dict[int, torch.Tensor]:
        out = {}
        for rank in range(world):  # each rank's micro-batches, as that rank's process reads them
            loader = base.global_batches(16, rank, world)
            for k, _ in enumerate(loader):
                out[loader.batch_sampler.micro_batch(k)] = dropout(torch.ones(8, device="cuda")).cpu()
        return out

    one, two, four = masks(1), masks(2), masks(4)
    assert one.keys() == two.keys() == four.keys()
    assert all(torch.equal(one[j], two[j]) and torch.equal(one[j], four[j]) for j in one)
    assert not torch.equal(one[0], one[1])
