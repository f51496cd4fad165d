"""The module's step hooks (``backward``, ``optimizer_step``, ``optimizer_zero_grad``,
``configure_gradient_clipping``), ``training_step(batch)`` without ``batch_idx``, and the public
``TrainingOptimizer``.

Hook orders are recorded and compared with Lightning 2's own expectation
(``tests/tests_pytorch/models/test_hooks.py``: ``_auto_train_batch`` and
``_manual_train_batch``, which record a hook when it returns).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import (
    ConfigError,
    OptimizerClosureError,
    StepOutputError,
    Trainer,
    TrainingModule,
    TrainingOptimizer,
)
from statemachine_trainer._hooks import HOOK_NAMES
from statemachine_trainer.loops import GeneratorStepError


def quiet(**flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "enable_checkpointing": False, "logger": False,
                "num_sanity_val_steps": 0, "seed": 0, "max_epochs": 1}
    return Trainer(**{**defaults, **flags})


def loader(batches: int = 3, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch_size, 4, generator=g)
    return DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=batch_size)


class Net(TrainingModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 2)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


# -- hook order with every step hook overridden, against Lightning's ---------------------------------
class Recorded(Net):
    """Records each hook when it returns, as Lightning's HookedModel does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.calls.append("training_step")
        return loss

    def backward(self, loss, *args, **kwargs):
        super().backward(loss, *args, **kwargs)
        self.calls.append("backward")

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.calls.append("optimizer_step")

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        super().optimizer_zero_grad(epoch, batch_idx, optimizer)
        self.calls.append("optimizer_zero_grad")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.calls.append("configure_gradient_clipping")

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.calls.append("clip_gradients")


def _recorder(name: str):
    def hook(self, *args):
        self.calls.append(name)
    return hook


for _name in ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
              "on_before_optimizer_step", "on_before_zero_grad"):
    setattr(Recorded, _name, _recorder(_name))

#: Lightning's _auto_train_batch for one batch (module hooks; transfer hooks and forward left out).
LIGHTNING_AUTOMATIC = ["on_train_batch_start", "training_step", "on_before_zero_grad", "optimizer_zero_grad",
                       "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step",
                       "clip_gradients", "configure_gradient_clipping", "optimizer_step", "on_train_batch_end"]


def our_zero_grad_after_the_step(lightning: list[str]) -> list[str]:
    """Our documented difference: the gradients are zeroed right after the step, not before the next backward."""
    pair = ["on_before_zero_grad", "optimizer_zero_grad"]
    order = [name for name in lightning if name not in pair]
    at = order.index("optimizer_step") + 1
    return order[:at] + pair + order[at:]


def test_overridden_step_hooks_run_in_lightnings_order():
    module = Recorded()
    quiet().fit(module, loader(2))
    assert module.calls == our_zero_grad_after_the_step(LIGHTNING_AUTOMATIC) * 2


def test_the_order_is_the_same_when_only_some_hooks_are_overridden():
    class OnlyClipping(Recorded):
        backward = TrainingModule.backward
        optimizer_step = TrainingModule.optimizer_step
        optimizer_zero_grad = TrainingModule.optimizer_zero_grad

    module = OnlyClipping()
    quiet().fit(module, loader(1))
    expected = [n for n in our_zero_grad_after_the_step(LIGHTNING_AUTOMATIC)
                if n not in ("backward", "optimizer_step", "optimizer_zero_grad")]
    assert module.calls == expected


class ManualRecorded(Recorded):
    automatic_optimization = False
    optimizer_step = TrainingModule.optimizer_step
    optimizer_zero_grad = TrainingModule.optimizer_zero_grad
    configure_gradient_clipping = TrainingModule.configure_gradient_clipping

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self.layer(x), y)

        def closure():
            self.manual_backward(loss)
            self.calls.append("closure")

        opt.step(closure=closure)
        self.calls.append("training_step")
        return loss


#: Lightning's _manual_train_batch for one batch (manual_backward is not a hook here, so not recorded).
LIGHTNING_MANUAL = ["on_train_batch_start", "on_before_backward", "backward", "on_after_backward", "closure",
                    "on_before_optimizer_step", "training_step", "on_train_batch_end"]


def test_manual_step_with_a_closure_runs_it_before_on_before_optimizer_step():
    module = ManualRecorded()
    quiet().fit(module, loader(2))
    assert module.calls == LIGHTNING_MANUAL * 2


# -- each hook does what an override says ------------------------------------------------------------
class Warmup(Net):
    """The learning-rate warmup recipe of Lightning's docs (LightningModule.optimizer_step), unchanged."""

    def __init__(self, learning_rate: float = 0.1, warmup: int = 4) -> None:
        super().__init__(learning_rate)
        self.save_hyperparameters()
        self.lrs: list[float] = []

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        # update params
        optimizer.step(closure=optimizer_closure)

        # manually warm up lr without a scheduler
        if self.trainer.global_step < self.hparams.warmup:
            lr_scale = min(1.0, float(self.trainer.global_step + 1) / self.hparams.warmup)
            for pg in optimizer.param_groups:
                pg["lr"] = lr_scale * self.hparams.learning_rate
        self.lrs.append(optimizer.param_groups[0]["lr"])


def plain_warmup_run(batches: int, learning_rate: float = 0.1, warmup: int = 4) -> nn.Module:
    """The same training as a hand-written PyTorch loop."""
    model = Net(learning_rate)
    opt = torch.optim.SGD(model.parameters(), lr=learning_rate)
    for step, (x, y) in enumerate(loader(batches)):
        nn.functional.cross_entropy(model.layer(x), y).backward()
        opt.step()
        opt.zero_grad()
        if step < warmup:
            for pg in opt.param_groups:
                pg["lr"] = min(1.0, (step + 1) / warmup) * learning_rate
    return model


def test_the_docs_lr_warmup_recipe_works_unchanged():
    module = Warmup()
    trainer = quiet()
    trainer.fit(module, loader(6))
    assert module.lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert trainer.global_step == 6
    expected = plain_warmup_run(6)
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), expected.parameters()))


def test_optimizer_step_gets_the_epoch_the_batch_index_and_a_training_optimizer():
    seen = []

    class Seeing(Net):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            seen.append((epoch, batch_idx, type(optimizer), optimizer.optimizer is self.trainer.optimizers[0]))
            optimizer.step(closure=optimizer_closure)

    quiet(max_epochs=2).fit(Seeing(), loader(2))
    assert seen == [(e, i, TrainingOptimizer, True) for e in (0, 1) for i in (0, 1)]


def test_an_optimizer_step_that_skips_the_step_but_runs_the_closure_trains_nothing():
    """Lightning's docs: call optimizer_closure() without optimizer.step() to skip a step."""
    class Skipping(Net):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            optimizer_closure()

        def on_before_zero_grad(self, optimizer):
            self.grads_seen = self.layer.weight.grad is not None

    module = Skipping()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = quiet()
    trainer.fit(module, loader(2))
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), before))
    assert module.grads_seen  # the closure ran training_step and backward
    assert trainer.global_step == 2  # Lightning counts one step per optimizer_step call


def test_an_optimizer_step_that_never_runs_the_closure_is_an_error():
    class Forgetful(Net):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            pass

    with pytest.raises(OptimizerClosureError, match="returned without running optimizer_closure"):
        quiet().fit(Forgetful(), loader(2))


def test_accumulation_with_an_overridden_optimizer_step_calls_it_once_per_window():
    calls = []

    class Counting(Net):
        def training_step(self, batch, batch_idx):
            calls.append(("training_step", batch_idx))
            return super().training_step(batch, batch_idx)

        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            optimizer.step(closure=optimizer_closure)
            calls.append(("optimizer_step", batch_idx))

    quiet(accumulate_grad_batches=2).fit(Counting(), loader(4))
    assert calls == [("training_step", 0), ("training_step", 1), ("optimizer_step", 1),
                     ("training_step", 2), ("training_step", 3), ("optimizer_step", 3)]


def test_an_overridden_backward_is_used_by_the_loop_and_by_manual_backward():
    class Doubled(Net):
        def backward(self, loss, *args, **kwargs):
            (2 * loss).backward(*args, **kwargs)

        def on_after_backward(self):
            self.grad = self.layer.weight.grad.clone()

    class Plain(Net):
        def on_after_backward(self):
            self.grad = self.layer.weight.grad.clone()

    doubled, plain = Doubled(), Plain()
    quiet(max_steps=1).fit(doubled, loader(1))
    quiet(max_steps=1).fit(plain, loader(1))
    assert torch.allclose(doubled.grad, 2 * plain.grad)

    class ManualDoubled(Doubled):
        automatic_optimization = False

        def training_step(self, batch, batch_idx):
            self.manual_backward(Net.training_step(self, batch, batch_idx))

    manual = ManualDoubled()
    quiet(max_steps=1).fit(manual, loader(1))
    assert torch.allclose(manual.grad, 2 * plain.grad)


def test_a_loss_goes_straight_to_autograd_only_when_nothing_stands_between():
    """``plain_backward``, resolved once: no gate, no overridden ``backward``, no scaler; anything else goes the
    long way (``run_backward``), which the test above and the DDP tests hold to their behaviour."""
    class Doubled(Net):
        def backward(self, loss, *args, **kwargs):
            (2 * loss).backward(*args, **kwargs)

    plain, doubled = quiet(max_steps=1), quiet(max_steps=1)
    plain.fit(Net(), loader(1))
    doubled.fit(Doubled(), loader(1))
    optimization = plain.run.optimization
    assert optimization.plain_backward and not doubled.run.optimization.plain_backward
    optimization.gate = lambda loss: loss  # a strategy's gate (DDP's, with several backwards a step)
    assert not optimization.plain_backward
    seen = []
    optimization.gate = lambda loss: seen.append(loss) or loss
    optimization.backward_loss(optimization.module.layer(torch.ones(1, 4)).sum())
    assert len(seen) == 1  # the gated loss went through the gate


def test_an_overridden_optimizer_zero_grad_replaces_the_zeroing():
    class KeepZeros(Net):
        def __init__(self):
            super().__init__()
            self.seen = []

        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            self.seen.append((epoch, batch_idx, optimizer is self.trainer.optimizers[0]))
            optimizer.zero_grad(set_to_none=False)

        def on_train_batch_start(self, batch, batch_idx):
            self.grad_at_start = self.layer.weight.grad

    module = KeepZeros()
    quiet().fit(module, loader(2))
    assert module.seen == [(0, 0, True), (0, 1, True)]
    assert torch.equal(module.grad_at_start, torch.zeros_like(module.layer.weight))  # kept, zeroed: not None

    default = Net()
    default.on_train_batch_start = lambda batch, batch_idx: setattr(default, "grad_at_start", default.layer.weight.grad)
    quiet().fit(default, loader(2))
    assert default.grad_at_start is None


def test_an_overridden_configure_gradient_clipping_is_called_with_the_flags_even_without_clipping():
    class Clipping(Net):
        # keyword-only: Lightning passes the flags by keyword, so such an override works there and here
        def configure_gradient_clipping(self, optimizer, *, gradient_clip_val, gradient_clip_algorithm):
            self.args = (optimizer is self.trainer.optimizers[0], gradient_clip_val, gradient_clip_algorithm)
            self.clip_gradients(optimizer, gradient_clip_val=1e-4, gradient_clip_algorithm="value")

        def on_before_zero_grad(self, optimizer):
            self.max_grad = self.layer.weight.grad.abs().max().item()

    module = Clipping()
    quiet().fit(module, loader(1))
    assert module.args == (True, None, None)  # the flags as given: Lightning passes None for an unset algorithm
    assert module.max_grad <= 1e-4
    flagged = Clipping()
    quiet(gradient_clip_val=0.5, gradient_clip_algorithm="value").fit(flagged, loader(1))
    assert flagged.args == (True, 0.5, "value")


def _steps_scheduler(self, scheduler, metric):
    scheduler.step()


@pytest.mark.parametrize("hook", ["optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping",
                                  "lr_scheduler_step"])
def test_automatic_only_step_hooks_are_refused_in_manual_optimization(hook):
    class Manual(Net):
        automatic_optimization = False

        def training_step(self, batch, batch_idx):
            self.trained = True

    setattr(Manual, hook, vars(Recorded).get(hook, _steps_scheduler))
    module = Manual()
    with pytest.raises(ConfigError, match=f"overrides {hook}, but with automatic_optimization = False"):
        quiet().fit(module, loader(1))
    assert not hasattr(module, "trained")


def test_a_generator_step_with_an_overridden_optimizer_step_is_refused():
    class Yielding(Warmup):
        def training_step(self, batch, batch_idx):
            yield Net.training_step(self, batch, batch_idx)

    with pytest.raises(GeneratorStepError, match="overrides optimizer_step"):
        quiet().fit(Yielding(), loader(1))


def test_default_step_hooks_are_not_callback_hooks_nor_stubs():
    from statemachine_trainer import Callback

    for name in ("backward", "optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping",
                 "lr_scheduler_step"):
        assert name not in HOOK_NAMES
        assert not hasattr(Callback, name)
        assert getattr(TrainingModule, name).__default_hook__


# -- training_step(self, batch) -----------------------------------------------------------------------
class NoIndex(Net):
    def training_step(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)


def test_training_step_without_batch_idx_trains_like_with_it():
    without, with_idx = NoIndex(), Net()
    quiet().fit(without, loader(3))
    quiet().fit(with_idx, loader(3))
    assert all(torch.equal(p, q) for p, q in zip(without.parameters(), with_idx.parameters()))


def test_manual_and_generator_steps_without_batch_idx():
    class Manual(Net):
        automatic_optimization = False

        def training_step(self, batch):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(Net.training_step(self, batch, 0))
            opt.step()

    class Yielding(Net):
        def training_step(self, batch):
            yield Net.training_step(self, batch, 0)

    for cls in (Manual, Yielding):
        trainer = quiet()
        trainer.fit(cls(), loader(2))
        assert trainer.global_step == 2


def test_step_arity_counts_leading_positional_parameters():
    from statemachine_trainer._step_args import step_arity

    class Steps:
        def one(self, batch): ...
        def two(self, batch, batch_idx): ...
        def three(self, batch, batch_idx, dataloader_idx=0): ...
        def star(self, *args): ...
        def keyword_only(self, batch, *, batch_idx=0): ...

    steps = Steps()
    assert [step_arity(getattr(steps, n), 3) for n in ("one", "two", "three", "star", "keyword_only")] == \
        [1, 2, 3, 3, 1]
    assert step_arity(steps.three, 2) == 2


# -- on_train_batch_end's outputs ---------------------------------------------------------------------
def _outputs_of(step, automatic=True, **flags):
    class Outputs(Net):
        automatic_optimization = automatic

        def training_step(self, batch, batch_idx):
            loss = Net.training_step(self, batch, batch_idx)
            if not automatic:
                self.manual_backward(loss)
            return step(loss)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.outputs = outputs

    module = Outputs()
    quiet(**flags).fit(module, loader(2))
    return module.outputs


@pytest.mark.parametrize("automatic", [True, False])
def test_on_train_batch_end_gets_a_dict_with_the_detached_loss(automatic):
    outputs = _outputs_of(lambda loss: loss, automatic)
    assert set(outputs) == {"loss"} and outputs["loss"].grad_fn is None
    outputs = _outputs_of(lambda loss: {"loss": loss, "extra": 3}, automatic)
    assert outputs["extra"] == 3 and outputs["loss"].grad_fn is None
    assert _outputs_of(lambda loss: None, automatic) == {}


def test_the_loss_in_outputs_is_divided_by_accumulate_grad_batches_as_in_lightning():
    whole = _outputs_of(lambda loss: {"loss": loss, "raw": loss.detach()}, accumulate_grad_batches=2)
    assert torch.allclose(whole["loss"], whole["raw"] / 2)


def test_a_manual_training_step_returning_a_non_tensor_is_refused():
    assert issubclass(StepOutputError, TypeError)
    with pytest.raises(StepOutputError, match="In manual optimization training_step must return a tensor, a dict, or"):
        _outputs_of(lambda loss: 5, automatic=False)


# -- the public optimizer wrapper ---------------------------------------------------------------------
def test_self_optimizers_returns_training_optimizers():
    seen = {}

    class Manual(Net):
        automatic_optimization = False

        def configure_optimizers(self):
            return torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.SGD([self.extra], lr=0.1)

        def __init__(self):
            super().__init__()
            self.extra = nn.Parameter(torch.zeros(2))

        def training_step(self, batch, batch_idx):
            first, second = self.optimizers()
            seen["types"] = (type(first), type(second))
            seen["wraps"] = first.optimizer is self.trainer.optimizers[0]
            seen["groups"] = first.param_groups is first.optimizer.param_groups
            with first.toggle_model():
                seen["frozen"] = (self.extra.requires_grad, self.layer.weight.requires_grad)
            seen["thawed"] = self.extra.requires_grad
            first.zero_grad()
            self.manual_backward(Net.training_step(self, batch, batch_idx))
            first.step()

    trainer = quiet()
    trainer.fit(Manual(), loader(2))
    assert seen == {"types": (TrainingOptimizer, TrainingOptimizer), "wraps": True, "groups": True,
                    "frozen": (False, True), "thawed": True}
    assert trainer.global_step == 2  # the manual wrapper counts its steps


def test_step_with_a_non_callable_closure_is_refused():
    class Manual(Net):
        automatic_optimization = False

        def training_step(self, batch, batch_idx):
            self.optimizers().step(closure=5)

    with pytest.raises(TypeError, match="needs a callable closure"):
        quiet().fit(Manual(), loader(1))


def test_self_optimizers_in_automatic_mode_reads_the_optimizer_as_in_lightning():
    class Reading(Net):
        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            self.seen = (type(opt), opt.param_groups[0]["lr"], self.lr_schedulers())
            return super().training_step(batch, batch_idx)

    module = Reading()
    trainer = quiet()
    trainer.fit(module, loader(2))
    assert module.seen == (TrainingOptimizer, 0.1, None)
    assert trainer.global_step == 2  # reading it counts nothing


def test_step_hooks_left_alone_cost_nothing_and_keep_the_plain_rows():
    trainer = quiet()
    trainer.fit(Net(), loader(1))
    run = trainer.run
    assert not any(run.hooks.overrides(n) for n in ("backward", "optimizer_step", "optimizer_zero_grad",
                                                    "configure_gradient_clipping"))
    assert run.optimization.needs_closure == (False,)  # the plain BACKWARD/STEP rows, not the closure row
    warmed = quiet()
    warmed.fit(Warmup(), loader(1))
    assert warmed.run.hooks.overrides("optimizer_step") and warmed.run.optimization.needs_closure == (True,)
