"""The run's lifecycle in Lightning 2's order, ``self.trainer`` inside ``configure_optimizers``, entry points.

Lightning's expectation is copied from its own test
(``tests/tests_pytorch/models/test_hooks.py::test_trainer_model_hook_system_fit``
and ``test_trainer_datamodule_hook_system``): ``configure_callbacks,
prepare_data, Callback.setup, setup, configure_optimizers, ..., on_fit_end,
Callback.teardown, teardown``, with the data module's ``prepare_data`` before
the module's and its ``setup``/``teardown`` before the callbacks'.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader

from statemachine_trainer import Callback, ConfigError, DataModule, Trainer, TrainingModule
from statemachine_trainer.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from statemachine_trainer.data import ResumableLoader

from ._points_module import Net, points

LIFECYCLE = ("configure_callbacks", "prepare_data", "setup", "configure_optimizers", "on_fit_start", "on_fit_end",
             "teardown")


def loader(n: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(points(n, seed), batch_size=batch_size)


def quiet(tmp_path, **flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "logger": False, "enable_checkpointing": False,
                "default_root_dir": tmp_path, "max_epochs": 1, "num_sanity_val_steps": 0}
    return Trainer(**{**defaults, **flags})


# -- recorders ----------------------------------------------------------------------------------------
class RecordedNet(Net):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def configure_callbacks(self):
        self.calls.append("configure_callbacks")
        return []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")

    def configure_model(self):
        self.calls.append("configure_model")

    def configure_optimizers(self):
        self.calls.append("configure_optimizers")
        return super().configure_optimizers()

    def on_fit_start(self):
        self.calls.append("on_fit_start")

    def on_fit_end(self):
        self.calls.append("on_fit_end")

    def teardown(self, stage):
        self.calls.append(f"teardown:{stage}")


class RecordedCallback(Callback):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def setup(self, trainer, module, stage):
        self.calls.append(f"Callback.setup:{stage}")

    def on_fit_start(self, trainer, module):
        self.calls.append("Callback.on_fit_start")

    def on_fit_end(self, trainer, module):
        self.calls.append("Callback.on_fit_end")

    def teardown(self, trainer, module, stage):
        self.calls.append(f"Callback.teardown:{stage}")


class RecordedData(DataModule):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def prepare_data(self):
        self.calls.append("DataModule.prepare_data")

    def setup(self, stage):
        self.calls.append(f"DataModule.setup:{stage}")

    def train_dataloader(self):
        self.calls.append("DataModule.train_dataloader")
        return loader()

    def val_dataloader(self):
        self.calls.append("DataModule.val_dataloader")
        return loader(8, seed=1)

    def test_dataloader(self):
        self.calls.append("DataModule.test_dataloader")
        return loader(8, seed=1)

    def teardown(self, stage):
        self.calls.append(f"DataModule.teardown:{stage}")


#: Lightning 2's fit order for these hooks (its test_hooks.py expectations, with the data module's merged in
#: where its _data_connector.prepare_data and call._call_setup_hook/_call_teardown_hook put them).
LIGHTNING_FIT = ["configure_callbacks", "DataModule.prepare_data", "prepare_data", "DataModule.setup:fit",
                 "Callback.setup:fit", "setup:fit", "configure_model", "configure_optimizers", "Callback.on_fit_start",
                 "on_fit_start",
                 "DataModule.val_dataloader", "DataModule.train_dataloader", "Callback.on_fit_end", "on_fit_end",
                 "DataModule.teardown:fit", "Callback.teardown:fit", "teardown:fit"]


def _recorded_fit(tmp_path) -> list[str]:
    calls: list[str] = []
    quiet(tmp_path, callbacks=[RecordedCallback(calls)]).fit(RecordedNet(calls), datamodule=RecordedData(calls))
    return calls


def test_fit_runs_the_lifecycle_in_lightnings_order(tmp_path):
    ours = _recorded_fit(tmp_path)
    lifecycle = {"configure_callbacks", "DataModule.prepare_data", "prepare_data", "DataModule.setup:fit",
                 "Callback.setup:fit", "setup:fit", "configure_model", "configure_optimizers", "DataModule.teardown:fit",
                 "Callback.teardown:fit", "teardown:fit"}
    assert [c for c in ours if c in lifecycle] == [c for c in LIGHTNING_FIT if c in lifecycle]


def test_fit_differs_from_lightning_only_where_the_readme_says(tmp_path):
    # Two documented differences ("Differences from Lightning"): the module's on_* hook runs before the
    # callbacks' of the same name, and the dataloaders are read right after setup (checked before anything
    # trains, and ready for trainer.estimated_stepping_batches in configure_optimizers), not after on_fit_start.
    assert _recorded_fit(tmp_path) == [
        "configure_callbacks", "DataModule.prepare_data", "prepare_data", "DataModule.setup:fit",
        "Callback.setup:fit", "setup:fit", "configure_model", "DataModule.val_dataloader", "DataModule.train_dataloader",
        "configure_optimizers", "on_fit_start", "Callback.on_fit_start", "on_fit_end", "Callback.on_fit_end",
        "DataModule.teardown:fit", "Callback.teardown:fit", "teardown:fit"]


def test_callback_setup_runs_before_configure_optimizers(tmp_path):
    calls = _recorded_fit(tmp_path)
    assert calls.index("Callback.setup:fit") < calls.index("configure_optimizers")


@pytest.mark.parametrize("entry", ["validate", "test"])
def test_evaluation_runs_the_lifecycle_in_lightnings_order(tmp_path, entry):
    calls: list[str] = []
    getattr(quiet(tmp_path, callbacks=[RecordedCallback(calls)]), entry)(
        RecordedNet(calls), datamodule=RecordedData(calls), verbose=False)
    loader_name = "val_dataloader" if entry == "validate" else "test_dataloader"
    assert calls == ["configure_callbacks", "DataModule.prepare_data", "prepare_data", f"DataModule.setup:{entry}",
                     f"Callback.setup:{entry}", f"setup:{entry}", "configure_model", f"DataModule.{loader_name}",
                     f"DataModule.teardown:{entry}", f"Callback.teardown:{entry}", f"teardown:{entry}"]


def test_prepare_data_runs_once_per_entry_point(tmp_path):
    calls: list[str] = []
    trainer, module, data = quiet(tmp_path), RecordedNet(calls), RecordedData(calls)
    trainer.fit(module, datamodule=data)
    trainer.validate(module, datamodule=data, verbose=False)
    assert calls.count("prepare_data") == 2 and calls.count("DataModule.prepare_data") == 2


def test_teardown_runs_after_a_failure_and_the_error_propagates(tmp_path):
    calls: list[str] = []

    class Fails(RecordedNet):
        def training_step(self, batch, batch_idx):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        quiet(tmp_path, callbacks=[RecordedCallback(calls)]).fit(Fails(calls), datamodule=RecordedData(calls))
    assert calls[-3:] == ["DataModule.teardown:fit", "Callback.teardown:fit", "teardown:fit"]


def test_setup_can_build_layers_that_configure_optimizers_then_optimizes(tmp_path):
    built = {}

    class Lazy(TrainingModule):
        def setup(self, stage):
            self.net = nn.Linear(4, 2)  # built once the data is known, as in Lightning's docs
            built["weight"] = self.net.weight.detach().clone()

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Lazy()
    quiet(tmp_path).fit(module, loader())
    assert module.global_step == 4 and not torch.equal(module.net.weight, built["weight"])  # it was optimized


def test_configure_model_builds_layers_on_the_runs_device_that_are_then_optimized(tmp_path):
    seen = {}

    class Built(TrainingModule):
        def configure_model(self):
            if hasattr(self, "net"):  # called at every entry point: idempotent, as Lightning asks
                return
            self.net = nn.Linear(4, 2)
            seen["device"] = self.net.weight.device
            seen["initial"] = self.net.weight.detach().clone()

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module, trainer = Built(), quiet(tmp_path)
    trainer.fit(module, loader())
    assert seen["device"] == trainer.device and not torch.equal(module.net.weight, seen["initial"])


# -- configure_callbacks ------------------------------------------------------------------------------
class Marker(Callback):
    pass


class StricterStopping(EarlyStopping):
    pass


def test_configure_callbacks_replaces_trainer_callbacks_of_the_same_type_and_keeps_checkpoints_last(tmp_path):
    from_module = [StricterStopping(monitor="val_loss", patience=1), ModelCheckpoint(dirpath=tmp_path / "m")]

    class WithCallbacks(Net):
        def configure_callbacks(self):
            return from_module

    marker, stopping = Marker(), EarlyStopping(monitor="val_loss")
    trainer = quiet(tmp_path, callbacks=[stopping, marker], enable_checkpointing=True)
    trainer.fit(WithCallbacks(), loader(), loader(8, seed=1))
    kinds = [type(cb) for cb in trainer.callbacks]
    assert stopping not in trainer.callbacks and marker in trainer.callbacks  # replaced by its subclass; kept
    assert kinds[-1] is ModelCheckpoint and kinds.count(ModelCheckpoint) == 1  # the module's replaced the default
    assert trainer.callbacks[-1] is from_module[1] and trainer.checkpoint_callback is from_module[1]
    assert from_module[0] in trainer.callbacks


def test_configure_callbacks_returning_one_callback_adds_it(tmp_path):
    marker = Marker()

    class One(Net):
        def configure_callbacks(self):
            return marker

    trainer = quiet(tmp_path)
    trainer.fit(One(), loader())
    assert marker in trainer.callbacks


def test_configure_callbacks_returning_something_else_is_refused(tmp_path):
    class Bad(Net):
        def configure_callbacks(self):
            return [ProgressBar(), "early stopping"]

    with pytest.raises(ConfigError, match=r"Bad.configure_callbacks\(\) returned str; return a Callback"):
        quiet(tmp_path).fit(Bad(), loader())


# -- self.trainer in configure_optimizers ----------------------------------------------------------------
def _stepping_batches(tmp_path, batches: int = 10, **flags) -> int | float:
    seen = {}

    class Reads(Net):
        def configure_optimizers(self):
            seen["value"] = self.trainer.estimated_stepping_batches
            return super().configure_optimizers()

    trainer = quiet(tmp_path, **{"max_epochs": 3, **flags})
    trainer.fit(Reads(), loader(batches * 4, batch_size=4))
    assert trainer.estimated_stepping_batches == seen["value"]  # the Trainer reads the same
    return seen["value"]


@pytest.mark.parametrize(("flags", "expected"), [
    ({}, 30),  # epochs * batches
    ({"accumulate_grad_batches": 3}, 12),  # ceil(10 / 3) * 3
    ({"max_steps": 7}, 7),  # capped by max_steps
    ({"max_steps": 50}, 30),  # max_steps beyond what max_epochs allows
    ({"max_epochs": None, "max_steps": 5}, 5),  # unlimited epochs: max_steps
    ({"limit_train_batches": 4}, 12),  # limits applied
    ({"limit_train_batches": 0.5}, 15),
    ({"max_epochs": 0}, 10),  # Lightning: max(max_epochs, 1)
])
def test_estimated_stepping_batches_follows_lightnings_rule(tmp_path, flags, expected):
    assert _stepping_batches(tmp_path, **flags) == expected


def test_estimated_stepping_batches_is_infinite_without_limits():
    trainer = Trainer(max_epochs=-1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    assert trainer.estimated_stepping_batches == math.inf


def test_one_cycle_lr_sized_by_estimated_stepping_batches_runs_to_its_end(tmp_path):
    class OneCycle(Net):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            total = self.trainer.estimated_stepping_batches
            cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": cycle, "interval": "step"}}

    module = OneCycle()
    trainer = quiet(tmp_path, max_epochs=2, accumulate_grad_batches=2)
    trainer.fit(module, loader(40, batch_size=4))  # OneCycleLR raises if stepped past total_steps
    assert trainer.global_step == 10 == trainer.lr_scheduler_configs[0].scheduler.last_epoch


def test_the_run_is_readable_in_configure_optimizers(tmp_path):
    seen = {}

    class Reads(Net):
        def configure_optimizers(self):
            trainer = self.trainer
            seen.update(log_dir=trainer.log_dir, checkpoint=trainer.checkpoint_callback,
                        checkpoints=trainer.checkpoint_callbacks, datamodule=trainer.datamodule,
                        epoch=trainer.current_epoch, last=trainer.is_last_batch)
            return super().configure_optimizers()

    trainer = Trainer(max_epochs=1, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(Reads(), loader())
    assert seen["log_dir"] == str(tmp_path / "logs" / "version_0") == trainer.log_dir
    assert isinstance(seen["checkpoint"], ModelCheckpoint) and seen["checkpoints"] == [seen["checkpoint"]]
    assert trainer.checkpoint_callback is seen["checkpoint"]
    assert seen["datamodule"] is None and seen["epoch"] == 0 and seen["last"] is False


def test_log_dir_without_logger_is_default_root_dir(tmp_path):
    assert quiet(tmp_path).log_dir == str(tmp_path)


def test_is_last_batch_is_true_on_each_epochs_last_batch(tmp_path):
    flags: list[tuple[int, bool]] = []

    class Reads(Net):
        def training_step(self, batch, batch_idx):
            flags.append((batch_idx, self.trainer.is_last_batch))
            return super().training_step(batch, batch_idx)

    quiet(tmp_path, max_epochs=2).fit(Reads(), loader(12, batch_size=4))
    assert flags == [(0, False), (1, False), (2, True)] * 2


# -- entry points ---------------------------------------------------------------------------------------
def test_fit_without_a_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.fit\(\) needs a model"):
        quiet(tmp_path).fit(train_dataloaders=loader())


def test_test_without_a_model_before_any_fit_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.test\(\) was given no model and this trainer has run none"):
        quiet(tmp_path).test(dataloaders=loader())


@pytest.mark.parametrize("ckpt_path", ["best", "last", None])
def test_test_without_a_model_after_fit_uses_the_fitted_model_from_its_checkpoint(tmp_path, ckpt_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_last=True)
    trainer = quiet(tmp_path, max_epochs=3, callbacks=[checkpoint])
    module = Net()
    trainer.fit(module, loader(), loader(8, seed=1))
    with torch.no_grad():
        module.net.weight.zero_()  # what the test runs on must come from the checkpoint, not these weights
    if ckpt_path is None:
        with pytest.warns(UserWarning, match="without a model: the model of this trainer's last run"):
            (result,) = trainer.test(dataloaders=loader(8, seed=1), verbose=False)
    else:
        (result,) = trainer.test(dataloaders=loader(8, seed=1), ckpt_path=ckpt_path, verbose=False)
    assert trainer.module is module and module.net.weight.abs().sum() > 0
    expected = checkpoint.best_model_score if ckpt_path != "last" else None
    if expected is not None:
        assert result["test_loss"] == pytest.approx(expected)  # same data, best weights: the monitored value


def test_test_without_model_or_data_after_a_datamodule_fit_uses_that_datamodule(tmp_path):
    calls: list[str] = []
    data = RecordedData(calls)
    trainer = quiet(tmp_path, enable_checkpointing=True)
    trainer.fit(Net(), datamodule=data)
    with pytest.warns(UserWarning, match="model of this trainer's last run"):
        (result,) = trainer.test(verbose=False)
    assert "test_loss" in result and calls[-2:] == ["DataModule.test_dataloader", "DataModule.teardown:test"]


def test_predict_return_predictions(tmp_path):
    trainer = quiet(tmp_path)
    assert len(trainer.predict(Net(), loader(8, batch_size=4))) == 2
    assert trainer.predict(Net(), loader(8, batch_size=4), return_predictions=False) is None


def test_validate_prints_a_results_table_when_verbose(tmp_path, capsys):
    quiet(tmp_path).validate(Net(), loader(8))
    out = capsys.readouterr().out
    assert "Validate metric" in out and "val_loss" in out
    quiet(tmp_path).validate(Net(), loader(8), verbose=False)
    assert capsys.readouterr().out == ""


# -- seeding ----------------------------------------------------------------------------------------------
SEEDED_SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset
    from statemachine_trainer import Trainer, TrainingModule

    torch.manual_seed(int(sys.argv[1]))  # whatever ran before: a different global RNG state per process

    class Net(TrainingModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = Trainer(max_epochs=2, seed=0, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    model = Net()  # built after the Trainer: seeded by it
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    sampler_seed = int(torch.empty((), dtype=torch.int64).random_())  # a sampler seeded from the global RNG
    generator = torch.Generator().manual_seed(sampler_seed)
    trainer.fit(model, DataLoader(data, batch_size=8, sampler=RandomSampler(data, generator=generator)))
    print(repr(sum(float(p.double().sum()) for p in model.parameters())))
''')


def test_two_runs_of_one_script_with_trainer_seed_end_with_identical_weights(tmp_path):
    script = tmp_path / "seeded.py"
    script.write_text(SEEDED_SCRIPT)
    outputs = [subprocess.run([sys.executable, str(script), str(noise)], capture_output=True, text=True,
                              timeout=120, check=True).stdout for noise in (1, 2)]
    assert outputs[0] == outputs[1] and outputs[0].strip()


# -- under strategy="ddp": prepare_data once per machine --------------------------------------------------
def test_under_ddp_prepare_data_runs_on_local_rank_zero_and_setup_on_every_rank(tmp_path):
    script = Path(__file__).parent / "_ddp_datamodule.py"
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = sorted((tmp_path / "calls.txt").read_text().splitlines())
    assert calls == sorted([
        "DataModule.prepare_data rank=0", "prepare_data rank=0",
        "DataModule.setup:fit rank=0", "DataModule.setup:fit rank=1",
        "configure_optimizers steps=4 rank=0", "configure_optimizers steps=4 rank=1",  # 40 samples / 2 ranks / 5
        "DataModule.teardown:fit rank=0", "DataModule.teardown:fit rank=1"])


def test_best_names_the_fits_checkpoint_even_when_configure_callbacks_returns_a_fresh_one(tmp_path):
    class OwnCheckpoint(Net):
        def configure_callbacks(self):
            return ModelCheckpoint(dirpath=tmp_path / "own", monitor="val_loss")

    trainer = quiet(tmp_path, max_epochs=2)
    trainer.fit(OwnCheckpoint(), loader(), loader(8, seed=1))
    best = trainer.checkpoint_callback.best_model_path
    assert best.startswith(str(tmp_path / "own"))
    (result,) = trainer.test(ckpt_path="best", dataloaders=loader(8, seed=1), verbose=False)  # resolved first
    assert "test_loss" in result


def test_latest_searches_the_modules_own_checkpoint_directory(tmp_path):
    class OwnCheckpoint(Net):
        def configure_callbacks(self):
            return ModelCheckpoint(dirpath=tmp_path / "own", every_n_train_steps=2, save_top_k=-1)

    quiet(tmp_path).fit(OwnCheckpoint(), ResumableLoader(loader()))
    trainer = quiet(tmp_path, max_epochs=2)
    trainer.fit(OwnCheckpoint(), ResumableLoader(loader()), ckpt_path="latest")  # as a new process would
    assert trainer.global_step == 8


# -- the merge rule, for any lists ------------------------------------------------------------------------
class Other(Callback):
    pass


class SubMarker(Marker):
    pass


CALLBACK_TYPES = (Callback, Marker, SubMarker, Other, ModelCheckpoint)


@settings(max_examples=200, deadline=None)
@given(trainer_types=st.lists(st.sampled_from(CALLBACK_TYPES), max_size=6),
       module_types=st.lists(st.sampled_from(CALLBACK_TYPES), max_size=4))
def test_merged_callbacks_follow_lightnings_rule_for_any_lists(trainer_types, module_types):
    from statemachine_trainer._lifecycle import merge_callbacks

    # The Trainer's own list has its ModelCheckpoints last already (default_callbacks puts them there).
    trainer_cbs = sorted((cls() for cls in trainer_types), key=lambda cb: isinstance(cb, ModelCheckpoint))
    module_cbs = [cls() for cls in module_types]

    class Configures(Net):
        def configure_callbacks(self):
            return module_cbs

    merged = merge_callbacks(trainer_cbs, Configures())
    assert all(cb in merged for cb in module_cbs)  # every returned callback is used
    for cb in trainer_cbs:  # a trainer callback stays iff no returned one is an instance of its (non-base) class
        replaced = type(cb) is not Callback and any(isinstance(new, type(cb)) for new in module_cbs)
        assert (cb in merged) != replaced
    checkpoints = [isinstance(cb, ModelCheckpoint) for cb in merged]
    assert checkpoints == sorted(checkpoints)  # ModelCheckpoints last
    others = [cb for cb in merged if not isinstance(cb, ModelCheckpoint)]
    kept = [cb for cb in trainer_cbs if cb in merged and not isinstance(cb, ModelCheckpoint)]
    assert others == kept + [cb for cb in module_cbs if not isinstance(cb, ModelCheckpoint)]  # order kept
