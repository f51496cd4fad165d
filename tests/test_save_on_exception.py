"""``Trainer(save_on_exception=True)``: an exception that escapes fit writes the last batch boundary's state.

For each place a failure can strike -- in ``training_step``, in backward
(after the gradients were partly accumulated), between two optimizers (after
the first one stepped), inside a mid-epoch validation -- a run that fails
once and is resumed from the checkpoint written on the exception must end
bit-identical to a run that never failed.  Dropout and a shuffled loader
make the RNG and data position part of what must come back.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from statemachine_trainer import ConfigError, Trainer, TrainingModule
from statemachine_trainer.checkpoint import find_latest
from statemachine_trainer.data import ResumableLoader

from ._points_module import points


class Flaky(TrainingModule):
    """Two-layer net with dropout; fails once at ``fail_at`` = (where, global step) if asked."""

    def __init__(self, where: str = "", step: int = -1, two_optimizers: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(8, 2)
        self.where, self.step = where, step
        self.validations = 0
        if two_optimizers:
            self.automatic_optimization = False

    def _fail(self, where: str) -> None:
        if where == self.where and self.trainer.global_step == self.step:
            self.where = ""  # once: the cause is fixed before the resume
            raise RuntimeError(f"boom in {where}")

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        if self.automatic_optimization:
            self._fail("training_step")
            return loss
        first, second = self.optimizers()
        self.manual_backward(loss)
        first.step()
        first.zero_grad()
        self._fail("between_optimizers")  # the first optimizer has stepped, the second has not
        second.step()
        second.zero_grad()
        return None

    def backward(self, loss, *args, **kwargs):
        loss.backward()  # gradients are accumulated, then the failure
        self._fail("backward")

    def validation_step(self, batch, batch_idx):
        if batch_idx == 1:
            self._fail("validation")
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        if self.automatic_optimization:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [torch.optim.SGD(self.body.parameters(), lr=0.1, momentum=0.9),
                torch.optim.Adam(self.head.parameters(), lr=0.01)]


def fit(root, model_args=(), ckpt_path=None, save_on_exception=True):
    trainer = Trainer(max_epochs=2, seed=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, val_check_interval=2, default_root_dir=root,
                      save_on_exception=save_on_exception)
    model = Flaky(*model_args)
    train = ResumableLoader(points(48), batch_size=8, shuffle=True)  # 6 batches per epoch, 12 steps
    val = ResumableLoader(points(16, seed=1), batch_size=8)
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize("where, step, two_optimizers, saved", [
    ("training_step", 3, False, "epoch=0-step=3"),  # the 4th batch: saved before it
    ("backward", 7, False, "epoch=1-step=7"),  # the 2nd batch of epoch 1
    # manual optimization counts each optimizer's step: batch 4 made steps 8 and 9, and fails between them
    ("between_optimizers", 9, True, "epoch=0-step=8"),
    ("validation", 4, False, "epoch=0-step=4"),  # the mid-epoch validation after the 4th batch: saved before it
])
def test_a_run_resumed_from_the_exception_checkpoint_ends_bit_identical(tmp_path, where, step, two_optimizers,
                                                                         saved):
    reference_trainer, reference = fit(tmp_path / "straight", ("", -1, two_optimizers))
    with pytest.raises(RuntimeError, match=f"boom in {where}") as failure:
        fit(tmp_path / "run", (where, step, two_optimizers))
    written = tmp_path / "run" / "checkpoints" / f"exception-{saved}.ckpt"
    assert written.is_dir(), sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert any(str(written) in note for note in getattr(failure.value, "__notes__", [str(written)]))
    assert find_latest(tmp_path / "run" / "checkpoints")[0] == written

    trainer, resumed = fit(tmp_path / "run", ("", -1, two_optimizers), ckpt_path="latest")
    assert trainer.global_step == reference_trainer.global_step == (24 if two_optimizers else 12)
    for (name, ours), theirs in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(ours, theirs), name
    for ours, theirs in zip(trainer.optimizers, reference_trainer.optimizers):
        assert torch.equal(torch.tensor(0.0) + len(ours.state), torch.tensor(0.0) + len(theirs.state))
        for p_ours, p_theirs in zip(ours.state.values(), theirs.state.values()):
            for key in p_ours:
                assert torch.equal(torch.as_tensor(p_ours[key]), torch.as_tensor(p_theirs[key])), key


def test_without_the_flag_nothing_is_written(tmp_path):
    with pytest.raises(RuntimeError, match="boom in training_step"):
        fit(tmp_path, ("training_step", 3), save_on_exception=False)
    assert not list((tmp_path / "checkpoints").glob("exception-*")) if (tmp_path / "checkpoints").exists() else True


def test_a_failure_before_the_first_batch_writes_nothing_and_says_so(tmp_path):
    class FailsAtStart(Flaky):
        def on_train_start(self):
            raise RuntimeError("boom at start")

    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                      save_on_exception=True, num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match="boom at start") as failure:
        trainer.fit(FailsAtStart(), ResumableLoader(points(16), batch_size=8))
    assert not list(tmp_path.rglob("exception-*"))
    assert any("no state to save" in note for note in getattr(failure.value, "__notes__", ["no state to save"]))


def test_the_flag_must_be_a_bool():
    with pytest.raises(ConfigError, match="save_on_exception must be True or False"):
        Trainer(save_on_exception="yes")
