"""statemachine_trainer.testing, used the way a user would: on their own module, from their own tests."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.testing import ResumeMismatch, assert_resume_exact, interruption_points


class MyModel(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    return (ResumableLoader(DataLoader(data, batch_size=8, shuffle=True), seed=1),
            ResumableLoader(DataLoader(data, batch_size=16)))


def trainer(callbacks):
    return Trainer(max_epochs=2, seed=0, accumulate_grad_batches=2, val_check_interval=0.5, num_sanity_val_steps=0,
                   enable_progress_bar=False, logger=False, enable_checkpointing=False, callbacks=callbacks)


@settings(max_examples=6, deadline=None)
@given(interruption_points(max_call={"on_train_epoch_end": 2}))
def test_my_model_resumes_exactly(tmp_path_factory, point):
    hook, call = point
    assert_resume_exact(MyModel, trainer, loaders, hook, call, tmp_path_factory.mktemp("resume"))


class ForgetsItsState(MyModel):
    """A module with state outside the checkpoint: a counter that scales the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def training_step(self, batch, batch_idx):
        self.seen += 1
        return super().training_step(batch, batch_idx) * (1 + self.seen % 5)


def test_a_module_with_unsaved_state_is_caught(tmp_path):
    with pytest.raises(ResumeMismatch, match=r"did not reproduce the uninterrupted run: \$\.module"):
        assert_resume_exact(ForgetsItsState, trainer, loaders, "on_train_batch_end", 3, tmp_path)


@given(interruption_points(max_call={"on_train_epoch_end": 2, "on_after_backward": 7}))
def test_interruption_points_respect_per_hook_caps(point):
    hook, call = point
    assert 1 <= call <= {"on_train_epoch_end": 2, "on_after_backward": 7}.get(hook, 4)


def test_interruption_points_reject_a_cap_below_one():
    with pytest.raises(ValueError, match="max_call must be an int >= 1"):
        interruption_points(max_call={"on_train_epoch_end": 0})


def test_a_call_that_never_happens_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="called fewer than 3 times"):
        assert_resume_exact(MyModel, trainer, loaders, "on_train_epoch_end", 3, tmp_path)
