"""Bad input fails early, with a message that names the problem and the fix."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import ConfigError, ManualOptimizationError, Trainer, TrainingModule
from statemachine_trainer._refused import UnsupportedAttributeError
from statemachine_trainer.loops import GeneratorStepError

from ._recording_module import tiny_loader


def quiet(**flags) -> Trainer:
    return Trainer(**{"enable_progress_bar": False, "enable_checkpointing": False, "logger": False, **flags})


class Base(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 1), nn.Linear(3, 1)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return self.a(batch[0]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def module_with(**methods) -> Base:
    return type("Custom", (Base,), methods)()


@pytest.mark.parametrize("returned, fragment", [
    (lambda self: "adam", "configure_optimizers() returned str"),
    (lambda self: [torch.optim.SGD(self.parameters(), 0.1), 3], "not supported"),
    (lambda self: {"opt": torch.optim.SGD(self.parameters(), 0.1)}, "needs 'optimizer'"),
    (lambda self: {"optimizer": torch.optim.SGD(self.parameters(), 0.1),
                   "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(
                       torch.optim.SGD(self.parameters(), 0.1), 1), "interval": "batch"}}, "'interval' is 'batch'"),
    (lambda self: {"optimizer": (opt := torch.optim.SGD(self.parameters(), 0.1)),
                   "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}, "ReduceLROnPlateau needs a metric"),
])
def test_unsupported_configure_optimizers_fails_before_training(returned, fragment):
    module = module_with(configure_optimizers=returned)
    with pytest.raises(ConfigError, match="configure_optimizers|interval|ReduceLROnPlateau") as info:
        quiet(max_epochs=1).fit(module, tiny_loader())
    assert fragment in str(info.value)
    assert module.steps == 0


def two_optimizers(self):
    return [torch.optim.SGD(self.a.parameters(), 0.1), torch.optim.SGD(self.b.parameters(), 0.1)]


def test_several_optimizers_need_optimizer_idx_or_a_generator():
    module = module_with(configure_optimizers=two_optimizers)
    with pytest.raises(ConfigError, match="optimizer_idx.*or be a generator"):
        quiet(max_epochs=1).fit(module, tiny_loader())
    assert module.steps == 0


def yields(count):
    def training_step(self, batch, batch_idx):
        for _ in range(count):
            yield self.a(batch[0]).mean() + self.b(batch[0]).mean()
    return training_step


@pytest.mark.parametrize("count, fragment", [(1, "yielded 1 loss(es), but there are 2 optimizers"),
                                             (3, "yielded more losses than there are optimizers")])
def test_generator_yielding_the_wrong_number_of_losses(count, fragment):
    module = module_with(configure_optimizers=two_optimizers, training_step=yields(count))
    with pytest.raises(GeneratorStepError) as info:
        quiet(max_epochs=1).fit(module, tiny_loader())
    assert fragment in str(info.value)


@pytest.mark.parametrize("call", [
    lambda self, loss: self.manual_backward(loss),
    lambda self, loss: self.no_backward_sync(),
])
def test_manual_optimization_calls_in_automatic_mode(call):
    def training_step(self, batch, batch_idx):
        loss = self.a(batch[0]).mean()
        call(self, loss)
        return loss

    with pytest.raises(ManualOptimizationError, match="automatic_optimization = False"):
        quiet(max_epochs=1).fit(module_with(training_step=training_step), tiny_loader())


def test_manual_mode_rejects_automatic_only_flags():
    module = module_with(automatic_optimization=False)
    with pytest.raises(ConfigError, match="accumulate_grad_batches and gradient_clip_val"):
        quiet(max_epochs=1, accumulate_grad_batches=2).fit(module, tiny_loader())


def test_a_monitor_key_that_is_never_logged():
    def configure(self):
        opt = torch.optim.SGD(self.parameters(), 0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_los"}}

    def training_step(self, batch, batch_idx):
        loss = self.a(batch[0]).mean()
        self.log("val_loss", loss)
        return loss

    module = module_with(configure_optimizers=configure, training_step=training_step)
    with pytest.raises(ConfigError, match=r"monitors 'val_los', but no value named 'val_los' was logged "
                                          r"\(logged: val_loss\)"):
        quiet(max_epochs=1).fit(module, tiny_loader())


def test_an_empty_dataloader():
    empty = DataLoader(TensorDataset(torch.zeros(0, 3)), batch_size=4)
    module = Base()
    with pytest.raises(ConfigError, match="train dataloader is empty"):
        quiet(max_epochs=1).fit(module, empty)
    assert module.steps == 0


def test_a_plain_module_points_to_function_module():
    with pytest.raises(ConfigError, match="FunctionModule"):
        quiet().fit(nn.Linear(3, 1), tiny_loader())


def test_missing_training_step_and_data():
    class NoStep(TrainingModule):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), 0.1)

    with pytest.raises(ConfigError, match="training_step.*not defined"):
        quiet().fit(NoStep(), tiny_loader())
    with pytest.raises(ConfigError, match="No train data"):
        quiet().fit(Base())


def test_validation_data_without_validation_step():
    with pytest.raises(ConfigError, match="defines no validation_step"):
        quiet().fit(Base(), tiny_loader(), tiny_loader())


@pytest.mark.parametrize("flags, fragment", [
    ({"max_epochs": -2}, "max_epochs must be an int >= -1"),
    ({"accumulate_grad_batches": 0}, "accumulate_grad_batches must be an int >= 1"),
    ({"gradient_clip_algorithm": "max"}, "use 'norm' or 'value'"),
    ({"precision": "64"}, "precision='64' is not supported"),
    ({"precision": "16-mixed", "accelerator": "cpu"}, "needs a CUDA device"),
    ({"accelerator": "tpu"}, "use 'cpu', 'cuda' or 'auto'"),
    ({"callbacks": [object()]}, "must be Callback instances"),
    ({"logger": "csv"}, "logger must be True, False, a Logger"),
])
def test_bad_flags_fail_at_construction(flags, fragment):
    with pytest.raises(ConfigError) as info:
        Trainer(**flags)
    assert fragment in str(info.value)


def test_bad_log_calls_name_the_key():
    def training_step(self, batch, batch_idx):
        self.log("vector", batch[0][:, 0])
        return self.a(batch[0]).mean()

    with pytest.raises(ValueError, match=r"self.log\('vector'\) got a tensor of shape"):
        quiet(max_epochs=1).fit(module_with(training_step=training_step), tiny_loader())


@pytest.mark.parametrize(("flags", "fragment"), [
    ({"devices": 2}, "devices=2 needs strategy='ddp'"),
    ({"strategy": "fsdp_cpu_offload"}, "strategy='fsdp_cpu_offload': use 'auto'"),
    ({"strategy": "fsdp", "devices": 0}, "devices=0 must be an int >= 1"),
    ({"strategy": "ddp", "devices": 0}, "devices=0 must be an int >= 1"),
])
def test_bad_strategy_flags_fail_at_construction(flags, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Trainer(**flags)


# -- Lightning flags and attributes this Trainer does not have ------------------------------------------
def _refused_flags():
    from statemachine_trainer._refused import FLAG_ADVICE

    return sorted(FLAG_ADVICE.items())


@pytest.mark.parametrize("flag, advice", _refused_flags())
def test_a_lightning_flag_we_lack_is_refused_with_its_replacement(flag, advice):
    with pytest.raises(ConfigError) as info:
        Trainer(**{flag: 1})
    message = str(info.value)
    assert f"Trainer({flag}=...)" in message and advice in message


def test_resume_from_checkpoint_points_to_fit_ckpt_path():
    with pytest.raises(ConfigError, match=re.escape("trainer.fit(module, ckpt_path=...)")):
        Trainer(resume_from_checkpoint="last.ckpt")


@pytest.mark.parametrize("typo, meant", [("max_epoch", "max_epochs"), ("limit_val_batch", "limit_val_batches"),
                                         ("gradient_clip", "gradient_clip_val"), ("precison", "precision")])
def test_a_misspelt_flag_suggests_the_right_one(typo, meant):
    with pytest.raises(ConfigError, match=re.escape(f"unknown flag {typo!r}. Did you mean {meant!r}?")):
        Trainer(**{typo: 1})


def test_an_unknown_flag_without_a_near_name_still_gets_our_error():
    with pytest.raises(ConfigError, match="unknown flag 'zzz_qqq'.*Trainer flags"):
        Trainer(zzz_qqq=1)


@pytest.mark.parametrize("name, advice", [("received_sigterm", "PREEMPTED_EXIT_CODE"), ("accelerator", "trainer.device"),
                                          ("tuner", "there is no tuner"), ("gpus", "devices=N")])
def test_reading_a_lightning_attribute_we_lack_names_the_replacement(name, advice):
    with pytest.raises(UnsupportedAttributeError, match=re.escape(advice)):
        getattr(quiet(), name)
    assert not hasattr(quiet(), name)  # still an AttributeError: hasattr/getattr(default) keep working


def test_inside_a_run_too_a_lightning_attribute_names_the_replacement():
    seen = {}

    class Reads(Base):
        def training_step(self, batch, batch_idx):
            seen["ranks"] = (self.trainer.global_rank, self.trainer.local_rank, self.trainer.node_rank,
                             self.trainer.world_size, self.trainer.num_devices)
            seen["module"] = self.trainer.lightning_module
            with pytest.raises(UnsupportedAttributeError, match="there is no tuner"):
                self.trainer.tuner  # noqa: B018
            return super().training_step(batch, batch_idx)

    module = Reads()
    trainer = quiet(max_epochs=1)
    trainer.fit(module, tiny_loader())
    assert seen == {"ranks": (0, 0, 0, 1, 1), "module": module}
    assert trainer.lightning_module is module and trainer.global_rank == 0 and trainer.world_size == 1


def test_a_misspelt_attribute_suggests_the_right_one():
    with pytest.raises(AttributeError, match="Did you mean 'global_step'"):
        quiet().global_stp  # noqa: B018


@pytest.mark.parametrize("flag, value, fragment", [("strategy", "ddp_spawn", "use strategy='ddp' (our launcher"),
                                                   ("strategy", "deepspeed", "DeepSpeed is not supported"),
                                                   ("accelerator", "mps", "MPS is not supported"),
                                                   ("accelerator", "tpu", "TPUs are not supported")])
def test_a_lightning_value_we_lack_names_what_to_pass(flag, value, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Trainer(**{flag: value})


def test_a_time_based_val_check_interval_is_refused_at_construction():
    with pytest.raises(ConfigError, match="time-based interval is not supported"):
        Trainer(val_check_interval="00:00:10:00")


def test_check_val_every_n_epoch_none_needs_an_int_interval():
    """check_val_every_n_epoch=None counts batches across epochs, so a fractional val_check_interval means
    nothing: refused at construction (Lightning: MisconfigurationException); an int or the default is fine."""
    with pytest.raises(ConfigError, match=r"val_check_interval=0\.5 is a fraction of an epoch"):
        Trainer(check_val_every_n_epoch=None, val_check_interval=0.5)
    assert Trainer(check_val_every_n_epoch=None, val_check_interval=7).check_val_every_n_epoch is None
    with pytest.raises(ConfigError, match="check_val_every_n_epoch must be an int >= 1"):
        Trainer(check_val_every_n_epoch=0)
