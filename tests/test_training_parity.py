"""Training-loop behaviour held to Lightning 2's own test expectations.

Each test names the Lightning test or source rule it follows.  Resume cases
check that a run interrupted at the behaviour's boundary ends bit-identical to
the uninterrupted one.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader


def quiet(**flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "enable_checkpointing": False, "logger": False,
                "num_sanity_val_steps": 0, "seed": 0}
    return Trainer(**{**defaults, **flags})


def loader(batches: int = 10, batch_size: int = 2, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * batch_size, 4, generator=g)
    y = (x.sum(1) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class Boring(TrainingModule):
    """Lightning's BoringModel, more or less: a linear layer, SGD, hooks recorded."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 2)
        self.calls: list[str] = []
        self.steps: list[tuple[int, int]] = []  # (epoch, batch_idx) of every training_step

    def training_step(self, batch, batch_idx):
        self.steps.append((self.current_epoch, batch_idx))
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_fit_start(self):
        self.calls.append("on_fit_start")

    def on_train_start(self):
        self.calls.append("on_train_start")

    def on_train_end(self):
        self.calls.append("on_train_end")

    def on_fit_end(self):
        self.calls.append("on_fit_end")


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# -- on_train_batch_start returning -1 ends this epoch only ---------------------------------------
class SkipAtFive(Boring):
    """Lightning tests/tests_pytorch/models/test_hooks.py::test_on_train_batch_start_return_minus_one."""

    def on_train_batch_start(self, batch, batch_idx):
        return -1 if batch_idx == 5 else None


def test_minus_one_from_on_train_batch_start_skips_the_rest_of_each_epoch():
    module = SkipAtFive()
    trainer = quiet(max_epochs=2)
    trainer.fit(module, loader(10))
    assert module.steps == [(0, i) for i in range(5)] + [(1, i) for i in range(5)]
    assert trainer.global_step == 10  # Lightning: batch_idx * max_epochs
    assert trainer.current_epoch == 2


@settings(max_examples=8, deadline=None)
@given(epochs=st.integers(1, 3), batches=st.integers(2, 5), data=st.data())
def test_minus_one_skips_the_same_batches_in_every_epoch(epochs, batches, data):
    skip_at = data.draw(st.integers(0, batches - 1))

    class Skip(Boring):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == skip_at else None

    module = Skip()
    trainer = quiet(max_epochs=epochs)
    trainer.fit(module, loader(batches))
    assert module.steps == [(e, i) for e in range(epochs) for i in range(skip_at)]
    assert (trainer.current_epoch, trainer.global_step) == (epochs, epochs * skip_at)


class SkipAndCheckpoint(SkipAtFive):
    def __init__(self, path, hook: str) -> None:
        super().__init__()
        self.path, self.hook = path, hook

    def on_train_batch_start(self, batch, batch_idx):
        skip = super().on_train_batch_start(batch, batch_idx)
        if self.hook == "on_train_batch_start" and skip == -1 and self.current_epoch == 0:
            self.trainer.request_checkpoint(self.path)  # written at the next boundary: the skipped batch's end
        return skip

    def on_train_epoch_end(self):
        if self.hook == "on_train_epoch_end" and self.current_epoch == 0:
            self.trainer.request_checkpoint(self.path)


@pytest.mark.parametrize("hook", ["on_train_batch_start", "on_train_epoch_end"])
def test_a_checkpoint_after_the_skip_resumes_to_the_same_run(tmp_path, hook):
    def train() -> ResumableLoader:
        return ResumableLoader(loader(10))

    whole = SkipAtFive()
    quiet(max_epochs=3).fit(whole, train())
    first = SkipAndCheckpoint(tmp_path / "ckpt", hook)
    quiet(max_epochs=3).fit(first, train())
    resumed = SkipAtFive()
    trainer = quiet(max_epochs=3)
    trainer.fit(resumed, train(), ckpt_path=tmp_path / "ckpt")
    assert resumed.steps == [(e, i) for e in (1, 2) for i in range(5)]
    assert trainer.global_step == 15
    assert same_weights(resumed, whole)


# -- a resumed fit is a fit call: its start hooks fire ----------------------------------------------
class CheckpointAtEpoch(Boring):
    def __init__(self, path, epoch: int = 0) -> None:
        super().__init__()
        self.path, self.at = path, epoch

    def on_train_epoch_end(self):
        if self.current_epoch == self.at:
            self.trainer.request_checkpoint(self.path)


@pytest.mark.parametrize("sanity", [0, 1])
def test_a_resumed_fit_calls_on_fit_start_and_on_train_start(tmp_path, sanity):
    """Lightning calls them on every fit call (trainer._run, fit_loop.on_run_start), resumed or not."""
    quiet(max_epochs=2).fit(CheckpointAtEpoch(tmp_path / "ckpt"), loader(4), loader(2))
    resumed = Boring()
    quiet(max_epochs=2, num_sanity_val_steps=sanity).fit(resumed, loader(4), loader(2), ckpt_path=tmp_path / "ckpt")
    assert resumed.calls == ["on_fit_start", "on_train_start", "on_train_end", "on_fit_end"]
    assert resumed.steps == [(1, i) for i in range(4)]


# -- resuming an ended fit with larger limits trains up to the new totals ----------------------------
def test_an_ended_fit_resumed_with_a_larger_max_epochs_trains_the_extra_epochs(tmp_path):
    whole = Boring()
    quiet(max_epochs=3).fit(whole, loader(4))
    first = Boring()
    trainer = quiet(max_epochs=1)
    trainer.fit(first, loader(4))
    trainer.save_checkpoint(tmp_path / "ended")  # after fit returned: the fit loop is at END
    resumed = Boring()
    again = quiet(max_epochs=3)
    again.fit(resumed, loader(4), ckpt_path=tmp_path / "ended")
    assert resumed.steps == [(e, i) for e in (1, 2) for i in range(4)]
    assert (again.current_epoch, again.global_step) == (3, 12)
    assert resumed.calls == ["on_fit_start", "on_train_start", "on_train_end", "on_fit_end"]
    assert same_weights(resumed, whole)


@settings(max_examples=6, deadline=None)
@given(first=st.integers(1, 3), second=st.integers(1, 4))
def test_an_ended_fit_resumed_with_any_max_epochs_ends_where_one_fit_to_the_larger_would(tmp_path_factory, first,
                                                                                         second):
    path = tmp_path_factory.mktemp("ended") / "ckpt"
    trainer = quiet(max_epochs=first)
    trainer.fit(Boring(), loader(3))
    trainer.save_checkpoint(path)
    resumed, again = Boring(), quiet(max_epochs=second)
    again.fit(resumed, loader(3), ckpt_path=path)
    whole = Boring()
    quiet(max_epochs=max(first, second)).fit(whole, loader(3))
    assert (again.current_epoch, again.global_step) == (max(first, second), 3 * max(first, second))
    assert same_weights(resumed, whole)


def test_an_ended_fit_resumed_with_a_larger_max_steps_trains_up_to_the_new_total(tmp_path):
    first = Boring()
    trainer = quiet(max_steps=6)
    trainer.fit(first, loader(4))
    trainer.save_checkpoint(tmp_path / "ended")
    resumed = Boring()
    again = quiet(max_steps=10)
    again.fit(resumed, loader(4), ckpt_path=tmp_path / "ended")
    assert again.global_step == 10
    # max_steps ended epoch 1 after its 2nd batch; that epoch counts as done, so the new steps start epoch 2
    assert resumed.steps == [(2, i) for i in range(4)]


def test_an_ended_fit_resumed_with_the_same_limits_trains_nothing_but_is_a_fit_call(tmp_path):
    trainer = quiet(max_epochs=2)
    trainer.fit(Boring(), loader(4))
    trainer.save_checkpoint(tmp_path / "ended")
    resumed = Boring()
    again = quiet(max_epochs=2)
    again.fit(resumed, loader(4), ckpt_path=tmp_path / "ended")
    assert resumed.steps == []
    assert (again.current_epoch, again.global_step) == (2, 8)
    assert resumed.calls == ["on_fit_start", "on_train_start", "on_train_end", "on_fit_end"]


class EndCheckpoint(Boring):
    def __init__(self, path) -> None:
        super().__init__()
        self.path = path

    def on_train_end(self):
        super().on_train_end()
        self.trainer.request_checkpoint(self.path)  # written inside the fit's last transition


def test_a_checkpoint_from_the_fits_last_hooks_also_resumes_to_more_epochs(tmp_path):
    quiet(max_epochs=1).fit(EndCheckpoint(tmp_path / "end"), loader(4))
    resumed = Boring()
    again = quiet(max_epochs=2)
    again.fit(resumed, loader(4), ckpt_path=tmp_path / "end")
    assert resumed.steps == [(1, i) for i in range(4)]


# -- should_stop set mid-epoch: that epoch's validation still runs ----------------------------------
class StopAtFour(Boring):
    """Lightning tests/tests_pytorch/trainer/test_trainer.py::test_should_stop_mid_epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.validated_at: list[tuple[int, int]] = []

    def training_step(self, batch, batch_idx):
        if batch_idx == 4:
            self.trainer.should_stop = True
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.validated_at.append((self.current_epoch, self.global_step))


def test_should_stop_mid_epoch_still_validates_that_epoch():
    module = StopAtFour()
    trainer = quiet(max_epochs=1)
    trainer.fit(module, loader(10), loader(1))
    assert trainer.current_epoch == 1
    assert trainer.global_step == 5
    assert module.validated_at == [(0, 5)]


def test_should_stop_on_a_validation_batch_validates_once():
    module = StopAtFour()
    trainer = quiet(max_epochs=1, val_check_interval=5)  # validation after batches 5 and 10 anyway
    trainer.fit(module, loader(10), loader(1))
    assert module.validated_at == [(0, 5)]


def test_should_stop_before_min_epochs_keeps_training_without_extra_validation():
    module = StopAtFour()
    trainer = quiet(max_epochs=3, min_epochs=2)
    trainer.fit(module, loader(10), loader(1))
    # Lightning's _can_stop_early: a stop is honoured once min_epochs epochs are complete, so epochs 0 and 1 run
    # to their ends (validating there) and the fit stops after epoch 1.
    assert module.validated_at == [(0, 10), (1, 20)]
    assert trainer.global_step == 20
    assert trainer.current_epoch == 2


def test_a_checkpoint_in_the_stop_validation_resumes_exactly(tmp_path):
    class StopAndCheckpoint(StopAtFour):
        def on_validation_start(self):
            self.trainer.request_checkpoint(tmp_path / "mid")

    def train() -> ResumableLoader:
        return ResumableLoader(loader(10))

    whole = StopAtFour()
    quiet(max_epochs=2).fit(whole, train(), loader(1))
    quiet(max_epochs=2).fit(StopAndCheckpoint(), train(), loader(1))
    resumed = StopAtFour()
    trainer = quiet(max_epochs=2)
    trainer.fit(resumed, train(), loader(1), ckpt_path=tmp_path / "mid")
    assert resumed.validated_at == [(0, 5)]
    assert trainer.global_step == 5
    assert same_weights(resumed, whole)


class SkipLast(Boring):
    def __init__(self) -> None:
        super().__init__()
        self.validated: list[int] = []

    def on_train_batch_start(self, batch, batch_idx):
        return -1 if batch_idx == 3 else None

    def validation_step(self, batch, batch_idx):
        self.validated.append(self.current_epoch)


def test_minus_one_on_a_batch_validation_would_follow_skips_that_validation():
    """Lightning raises StopIteration in advance, before on_advance_end (where validation runs)."""
    module = SkipLast()
    trainer = quiet(max_epochs=2)
    trainer.fit(module, loader(4), loader(1))
    assert module.validated == []
    assert trainer.global_step == 6
