"""Several validation/test/predict dataloaders, as Lightning 2 runs them ("sequential" CombinedLoader mode)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, ConfigError, Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.testing import assert_resume_exact


def quiet(**flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "enable_checkpointing": False, "logger": False, "max_epochs": 1}
    return Trainer(**{**defaults, **flags})


def data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    return TensorDataset(x, (x.sum(1) > 0).long())


def loader(n: int, seed: int, batch_size: int = 4) -> DataLoader:
    return DataLoader(data(n, seed), batch_size=batch_size)


class TwoLoaders(TrainingModule):
    """Records (dataloader_idx, batch_idx) of every step and batch hook; logs one value per dataloader."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.seen: list[tuple[str, int, int]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(("validation_step", dataloader_idx, batch_idx))
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(("test_step", dataloader_idx, batch_idx))
        self.log("test_size", float(len(batch[0])), reduce_fx="sum")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(("predict_step", dataloader_idx, batch_idx))
        return torch.full((len(batch[0]),), float(dataloader_idx))

    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(("on_validation_batch_start", dataloader_idx, batch_idx))

    def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self.seen.append(("on_validation_batch_end", dataloader_idx, batch_idx))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_validate_runs_each_dataloader_in_turn_with_its_own_batch_idx():
    module = TwoLoaders()
    results = quiet().validate(module, [loader(8, 0), loader(12, 1)])
    steps = [(idx, b) for name, idx, b in module.seen if name == "validation_step"]
    assert steps == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert [name for name, _, _ in module.seen[:3]] == ["on_validation_batch_start", "validation_step",
                                                         "on_validation_batch_end"]
    assert len(results) == 2
    assert set(results[0]) == {"val_loss/dataloader_idx_0"}
    assert set(results[1]) == {"val_loss/dataloader_idx_1"}


def test_each_dataloaders_value_is_its_own_mean():
    module = TwoLoaders()
    a, b = loader(8, 0), loader(12, 1)
    results = quiet().validate(module, {"first": a, "second": b})  # a dict: dataloader_idx is the position
    with torch.no_grad():
        expected = [float(nn.functional.cross_entropy(module.net(ds.tensors[0]), ds.tensors[1]))
                    for ds in (a.dataset, b.dataset)]
    assert results[0]["val_loss/dataloader_idx_0"] == pytest.approx(expected[0], rel=1e-5)
    assert results[1]["val_loss/dataloader_idx_1"] == pytest.approx(expected[1], rel=1e-5)


class Shared(TwoLoaders):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("n", float(len(batch[0])), reduce_fx="sum", add_dataloader_idx=False)
        self.log("per_loader", float(len(batch[0])), reduce_fx="sum")


def test_add_dataloader_idx_false_logs_one_value_over_every_dataloader():
    results = quiet().validate(Shared(), [loader(8, 0), loader(12, 1)])
    assert results[0]["n"] == results[1]["n"] == 20.0  # one sum over both loaders, in each dict (Lightning)
    assert results[0]["per_loader/dataloader_idx_0"] == 8.0
    assert results[1]["per_loader/dataloader_idx_1"] == 12.0
    assert "per_loader/dataloader_idx_1" not in results[0]


def test_one_dataloader_keeps_plain_names_and_no_dataloader_idx_argument():
    module = TwoLoaders()
    results = quiet().validate(module, loader(8, 0))
    assert set(results[0]) == {"val_loss"}
    assert all(idx == 0 for _, idx, _ in module.seen)  # the default: the argument was not passed


def test_test_and_predict_take_several_dataloaders():
    module = TwoLoaders()
    trainer = quiet()
    results = trainer.test(module, [loader(8, 0), loader(4, 1)])
    assert results == [{"test_size/dataloader_idx_0": 8.0}, {"test_size/dataloader_idx_1": 4.0}]
    predictions = trainer.predict(module, [loader(8, 0), loader(4, 1)])
    assert len(predictions) == 2 and len(predictions[0]) == 2 and len(predictions[1]) == 1
    assert torch.equal(predictions[1][0], torch.ones(4))
    one = trainer.predict(module, loader(8, 0))
    assert len(one) == 2 and isinstance(one[0], torch.Tensor)  # one dataloader: a flat list, as in Lightning


class NoIdx(TwoLoaders):
    def validation_step(self, batch, batch_idx):
        self.seen.append(("validation_step", 0, batch_idx))


class RequiredIdx(TwoLoaders):
    def validation_step(self, batch, batch_idx, dataloader_idx):
        self.seen.append(("validation_step", dataloader_idx, batch_idx))


def test_a_step_that_cannot_take_dataloader_idx_is_refused_before_anything_runs():
    module = NoIdx()
    with pytest.raises(ConfigError, match=r"2 val dataloaders.*NoIdx.validation_step\(\).*dataloader_idx=0"):
        quiet().fit(module, loader(8, 2), [loader(8, 0), loader(4, 1)])
    assert module.seen == []
    with pytest.raises(ConfigError, match=r"one val dataloader.*RequiredIdx.validation_step\(\).*default"):
        quiet().validate(RequiredIdx(), loader(8, 0))


class BatchEndCallback(Callback):
    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx):
        pass


def test_a_callback_batch_hook_without_dataloader_idx_is_refused_too():
    with pytest.raises(ConfigError, match=r"BatchEndCallback.on_validation_batch_end"):
        quiet(callbacks=[BatchEndCallback()]).validate(TwoLoaders(), [loader(8, 0), loader(4, 1)])


def test_several_training_dataloaders_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="ConcatDataset"):
        quiet().fit(TwoLoaders(), [loader(8, 0), loader(4, 1)])


def test_a_list_of_batches_is_still_one_loader():
    batches = [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    results = quiet().validate(TwoLoaders(), batches)
    assert set(results[0]) == {"val_loss"}


def test_fit_validates_every_dataloader_and_the_sanity_check_takes_n_batches_of_each():
    module = TwoLoaders()
    trainer = quiet(num_sanity_val_steps=1)
    trainer.fit(module, loader(8, 2), [loader(8, 0), loader(12, 1)])
    steps = [(idx, b) for name, idx, b in module.seen if name == "validation_step"]
    assert steps[:2] == [(0, 0), (1, 0)]  # the sanity check: one batch of each
    assert steps[2:] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert {"val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1"} <= set(trainer.callback_metrics)


# -- exact resume from inside the second dataloader --------------------------------------------------
class Dropout(TwoLoaders):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(self.drop(x)), y)


def _make_trainer(callbacks):
    return Trainer(max_epochs=2, callbacks=list(callbacks), enable_progress_bar=False, enable_checkpointing=False,
                   logger=False, seed=3, num_sanity_val_steps=0)


def _make_loaders():
    val = [ResumableLoader(DataLoader(data(8, 0), batch_size=4)), ResumableLoader(DataLoader(data(12, 1), batch_size=4))]
    return ResumableLoader(DataLoader(data(16, 2), batch_size=4, shuffle=True), seed=5), val


@pytest.mark.parametrize("call", [2, 4, 9])  # last of loader 0; the middle of loader 1 (epochs 1 and 2)
def test_a_checkpoint_taken_in_the_second_dataloader_resumes_exactly(call, tmp_path):
    assert_resume_exact(Dropout, _make_trainer, _make_loaders, "on_validation_batch_end", call, tmp_path)


def test_the_checkpoint_says_which_dataloader_was_running(tmp_path):
    from statemachine_trainer.checkpoint import load_checkpoint_dir

    path = assert_resume_exact(Dropout, _make_trainer, _make_loaders, "on_validation_batch_end", 4, tmp_path)
    state, _ = load_checkpoint_dir(path)
    fields = state["loops"]
    found = [value for key, value in _walk(fields) if key == "dataloader_idx"]
    assert 1 in found


def _walk(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _walk(value)


def test_the_progress_bar_counts_the_batches_of_every_dataloader():
    import io

    from rich.console import Console

    from statemachine_trainer.callbacks import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(console=Console(file=out, force_terminal=True, width=140))
    quiet(callbacks=[bar], enable_progress_bar=True).validate(TwoLoaders(), [loader(8, 0), loader(12, 1)])
    text = out.getvalue()
    assert "5/5" in text and "3/5" in text  # one bar over both loaders: 2 + 3 batches


def test_an_outer_loop_that_switches_to_several_dataloaders_gets_the_same_clear_error():
    from statemachine_trainer.loops import EvaluationLoop

    trainer = quiet()
    module = NoIdx()
    trainer.validate(module, loader(8, 0))  # one dataloader: fine
    loop = trainer.validate_loop
    assert isinstance(loop, EvaluationLoop)
    trainer.run.use_data(validate=[loader(8, 0), loader(4, 1)])  # what a loop wrapping the others may do
    # back inside the run, as the loop wrapping the others would be (the run's state is not settable from outside)
    ended = trainer.run.state
    object.__setattr__(trainer.run, "_state", type(ended)("validate", "validate", "running", ended._stage))
    with pytest.raises(ConfigError, match="Add `dataloader_idx=0`"):
        loop.run()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 3), min_size=2, max_size=3), call=st.integers(1, 12))
def test_any_interruption_inside_several_dataloaders_resumes_exactly(sizes, call, tmp_path_factory):
    total = 2 * sum(sizes)  # validation batches over two epochs
    assume(call <= total)

    def make_loaders():
        val = [ResumableLoader(DataLoader(data(4 * n, i), batch_size=4)) for i, n in enumerate(sizes)]
        return ResumableLoader(DataLoader(data(8, 9), batch_size=4, shuffle=True), seed=5), val

    assert_resume_exact(Dropout, _make_trainer, make_loaders, "on_validation_batch_end", call,
                        tmp_path_factory.mktemp("resume"))


def test_the_default_predict_step_and_function_modules_take_several_dataloaders():
    from statemachine_trainer import FunctionModule

    net = nn.Linear(3, 2)
    module = FunctionModule(net, training_step=lambda m, b, i: m(b[0]).sum(),
                            configure_optimizers=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                            validation_step=lambda m, b, i: nn.functional.cross_entropy(m(b[0]), b[1]))
    trainer = quiet()
    predictions = trainer.predict(module, [loader(8, 0), loader(4, 1)])  # TrainingModule's default predict_step
    assert [len(p) for p in predictions] == [2, 1]
    results = trainer.validate(module, [loader(8, 0), loader(4, 1)])
    assert [set(r) for r in results] == [{"val_loss/dataloader_idx_0"}, {"val_loss/dataloader_idx_1"}]
