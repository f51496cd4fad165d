"""CUDA-only checks: mixed precision and deterministic runs.  Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from .test_optimization_modes import Classifier, YieldGAN, make_loader, real_loader, trainer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_cuda(precision):
    module = Classifier()
    t = trainer(accelerator="cuda", precision=precision)
    torch.manual_seed(123)
    t.fit(module, make_loader())
    assert next(module.parameters()).is_cuda
    assert sum(module.losses[-6:]) < sum(module.losses[:6])
    if precision == "16-mixed":
        assert t.precision.scaler is not None and t.precision.scaler.get_scale() > 0


def test_deterministic_cuda_runs_are_bit_identical():
    results = []
    for _ in range(2):
        module = YieldGAN()
        t = trainer(accelerator="cuda", deterministic=True, precision="bf16-mixed")
        torch.manual_seed(123)
        t.fit(module, real_loader())
        results.append([p.detach().cpu() for p in module.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
