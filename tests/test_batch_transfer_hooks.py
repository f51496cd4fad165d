"""The batch transfer hooks: on_before_batch_transfer -> transfer_batch_to_device -> on_after_batch_transfer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.loops import EvaluationLoop, PredictionLoop, TrainingEpochLoop
from statemachine_trainer.loops._fetch import FETCH, FetchingLoop
from statemachine_trainer.testing import assert_resume_exact


def quiet(**flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "enable_checkpointing": False, "logger": False, "max_epochs": 1,
                "num_sanity_val_steps": 0}
    return Trainer(**{**defaults, **flags})


def dataset(n: int = 8, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    return TensorDataset(x, (x.sum(1) > 0).long())


def loader(n: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(dataset(n, seed), batch_size=4)


class Transfers(TrainingModule):
    """Records the transfer hooks with their arguments, and what the step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.calls: list[tuple] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.calls.append(("on_before_batch_transfer", dataloader_idx))
        x, y = batch
        return x * 0 + 1, y  # visible in the step: every input is 1

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.calls.append(("transfer_batch_to_device", str(device), dataloader_idx))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.calls.append(("on_after_batch_transfer", dataloader_idx))
        x, y = batch
        return {"x": x * 2, "y": y}  # a different batch type, too

    def on_train_batch_start(self, batch, batch_idx):
        self.calls.append(("on_train_batch_start",))

    def training_step(self, batch, batch_idx):
        self.calls.append(("training_step", float(batch["x"].sum())))
        return nn.functional.cross_entropy(self.net(batch["x"]), batch["y"])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("validation_step", float(batch["x"].sum())))

    def test_step(self, batch, batch_idx):
        self.calls.append(("test_step", float(batch["x"].sum())))

    def predict_step(self, batch, batch_idx):
        return batch["x"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_training_batches_go_through_the_three_hooks_in_lightnings_order():
    module = Transfers()
    quiet().fit(module, loader(8))
    assert module.calls[:5] == [("on_before_batch_transfer", 0), ("transfer_batch_to_device", "cpu", 0),
                                ("on_after_batch_transfer", 0), ("on_train_batch_start",),
                                ("training_step", 4 * 3 * 2.0)]  # x set to 1, then doubled: the hooks' batch


def test_every_stage_fires_them_and_evaluation_passes_the_dataloader_idx():
    module = Transfers()
    trainer = quiet()
    trainer.validate(module, [loader(4, 0), loader(4, 1)])
    assert [c for c in module.calls if c[0] == "on_after_batch_transfer"] == [("on_after_batch_transfer", 0),
                                                                               ("on_after_batch_transfer", 1)]
    assert [c for c in module.calls if c[0] == "validation_step"] == [("validation_step", 24.0)] * 2
    module.calls.clear()
    trainer.test(module, loader(4))
    assert [c[0] for c in module.calls] == ["on_before_batch_transfer", "transfer_batch_to_device",
                                            "on_after_batch_transfer", "test_step"]
    predictions = trainer.predict(module, loader(4))
    assert torch.equal(predictions[0], torch.full((4, 3), 2.0))


class CustomBatch:
    """A batch type without .to(): only an overridden transfer_batch_to_device can move it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y


class CustomTransfer(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.moved: list[str] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        return CustomBatch(*batch)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.moved.append(str(device))
        if isinstance(batch, CustomBatch):
            return CustomBatch(batch.x.to(device), batch.y.to(device))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch.x), batch.y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_an_overridden_transfer_batch_to_device_moves_a_custom_batch():
    module = CustomTransfer()
    trainer = quiet()
    trainer.fit(module, loader(8))
    assert module.moved == ["cpu", "cpu"]
    assert trainer.global_step == 2


def test_the_default_transfer_moves_nested_batches():
    module = TrainingModule()
    batch = {"a": [torch.zeros(2), (torch.ones(1), "label")], "b": 3}
    moved = module.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert torch.equal(moved["a"][0], torch.zeros(2)) and moved["a"][1][1] == "label" and moved["b"] == 3
    assert module.on_before_batch_transfer(batch, 0) is batch and module.on_after_batch_transfer(batch, 0) is batch


@pytest.mark.parametrize("loop_class", [TrainingEpochLoop, EvaluationLoop, PredictionLoop])
def test_every_fetching_loops_table_fetches_through_the_hooks(loop_class):
    assert issubclass(loop_class, FetchingLoop)
    rows = [row for row in loop_class.table.rows if "advance" in row.hooks]
    assert rows and all(row.hooks == (*FETCH, "advance") for row in rows)


def test_hooks_nobody_overrides_are_left_out_of_the_rows(monkeypatch):
    called: list[str] = []
    for name in FETCH[1:]:
        original = getattr(FetchingLoop, name)

        def counting(self, _original=original, _name=name):
            called.append(_name)
            return _original(self)
        monkeypatch.setattr(FetchingLoop, name, counting)

    class Plain(Transfers):
        on_before_batch_transfer = TrainingModule.on_before_batch_transfer
        transfer_batch_to_device = TrainingModule.transfer_batch_to_device
        on_after_batch_transfer = TrainingModule.on_after_batch_transfer

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    quiet().fit(Plain(), loader(8))
    assert called == []  # on the CPU with no override, not one call per batch
    quiet().fit(Transfers(), loader(8))
    assert called.count("on_after_batch_transfer") == 2


def _make_trainer(callbacks):
    return Trainer(max_epochs=2, callbacks=list(callbacks), enable_progress_bar=False, enable_checkpointing=False,
                   logger=False, seed=1, num_sanity_val_steps=0)


def _make_loaders():
    return (ResumableLoader(DataLoader(dataset(16), batch_size=4, shuffle=True), seed=2),
            ResumableLoader(DataLoader(dataset(8, 1), batch_size=4)))


@pytest.mark.parametrize(("hook", "call"), [("on_train_batch_start", 3), ("on_before_zero_grad", 6),
                                            ("on_validation_batch_end", 1)])
def test_a_resume_inside_a_step_transfers_the_batch_in_flight_again(hook, call, tmp_path):
    # Without the transfer on resume, the re-fetched batch would reach the step as the loader's raw tuple.
    assert_resume_exact(Transfers, _make_trainer, _make_loaders, hook, call, tmp_path)


class RandomAugment(Transfers):
    """GPU-style augmentation: noise drawn from torch's global RNG in on_after_batch_transfer."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return {"x": x + torch.randn_like(x), "y": y}

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val_x", batch["x"].sum())  # the resumed validation must log the same noisy batch


@pytest.mark.parametrize(("hook", "call"), [("on_train_batch_start", 3), ("on_train_batch_start", 6),
                                            ("on_after_backward", 5)])
def test_random_draws_in_a_transfer_hook_are_replayed_on_resume(hook, call, tmp_path):
    # A resume right after on_train_batch_start re-fetches the batch and runs the augmentation again.
    assert_resume_exact(RandomAugment, _make_trainer, _make_loaders, hook, call, tmp_path)


def test_without_an_override_nothing_is_kept_for_the_replay(tmp_path):
    from statemachine_trainer.checkpoint import load_checkpoint_dir

    class Plain(TrainingModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(3, 2)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for module, kept in ((Plain, False), (RandomAugment, True)):
        path = assert_resume_exact(module, _make_trainer, _make_loaders, "on_train_batch_start", 2,
                                   tmp_path / module.__name__)
        state, _ = load_checkpoint_dir(path)
        assert ("rng_before_transfer" in str(state["loops"])) is kept
