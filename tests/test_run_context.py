"""The run context (``Run``): what loops, callbacks and the module see of a run, and its checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, ConfigError, Trainer, TrainingModule
from statemachine_trainer._hooks import HookRelay
from statemachine_trainer._run import Run


class Tiny(TrainingModule):
    def __init__(self, optimizers: int = 1) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.count = optimizers

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(16, 3, generator=g), torch.randint(0, 2, (16,), generator=g)),
                      batch_size=4)


def quiet(**kwargs) -> Trainer:
    return Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False, **kwargs)


def test_callbacks_and_the_module_see_the_same_run_with_lightnings_names():
    seen = {}

    class Look(Callback):
        def on_train_epoch_end(self, trainer, module):
            seen["run"], seen["module_trainer"] = trainer, module.trainer
            seen["values"] = (trainer.current_epoch, trainer.global_step, trainer.max_epochs, trainer.num_training_batches)

    trainer = quiet(max_epochs=2, callbacks=[Look()])
    module = Tiny()
    trainer.fit(module, loader())
    assert isinstance(seen["run"], Run) and seen["run"] is seen["module_trainer"] is trainer.run
    assert seen["values"] == (1, 8, 2, 4)  # read at the second epoch's end: epoch 1, 8 steps so far
    assert trainer.global_step == 8 and trainer.max_epochs == 2 and trainer.config.max_epochs == 2


def test_the_run_refuses_new_attributes_and_names_the_fix():
    trainer = quiet(max_epochs=1)
    module = Tiny()
    trainer.fit(module, loader())
    run = module.trainer
    run.should_stop = True  # the one thing user code sets
    assert trainer.should_stop
    with pytest.raises(AttributeError, match=r"trainer.shuld_stop cannot be set.*should_stop = True"):
        run.shuld_stop = True
    with pytest.raises(AttributeError, match="'Run' object has no attribute 'fit_looop'"):
        run.fit_looop  # noqa: B018


def test_the_run_reads_flags_as_attributes_and_has_no_getattr_hook():
    """Flags and Lightning's names are properties: the class has no __getattr__, which on Python 3.11 would keep
    every read of the run's parts (several per step) from being cached."""
    trainer = quiet(max_epochs=3)
    module = Tiny()
    trainer.fit(module, loader())
    run = module.trainer
    assert not hasattr(type(run), "__getattr__")
    assert run.max_epochs == 3 and run.log_every_n_steps == trainer.log_every_n_steps
    assert "max_epochs" in dir(run)  # discoverable, unlike names a __getattr__ answers
    with pytest.raises(AttributeError, match="there is no tuner"):
        run.tuner  # noqa: B018
    assert not hasattr(run, "tuner")


def test_the_hook_relay_has_no_getattr_hook_and_an_unknown_hook_gets_pythons_suggestion():
    """Loops read hooks off the relay every step: with a __getattr__ on its class, Python 3.11 would cache none of
    those reads."""
    trainer = quiet(max_epochs=1)
    module = Tiny()
    trainer.fit(module, loader())
    hooks = module.trainer.hooks
    assert type(hooks) is HookRelay and not hasattr(HookRelay, "__getattr__")
    assert callable(hooks.on_train_batch_end)
    with pytest.raises(AttributeError, match="'HookRelay' object has no attribute 'on_train_bach_end'") as raised:
        hooks.on_train_bach_end  # noqa: B018
    assert raised.value.name == "on_train_bach_end"  # what Python's "Did you mean: 'on_train_batch_end'?" reads


def test_use_data_names_the_stages_and_fit_without_data_says_where_to_give_it():
    trainer = quiet(max_epochs=1)
    module = Tiny()
    trainer.fit(module, loader())
    with pytest.raises(ConfigError, match="the stages are train, validate, test, predict"):
        module.trainer.use_data(training=loader())
    with pytest.raises(ConfigError, match="No train data"):
        quiet(max_epochs=1).fit(Tiny())


def test_reset_optimizers_builds_fresh_ones_and_refuses_another_count():
    trainer = quiet(max_epochs=1)
    module = Tiny()
    trainer.fit(module, loader())
    run = module.trainer
    before = run.optimizers[0]
    run.reset_optimizers()
    assert run.optimizers[0] is not before and not run.optimizers[0].state  # fresh: no momentum buffers
    module.configure_optimizers = lambda: [torch.optim.SGD(module.parameters(), lr=0.1)] * 2
    with pytest.raises(ConfigError, match="returned 2 optimizer"):
        run.reset_optimizers()


def test_reset_parameters_is_seeded_and_leaves_the_global_stream_alone():
    trainer = quiet(max_epochs=1)
    module = Tiny()
    trainer.fit(module, loader())
    run = module.trainer
    state = torch.get_rng_state()
    run.reset_parameters(seed=3)
    first = module.net.weight.clone()
    run.reset_parameters(seed=3)
    assert torch.equal(first, module.net.weight) and torch.equal(state, torch.get_rng_state())
    run.reset_parameters(seed=4)
    assert not torch.equal(first, module.net.weight)


def test_an_outer_loop_that_brings_no_data_is_told_how():
    from statemachine_trainer import END, START, Row, Table
    from statemachine_trainer.loops import FitLoop, TrainerLoop

    class Forgetful(TrainerLoop):
        table = Table(name="Forgetful", states=(START, "TRAIN", END),
                      rows=(Row("run", START, "TRAIN"), Row("next", "TRAIN", END, hooks="train")))

        def __init__(self):
            super().__init__()
            self.fit_loop = FitLoop()

        def train(self):
            self.fit_loop.run()

    trainer = quiet(max_epochs=1)
    outer = Forgetful()
    outer.connect(fit_loop=trainer.fit_loop)
    trainer.fit_loop = outer
    with pytest.raises(ConfigError, match=r"use_data\(train=loader\)"):
        trainer.fit(Tiny())


def test_the_trainer_tears_down_the_tree_it_ran():
    from statemachine_trainer.loops import FitLoop

    torn = []

    class Tracked(FitLoop):
        def teardown(self):
            torn.append(self.context.state)  # still the run's stage: the run is torn down before it goes idle
            super().teardown()

    trainer = quiet(max_epochs=1)
    trainer.fit_loop = Tracked()
    trainer.fit(Tiny(), loader())
    assert torn == ["fit"]
