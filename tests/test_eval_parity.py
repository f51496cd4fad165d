"""Evaluation parity with Lightning 2: model modes around evaluation, the sanity check, a None training batch."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

from statemachine_trainer import Callback, Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.testing import assert_resume_exact


def quiet(**flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "enable_checkpointing": False, "logger": False, "max_epochs": 1}
    return Trainer(**{**defaults, **flags})


def dataset(n: int = 16, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    return TensorDataset(x, (x.sum(1) > 0).long())


class Classifier(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5))
        self.head = nn.Linear(8, 2)
        self.batches: list[torch.Tensor] = []
        self.modes: list[tuple[str, bool, bool]] = []

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.batches.append(x.clone())
        self.modes.append(("train", self.backbone.training, self.head.training))
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        self.modes.append(("validate", self.backbone.training, self.head.training))
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y) + 0 * torch.rand(()))  # draws from the RNG

    def test_step(self, batch, batch_idx):
        self.modes.append(("test", self.backbone.training, self.head.training))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


# -- on_{stage}_model_eval / _model_train ---------------------------------------------------------------------
class FrozenBackbone(Classifier):
    def on_train_epoch_start(self):
        self.backbone.eval()  # a frozen feature extractor: its dropout stays off in training


def test_validation_gives_each_submodule_back_its_own_training_mode():
    module = FrozenBackbone()
    quiet(val_check_interval=1, num_sanity_val_steps=0).fit(module, DataLoader(dataset(8), batch_size=4),
                                                             DataLoader(dataset(4, 1), batch_size=4))
    assert module.modes == [("train", False, True), ("validate", False, False),
                            ("train", False, True), ("validate", False, False)]  # not module.train() after validation


class CustomModes(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[str] = []

    def on_validation_model_eval(self):
        self.hooks.append("on_validation_model_eval")
        self.head.eval()  # the backbone keeps its training mode: Monte-Carlo dropout

    def on_validation_model_train(self):
        self.hooks.append("on_validation_model_train")
        self.train()

    def on_test_model_eval(self):
        self.hooks.append("on_test_model_eval")
        super().on_test_model_eval()

    def on_test_model_train(self):
        self.hooks.append("on_test_model_train")


def test_overridden_model_eval_and_train_hooks_replace_the_defaults():
    module = CustomModes()
    trainer = quiet()
    trainer.validate(module, DataLoader(dataset(4), batch_size=4))
    assert module.modes == [("validate", True, False)]
    assert module.hooks == ["on_validation_model_eval", "on_validation_model_train"]
    module.train(False)
    trainer.test(module, DataLoader(dataset(4), batch_size=4))
    assert module.modes[-1] == ("test", False, False)
    assert module.hooks[-2:] == ["on_test_model_eval", "on_test_model_train"]
    assert not module.training  # the override did nothing; no default restore ran behind it


def test_predict_and_test_restore_the_modes_they_found():
    module = Classifier()
    module.backbone.eval()
    trainer = quiet()
    trainer.predict(module, DataLoader(dataset(4), batch_size=4))
    assert module.head.training and not module.backbone.training
    trainer.test(module, DataLoader(dataset(4), batch_size=4))
    assert module.modes == [("test", False, False)]
    assert module.head.training and not module.backbone.training


# -- the sanity check ------------------------------------------------------------------------------
def _fit(sanity_steps: int) -> Classifier:
    torch.manual_seed(0)  # the same initial weights in both runs
    module = Classifier()
    Trainer(max_epochs=2, seed=7, num_sanity_val_steps=sanity_steps, enable_progress_bar=False,
            enable_checkpointing=False, logger=False).fit(
        module, DataLoader(dataset(16), batch_size=4, shuffle=True), DataLoader(dataset(8, 1), batch_size=4))
    return module


def test_the_sanity_check_does_not_change_the_training_batch_order_or_dropout():
    without, with_check = _fit(0), _fit(2)
    assert len(without.batches) == len(with_check.batches) == 8
    assert all(torch.equal(a, b) for a, b in zip(without.batches, with_check.batches, strict=True))
    for a, b in zip(without.parameters(), with_check.parameters(), strict=True):
        assert torch.equal(a, b)  # the dropout masks were the same too


class SanityFlags(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def on_sanity_check_start(self, trainer, module):
        self.seen.append(("on_sanity_check_start", trainer.sanity_checking))

    def on_validation_start(self, trainer, module):
        self.seen.append(("on_validation_start", trainer.sanity_checking))

    def on_validation_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append(("on_validation_batch_start", trainer.sanity_checking))

    def on_sanity_check_end(self, trainer, module):
        self.seen.append(("on_sanity_check_end", trainer.sanity_checking))

    def on_train_start(self, trainer, module):
        self.seen.append(("on_train_start", trainer.sanity_checking))


def test_sanity_checking_is_true_from_on_sanity_check_start_to_its_end():
    flags = SanityFlags()
    module = Classifier()
    trainer = quiet(num_sanity_val_steps=1, callbacks=[flags])
    trainer.fit(module, DataLoader(dataset(4), batch_size=4), DataLoader(dataset(4, 1), batch_size=4))
    assert flags.seen == [("on_sanity_check_start", True), ("on_validation_start", True),
                          ("on_validation_batch_start", True), ("on_sanity_check_end", True),
                          ("on_train_start", False), ("on_validation_start", False),
                          ("on_validation_batch_start", False)]
    assert not trainer.sanity_checking


# -- a None training batch ------------------------------------------------------------------------------
def none_for_index_5(items):
    """A collate function that drops a batch (returns None) when it holds sample 5."""
    batch = default_collate(items)
    return None if bool((batch[2] == 5).any()) else batch


def indexed(n: int = 16) -> TensorDataset:
    base = dataset(n)
    return TensorDataset(*base.tensors, torch.arange(n))


class NoneAware(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.ends: list[tuple[object, object, int]] = []
        self.starts: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return nn.functional.cross_entropy(self(x), y)

    def on_train_batch_start(self, batch, batch_idx):
        self.starts.append(batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.ends.append((None if outputs is None else "out", None if batch is None else "batch", batch_idx))


def test_a_none_batch_is_skipped_with_a_warning_and_still_counted():
    module = NoneAware()
    trainer = quiet()
    with pytest.warns(UserWarning, match="train_dataloader yielded None"):
        trainer.fit(module, DataLoader(indexed(16), batch_size=4, collate_fn=none_for_index_5))
    assert module.starts == [0, 2, 3]  # no on_train_batch_start (nor training_step) for batch 1
    assert module.ends == [("out", "batch", 0), (None, None, 1), ("out", "batch", 2), ("out", "batch", 3)]
    assert trainer.global_step == 3


def test_a_none_batch_in_a_gan_style_manual_step_is_skipped_too():
    class Manual(NoneAware):
        automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y, _ = batch
            opt.zero_grad()
            self.manual_backward(nn.functional.cross_entropy(self(x), y))
            opt.step()

    trainer = quiet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Manual(), DataLoader(indexed(16), batch_size=4, collate_fn=none_for_index_5))
    assert trainer.global_step == 3


def _make_trainer(callbacks):
    return Trainer(max_epochs=2, callbacks=list(callbacks), enable_progress_bar=False, enable_checkpointing=False,
                   logger=False, seed=3, num_sanity_val_steps=0)


def _make_loaders():
    return (ResumableLoader(DataLoader(indexed(16), batch_size=4, shuffle=True, collate_fn=none_for_index_5),
                            seed=4),)


@pytest.mark.parametrize(("hook", "call"), [("on_train_batch_end", 2), ("on_train_batch_end", 5),
                                            ("on_train_batch_start", 4), ("on_train_epoch_end", 1)])
@pytest.mark.filterwarnings("ignore:train_dataloader yielded None")
def test_a_run_with_a_none_batch_resumes_exactly(hook, call, tmp_path):
    assert_resume_exact(NoneAware, _make_trainer, _make_loaders, hook, call, tmp_path)


def test_a_submodule_put_in_eval_mode_before_fit_stays_so_through_training_and_validation():
    module = Classifier()
    module.backbone.eval()  # e.g. a pretrained feature extractor with frozen batch-norm statistics
    with pytest.warns(UserWarning, match=r"Found 3 module\(s\) in eval mode at the start of training \(backbone"):
        quiet(max_epochs=2, num_sanity_val_steps=1).fit(module, DataLoader(dataset(8), batch_size=4),
                                                        DataLoader(dataset(4, 1), batch_size=4))
    assert {mode for mode in module.modes if mode[0] == "train"} == {("train", False, True)}
    assert not module.backbone.training and module.head.training
