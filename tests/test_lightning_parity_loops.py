"""Lightning 2.x's loop tests (``tests/tests_pytorch/loops/``), ported to our API.

Each test names the Lightning test it comes from and states the expectation:
stop conditions (``max_steps``/``max_epochs``/``min_epochs``, ``should_stop``,
``on_train_batch_start`` returning -1), validation frequency, gradient
accumulation counts, progress counters, resume.  Where we deliberately differ
the test holds our documented behaviour and says so; Lightning expectations
we do not meet yet are strict ``xfail``s naming what is wrong (issue 15).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, Trainer, TrainingModule, seed_everything
from statemachine_trainer.state import OptimizerProgress, ProcessedTracker, Progress, StartedTracker


def loader(n: int = 4, shuffle: bool = False) -> DataLoader:
    """n batches of one 4-feature row each."""
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=generator)), batch_size=1, shuffle=shuffle)


def quiet(**flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "enable_checkpointing": False, "logger": False,
                "num_sanity_val_steps": 0}
    return Trainer(**{**defaults, **flags})


class Boring(TrainingModule):
    """Lightning's BoringModel in short: a linear layer, SGD(lr=0.1) and StepLR(step_size=1) per epoch.

    Counts its training steps per epoch and records when validation runs
    (epoch, batches completed in the epoch, global_step) outside the sanity check.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.steps_per_epoch: dict[int, int] = {}
        self.validations: list[tuple[int, int, int]] = []

    def training_step(self, batch, batch_idx):
        epoch = self.trainer.current_epoch
        self.steps_per_epoch[epoch] = self.steps_per_epoch.get(epoch, 0) + 1
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val_x", self.layer(batch[0]).sum())

    def on_validation_start(self):
        if not self.trainer.sanity_checking:
            batches = self.trainer.fit_loop.epoch_loop.progress.current.completed
            self.validations.append((self.trainer.current_epoch, batches, self.trainer.global_step))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]


# -- on_train_batch_start returning -1 (test_training_loop.py) ---------------------------------------------------
class SkipRest(Boring):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_train_batch_start(self, batch, batch_idx):
        return -1 if batch_idx == self.at else None


@pytest.mark.parametrize(("max_epochs", "at"), [(2, 5), (3, 8), (4, 12)])
def test_on_train_batch_start_return_minus_one(max_epochs, at):
    """test_training_loop.py::test_on_train_batch_start_return_minus_one: returning -1 at batch ``at`` of 10 skips
    the rest of *that* epoch only: every epoch trains ``at`` batches (all 10 when at >= 10), so
    global_step == at * max_epochs (or 10 * max_epochs)."""
    module = SkipRest(at)
    trainer = quiet(max_epochs=max_epochs, limit_train_batches=10)
    trainer.fit(module, loader(12))
    per_epoch = min(at, 10)
    assert trainer.global_step == per_epoch * max_epochs
    assert module.steps_per_epoch == dict.fromkeys(range(max_epochs), per_epoch)


@pytest.mark.parametrize(("max_epochs", "at"), [(2, 5), (3, 8)])
def test_lr_updated_when_on_train_batch_start_returns_minus_one(max_epochs, at):
    """test_training_loop.py::test_lr_updated_on_train_batch_start_returns_minus_one: epoch-interval schedulers
    still step at the end of an epoch cut short by -1: lr == 0.1 * 0.1 ** max_epochs."""
    trainer = quiet(max_epochs=max_epochs, limit_train_batches=10)
    trainer.fit(SkipRest(at), loader(10))
    assert len(trainer.lr_scheduler_configs) == 1
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 ** max_epochs)


# -- should_stop and the min/max limits ----------------------------------------------------------------------------
class StopAtBatch4(Boring):
    def training_step(self, batch, batch_idx):
        if batch_idx == 4:
            self.trainer.should_stop = True
        return super().training_step(batch, batch_idx)


def test_should_stop_mid_epoch_still_validates():
    """test_training_loop.py::test_should_stop_mid_epoch: should_stop set in the 5th training_step ends the epoch
    after that batch, the epoch still counts (current_epoch == 1, global_step == 5) and validation runs once,
    at (epoch 0, global_step 5)."""
    module = StopAtBatch4()
    trainer = quiet(max_epochs=1, limit_train_batches=10, limit_val_batches=1)
    trainer.fit(module, loader(10), loader(1))
    assert trainer.current_epoch == 1 and trainer.global_step == 5
    assert [(epoch, step) for epoch, _, step in module.validations] == [(0, 5)]


def test_should_stop_mid_epoch_ends_the_fit():
    """test_training_loop.py::test_should_stop_mid_epoch (the stop itself): should_stop set in the 5th
    training_step ends the fit after that batch, with the epoch counted: current_epoch == 1, global_step == 5."""
    trainer = quiet(max_epochs=3, limit_train_batches=10)
    trainer.fit(StopAtBatch4(), loader(10))
    assert trainer.current_epoch == 1 and trainer.global_step == 5


class StopInFirstEpoch(Callback):
    """Sets should_stop after the 2nd batch of the first epoch, as early stopping on a step metric would."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == 1:
            trainer.should_stop = True



@pytest.mark.parametrize(("min_epochs", "steps", "epochs"), [(0, 2, 1), (1, 4, 1), (2, 8, 2)])
def test_should_stop_waits_for_min_epochs_to_complete(min_epochs, steps, epochs):
    """test_training_epoch_loop.py::test_should_stop_early_stopping_conditions_not_met and
    test_training_loop.py::test_should_stop_early_stopping_conditions_met: should_stop set after batch 2 of 4 of
    the first epoch stops there when min_epochs is 0; with min_epochs=k training goes on until k whole epochs
    have run (the epoch loop is not done while min_epochs is unmet), then stops."""
    trainer = quiet(max_epochs=5, min_epochs=min_epochs, callbacks=[StopInFirstEpoch()])
    trainer.fit(Boring(), loader(4))
    assert (trainer.global_step, trainer.current_epoch) == (steps, epochs)


class StopOnFitStart(Boring):
    def on_fit_start(self):
        self.trainer.should_stop = True

    def on_train_epoch_start(self):
        self.steps_per_epoch["on_train_epoch_start"] = 1


def test_should_stop_on_fit_start_trains_nothing():
    """utilities.py::_parse_loop_limits ("the default value is 0 so no training will be done when should_stop is
    triggered `on_fit_start`") with fit_loop.py ``done``: should_stop set in on_fit_start (min_epochs unset) ends
    the fit before any epoch starts: no on_train_epoch_start, no step, current_epoch 0."""
    module = StopOnFitStart()
    trainer = quiet(max_epochs=3)
    trainer.fit(module, loader(2))
    assert (trainer.global_step, trainer.current_epoch, module.steps_per_epoch) == (0, 0, {})


class StopAtEpochEnd(Callback):
    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


def test_should_stop_triggers_validation_once_per_epoch_with_min_epochs():
    """test_training_epoch_loop.py::test_should_stop_triggers_validation_once[min_epochs=3]: a stop requested at
    every epoch end is honoured only once min_epochs=3 are done, and validation ran once per epoch: 3 times."""
    module = Boring()
    trainer = quiet(max_epochs=3, min_epochs=3, limit_train_batches=2, limit_val_batches=2,
                    callbacks=[StopAtEpochEnd()])
    trainer.fit(module, loader(2), loader(2))
    assert len(module.validations) == 3 and trainer.current_epoch == 3


def test_should_stop_triggers_validation_once_with_min_steps():
    """test_training_epoch_loop.py::test_should_stop_triggers_validation_once[min_steps=3]: with 2 batches per
    epoch and min_steps=3, a stop requested at the first epoch end is honoured once step 3 is taken, in the middle
    of epoch 2, which validates before it ends: 2 validations, global_step 3 (both measured with Lightning 2.6.6)."""
    module = Boring()
    trainer = quiet(max_epochs=3, min_steps=3, limit_train_batches=2, limit_val_batches=2,
                    callbacks=[StopAtEpochEnd()])
    trainer.fit(module, loader(2), loader(2))
    assert len(module.validations) == 2 and trainer.global_step == 3


def test_max_steps_stops_mid_epoch_and_counts_the_epoch():
    """test_training_loop.py::test_fit_loop_done_log_messages (max_steps reached) and the
    test_should_stop_mid_epoch rule that an epoch cut short still counts: max_steps=5 with 4 batches per epoch
    and max_epochs=2 stops after the 1st batch of epoch 2: global_step 5, current_epoch 2."""
    module = Boring()
    trainer = quiet(max_steps=5, max_epochs=2)
    trainer.fit(module, loader(4))
    assert (trainer.global_step, trainer.current_epoch) == (5, 2)
    assert module.steps_per_epoch == {0: 4, 1: 1}


def test_max_epochs_limits_before_max_steps():
    """test_training_loop.py::test_fit_loop_done_log_messages (max_epochs reached): max_epochs=2 with max_steps=100
    stops after 2 epochs of 4 batches."""
    trainer = quiet(max_steps=100, max_epochs=2)
    trainer.fit(Boring(), loader(4))
    assert (trainer.global_step, trainer.current_epoch) == (8, 2)


def test_max_epochs_defaults():
    """utilities.py::_parse_loop_limits as Lightning's loop tests rely on it: without max_epochs and max_steps the
    fit is capped at 1000 epochs; with max_steps set, max_epochs is -1 (no epoch limit); max_epochs=-1 with
    max_steps trains until max_steps over as many epochs as needed."""
    assert quiet().max_epochs == 1000
    assert quiet(max_steps=7).max_epochs == -1
    trainer = quiet(max_epochs=-1, max_steps=7)
    trainer.fit(Boring(), loader(3))
    assert (trainer.global_step, trainer.current_epoch) == (7, 3)


def test_no_training_batches_means_no_training():
    """test_training_loop.py::test_fit_loop_done_log_messages ("No training batches"): limit_train_batches=0 makes
    the fit loop done at once: no training_step, global_step 0."""
    module = Boring()
    trainer = quiet(max_epochs=2, limit_train_batches=0)
    trainer.fit(module, loader(4))
    assert trainer.global_step == 0 and module.steps_per_epoch == {}


# -- seeding (test_training_starts_with_seed) ------------------------------------------------------------------------
class SeenBatches(Boring):
    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].flatten())
        return super().training_step(batch, batch_idx)


def _train_order(num_sanity_val_steps: int, train: DataLoader, val: DataLoader, **flags) -> torch.Tensor:
    module = SeenBatches()
    quiet(max_steps=2, num_sanity_val_steps=num_sanity_val_steps, **flags).fit(module, train, val)
    return torch.cat(module.seen)


def test_training_batches_continue_the_global_rng_when_seeded_once():
    """test_training_loop.py::test_training_starts_with_seed[seed_once=True]: seeded once, a second fit continues
    the global RNG, so its shuffled training batches differ from the first fit's."""
    train, val = loader(8, shuffle=True), loader(2, shuffle=True)
    seed_everything(123)
    # resumable_data=False: Lightning's RandomSampler draws from the global RNG (ours: a function of the seed).
    first = _train_order(0, train, val, resumable_data=False)
    second = _train_order(2, train, val, resumable_data=False)
    assert not torch.allclose(first, second)


def test_sanity_check_does_not_change_the_training_batches():
    """test_training_loop.py::test_training_starts_with_seed[seed_once=False]: with the same seed, the training
    batches are the same with num_sanity_val_steps=0 and =2 (the sanity check must not affect the random
    state; Lightning isolates its RNG)."""
    train, val = loader(8, shuffle=True), loader(4, shuffle=True)
    seed_everything(123)
    without_sanity = _train_order(0, train, val)
    seed_everything(123)
    with_sanity = _train_order(2, train, val)
    assert torch.allclose(without_sanity, with_sanity)


# -- validation frequency ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("interval", "batches", "after"), [(0.5, 8, [4, 8]), (0.25, 7, [1, 2, 3, 4, 5, 6, 7]),
                                                             (1.0, 5, [5]), (2, 6, [2, 4, 6])])
def test_val_check_interval_matches_lightning(interval, batches, after):
    """training_epoch_loop.py ``_should_check_val_fx`` with fit_loop.py's val_check_batch (int(n * fraction), at
    least 1; an int counts batches in the epoch): validation runs after these batches of each epoch, and only
    then."""
    module = Boring()
    quiet(max_epochs=2, val_check_interval=interval, limit_val_batches=1).fit(module, loader(batches), loader(1))
    assert [b for epoch, b, _ in module.validations] == after * 2
    assert [epoch for epoch, _, _ in module.validations] == [0] * len(after) + [1] * len(after)


@pytest.mark.parametrize(("interval", "batches", "after"), [(3, 7, [3, 6, 7]), (0.5, 7, [3, 6, 7])])
def test_val_check_interval_also_validates_after_the_last_batch(interval, batches, after):
    """Deliberate difference (README "Hook order": "validation every val_check_interval batches and after the last
    batch"): when the interval does not divide the epoch, we validate at the epoch's end too.  Lightning
    (``_should_check_val_fx``) validates only at multiples of val_check_batch: [3, 6] here."""
    module = Boring()
    quiet(max_epochs=1, val_check_interval=interval, limit_val_batches=1).fit(module, loader(batches), loader(1))
    assert [b for _, b, _ in module.validations] == after


def test_val_check_interval_larger_than_the_epoch_is_fine_without_validation():
    """test_training_loop.py::test_val_check_interval_with_limit_val_batches_zero: val_check_interval=10 with 5
    training batches does not raise when limit_val_batches=0 (validation is off); the epoch trains."""
    module = Boring()
    trainer = quiet(max_epochs=1, limit_train_batches=5, val_check_interval=10, limit_val_batches=0)
    trainer.fit(module, loader(10), loader(2))
    assert trainer.global_step == 5 and module.validations == []


def test_val_check_interval_larger_than_the_epoch_raises_with_validation():
    """fit_loop.py ``setup_data`` (the error test_val_check_interval_with_limit_val_batches_zero guards against):
    an int val_check_interval larger than the number of training batches, with validation on and
    check_val_every_n_epoch set, raises a ValueError before training."""
    module = Boring()
    with pytest.raises(ValueError, match="val_check_interval"):
        quiet(max_epochs=1, val_check_interval=10).fit(module, loader(5), loader(1))
    assert module.steps_per_epoch == {}


def test_check_val_every_n_epoch_none_counts_batches_across_epochs():
    """training_epoch_loop.py ``_should_check_val_fx`` (``current_iteration = self.total_batch_idx if
    check_val_every_n_epoch is None``): with check_val_every_n_epoch=None and val_check_interval=3, 2 epochs of 5
    batches validate after total batches 3, 6, 9 -- i.e. after batch 3 of epoch 0 and batches 1 and 4 of
    epoch 1."""
    module = Boring()
    quiet(max_epochs=2, val_check_interval=3, check_val_every_n_epoch=None).fit(module, loader(5), loader(1))
    assert [(epoch, b) for epoch, b, _ in module.validations] == [(0, 3), (1, 1), (1, 4)]


def test_check_val_every_n_epoch_none_resumes_its_count(tmp_path):
    """Ours (exact resume): check_val_every_n_epoch=None counts the epoch loop's ``progress.total`` batches, which
    the checkpoint holds: resumed from a step's checkpoint (before a due validation, mid-epoch, in the next
    epoch), the run validates where the uninterrupted one did and ends with its weights."""
    from statemachine_trainer.callbacks import ModelCheckpoint
    from statemachine_trainer.data import ResumableLoader

    flags = {"max_epochs": 2, "val_check_interval": 3, "check_val_every_n_epoch": None}

    def data():
        return ResumableLoader(loader(5, shuffle=True), seed=0)

    uninterrupted = Boring()
    every_step = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    quiet(enable_checkpointing=True, callbacks=[every_step], **flags).fit(uninterrupted, data(), loader(1))
    assert [step for _, _, step in uninterrupted.validations] == [3, 6, 9]
    paths = {int(p.name.split("step=")[1].split(".")[0].split("-")[0]): p for p in tmp_path.iterdir() if not p.name.startswith(".")}
    for step in (3, 4, 7):
        resumed = Boring()
        quiet(**flags).fit(resumed, data(), loader(1), ckpt_path=paths[step])
        assert resumed.validations == [v for v in uninterrupted.validations if v[2] >= step], step
        for name, tensor in uninterrupted.state_dict().items():
            assert torch.equal(tensor, resumed.state_dict()[name]), (step, name)


@pytest.mark.parametrize("every", [1, 2])
def test_check_val_every_n_epoch_does_not_change_epoch_scheduler_steps(every):
    """test_optimizers.py::test_lr_scheduler_epoch_step_frequency: an epoch-interval StepLR steps once per epoch
    (4 times in 4 epochs) whether validation runs every epoch or every 2nd; validation runs after epochs
    every, 2*every, ... (check_val_every_n_epoch)."""
    module = Boring()
    trainer = quiet(max_epochs=4, limit_train_batches=2, limit_val_batches=2, check_val_every_n_epoch=every)
    trainer.fit(module, loader(2), loader(2))
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert [epoch for epoch, _, _ in module.validations] == list(range(every - 1, 4, every))


class GradsAtValidation(Boring):
    def on_validation_start(self):
        self.validations.append((self.trainer.fit_loop.epoch_loop.progress.current.completed,
                                 all(p.grad is not None for p in self.parameters())))


def test_validation_inside_an_accumulation_window_keeps_the_gradients():
    """test_loops.py::test_validation_during_gradient_accumulation_window: 6 batches, accumulate_grad_batches=3,
    val_check_interval=2: the validations after batches 2 and 4 fall inside a window and find the gradients
    still there; the one after batch 6 follows the step and finds them zeroed (None)."""
    module = GradsAtValidation()
    quiet(max_epochs=1, limit_val_batches=1, accumulate_grad_batches=3, val_check_interval=2).fit(
        module, loader(6), loader(1))
    assert module.validations == [(2, True), (4, True), (6, False)]


# -- gradient accumulation and backward counts (test_backward_calls.py) ----------------------------------------------
class Counting(TrainingModule):
    """Counts training_step, optimizer.step and optimizer.zero_grad calls (backward: the count_backward fixture)."""

    def __init__(self, optimizer: str = "sgd") -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.optimizer_name = optimizer
        self.counts = {"training_step": 0, "step": 0, "zero_grad": 0}
        self.step_batches = []

    def training_step(self, batch, batch_idx):
        self.counts["training_step"] += 1
        self.batch_idx = batch_idx
        return self.layer(batch[0]).pow(2).sum()

    def test_step(self, batch, batch_idx):
        self.layer(batch[0])

    def on_before_optimizer_step(self, optimizer):
        self.step_batches.append(self.batch_idx)

    def configure_optimizers(self):
        params = self.parameters()
        optimizer = (torch.optim.LBFGS(params, lr=0.1, max_iter=1) if self.optimizer_name == "lbfgs"
                     else torch.optim.SGD(params, lr=0.1))
        counts = self.counts
        step, zero_grad = optimizer.step, optimizer.zero_grad

        def counted_step(*args, **kwargs):
            counts["step"] += 1
            return step(*args, **kwargs)

        def counted_zero_grad(*args, **kwargs):
            counts["zero_grad"] += 1
            return zero_grad(*args, **kwargs)

        optimizer.step, optimizer.zero_grad = counted_step, counted_zero_grad
        return optimizer


@pytest.fixture
def count_backward(monkeypatch):
    """Counts torch.Tensor.backward calls while still running them (Lightning mocks them out)."""
    calls = []
    real = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    return calls


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_backward_once_per_step(count_backward, steps):
    """test_backward_calls.py::test_backward_count_simple: max_steps=n runs backward exactly n times; test runs it
    never."""
    module = Counting()
    trainer = quiet(max_steps=steps)
    trainer.fit(module, loader(4))
    assert len(count_backward) == steps
    count_backward.clear()
    trainer.test(module, loader(2))
    assert count_backward == []


def test_backward_per_batch_with_accumulation(count_backward):
    """test_backward_calls.py::test_backward_count_with_grad_accumulation: 6 batches with accumulate_grad_batches=2
    run 6 backwards and 3 optimizer steps; max_steps=6 with accumulate_grad_batches=2 runs 12 backwards."""
    module = Counting()
    trainer = quiet(max_epochs=1, limit_train_batches=6, accumulate_grad_batches=2)
    trainer.fit(module, loader(8))
    assert len(count_backward) == 6 and trainer.global_step == 3
    count_backward.clear()
    trainer = quiet(max_steps=6, accumulate_grad_batches=2)
    trainer.fit(Counting(), loader(16))
    assert len(count_backward) == 12 and trainer.global_step == 6


def test_closure_optimizer_runs_no_extra_backward(count_backward):
    """test_backward_calls.py::test_backward_count_with_closure: an LBFGS (closure) optimizer evaluating its
    closure once per step runs 5 backwards in max_steps=5, and 10 with accumulate_grad_batches=2."""
    trainer = quiet(max_steps=5)
    trainer.fit(Counting("lbfgs"), loader(8))
    assert len(count_backward) == 5
    count_backward.clear()
    trainer = quiet(max_steps=5, accumulate_grad_batches=2)
    trainer.fit(Counting("lbfgs"), loader(16))
    assert len(count_backward) == 10 and trainer.global_step == 5


def test_accumulation_call_counts_with_a_partial_last_window():
    """training_epoch_loop.py ``_should_accumulate`` (the window closes every k batches or on the epoch's last
    batch) and automatic.py ``_make_zero_grad_fn`` (one zero_grad per window): 7 batches with
    accumulate_grad_batches=3 run 7 training_steps and step the optimizer after batches 2, 5 and 6 (0-based),
    with one zero_grad per step."""
    module = Counting()
    trainer = quiet(max_epochs=1, accumulate_grad_batches=3)
    trainer.fit(module, loader(7))
    assert module.counts == {"training_step": 7, "step": 3, "zero_grad": 3}
    assert module.step_batches == [2, 5, 6] and trainer.global_step == 3


class NoBatchIdx(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.stepped_after = []
        self.batches = 0

    def training_step(self, batch):
        self.batches += 1
        return self.layer(batch[0]).sum()

    def on_before_optimizer_step(self, optimizer):
        self.stepped_after.append(self.batches - 1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_no_batch_idx_gradient_accumulation():
    """test_training_epoch_loop.py::test_no_batch_idx_gradient_accumulation: a training_step without batch_idx
    still accumulates: fast_dev_run=4 with accumulate_grad_batches=2 steps after batches 1 and 3."""
    module = NoBatchIdx()
    trainer = quiet(fast_dev_run=4, accumulate_grad_batches=2)
    trainer.fit(module, loader(4))
    assert module.stepped_after == [1, 3] and trainer.global_step == 2


class NoBatchIdxEval(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.called = set()

    def validation_step(self, batch):
        self.called.add("validation_step")

    def test_step(self, batch):
        self.called.add("test_step")

    def predict_step(self, batch):
        self.called.add("predict_step")
        return self.layer(batch[0])


def test_evaluation_steps_without_batch_idx():
    """test_evaluation_loop.py::test_evaluation_loop_when_batch_idx_argument_is_not_given and
    test_prediction_loop.py::test_prediction_loop_when_batch_idx_argument_is_not_given: validation_step(self,
    batch), test_step(self, batch) and predict_step(self, batch) are called without batch_idx."""
    module = NoBatchIdxEval()
    trainer = quiet(fast_dev_run=1)
    trainer.validate(module, loader(2))
    trainer.test(module, loader(2))
    trainer.predict(module, loader(2))
    assert module.called == {"validation_step", "test_step", "predict_step"}


# -- training_step returning None / None batches (test_training_loop_flow_scalar.py) ----------------------------------
class NoneWhenEven(Boring):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss if batch_idx % 2 else None


def test_training_step_returning_none_skips_the_step():
    """test_training_loop_flow_scalar.py::test_training_step_no_return_when_even: a training_step returning None
    on even batches skips those optimizer steps: 4 epochs of 4 batches take 8 steps."""
    trainer = quiet(max_epochs=4, limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(NoneWhenEven(), loader(4))
    assert trainer.global_step == 8


def test_training_step_returning_none_warns():
    """test_training_loop_flow_scalar.py::test_train_step_no_return / test_training_step_no_return_when_even: in
    automatic optimization a None from training_step warns (UserWarning, "training_step returned None")."""
    with pytest.warns(UserWarning, match=r"training_step.* returned .*None"):
        quiet(max_epochs=1).fit(NoneWhenEven(), loader(4))


class ManualNoReturn(Boring):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        self.manual_backward(self.layer(batch[0]).sum())
        optimizer.step()
        optimizer.zero_grad()


def test_manual_training_step_returning_nothing_does_not_warn():
    """test_training_loop_flow_scalar.py::test_train_step_no_return (manual half): in manual optimization a
    training_step without a return value is normal: no warning, and every opt.step() counts a step."""
    trainer = quiet(fast_dev_run=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit(ManualNoReturn(), loader(2))
    assert trainer.global_step == 2


class NoneBatches(Boring):
    def __init__(self) -> None:
        super().__init__()
        self.outputs = []

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.outputs.append((batch_idx, outputs is None))


def _none_when_even(items):
    _none_when_even.counter += 1
    return None if _none_when_even.counter % 2 == 1 else torch.utils.data.default_collate(items)


def test_none_batches_are_skipped():
    """test_training_loop_flow_scalar.py::test_training_step_none_batches: a loader that yields None for every
    other batch: Lightning warns ("train_dataloader yielded None"), skips training_step for those batches and
    gives on_train_batch_end outputs=None for them."""
    _none_when_even.counter = 0
    data = DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=1, collate_fn=_none_when_even)
    module = NoneBatches()
    with pytest.warns(UserWarning, match="None"):
        quiet(max_epochs=1).fit(module, data)
    assert module.outputs == [(0, True), (1, False), (2, True), (3, False)]


# -- progress counters (test_loops.py::test_loop_state_on_complete_run, test_progress.py) ---------------------------
def test_progress_counters_after_a_complete_run():
    """test_loops.py::test_loop_state_on_complete_run: after 3 epochs of 3 batches the epoch progress counts 3
    epochs ready/started/processed/completed; the batch progress 9 in total and 3 in the current epoch for each
    counter, with is_last_batch set; the optimizer 9 steps and 9 zero_grads in total.  (Lightning's checkpoint is
    written before the last epoch's ``completed``; here we read the counters after the run.)"""
    trainer = quiet(max_epochs=3)
    trainer.fit(Boring(), loader(3))
    epoch_loop = trainer.fit_loop.epoch_loop
    assert trainer.fit_loop.progress.total == ProcessedTracker(ready=3, started=3, processed=3, completed=3)
    assert epoch_loop.progress.total == ProcessedTracker(ready=9, started=9, processed=9, completed=9)
    assert epoch_loop.progress.current == ProcessedTracker(ready=3, started=3, processed=3, completed=3)
    assert epoch_loop.progress.is_last_batch
    optimizer = epoch_loop.batch_loop.optimizer_loop.progress.optimizer
    assert (optimizer.step.total.ready, optimizer.step.total.completed) == (9, 9)
    assert optimizer.zero_grad.total == StartedTracker(ready=9, started=9, completed=9)


@pytest.mark.parametrize("attr", ["ready", "started", "processed", "completed"])
def test_progress_increment(attr):
    """test_progress.py::test_progress_increment: each increment_* moves that counter of total and current by 1."""
    progress = Progress()
    getattr(progress, f"increment_{attr}")()
    assert progress.total == progress.current == ProcessedTracker(**{attr: 1})


def test_progress_increment_sequence_and_reset():
    """test_progress.py::test_progress_increment_sequence and test_tracker_reset: ready, started, processed,
    completed in turn; reset_on_run zeroes current and keeps total; reset zeroes both."""
    progress = Progress()
    expected = {}
    for attr in ("ready", "started", "processed", "completed"):
        getattr(progress, f"increment_{attr}")()
        expected[attr] = 1
        assert progress.total == progress.current == ProcessedTracker(**expected)
    progress.reset_on_run()
    assert progress.current == ProcessedTracker() and progress.total == ProcessedTracker(**expected)
    progress.reset()
    assert progress.total == ProcessedTracker()


def test_optimizer_progress_default_factory_and_deepcopy():
    """test_progress.py::test_optimizer_progress_default_factory and test_deepcopy: two progress objects share no
    counters, and progress objects deep-copy."""
    first, second = OptimizerProgress(), OptimizerProgress()
    first.step.increment_completed()
    assert first.step.total.completed == first.step.current.completed == 1
    assert second.step.total.completed == 0
    copied = copy.deepcopy(first)
    copied.step.increment_completed()
    assert first.step.total.completed == 1


# -- resume (test_training_epoch_loop.py::test_no_val_on_train_epoch_loop_restart) -----------------------------------
def test_no_val_on_train_epoch_loop_restart(tmp_path):
    """test_training_epoch_loop.py::test_no_val_on_train_epoch_loop_restart: a checkpoint after 1 epoch (1 batch,
    validation included), resumed with max_epochs=2, trains epoch 2 and validates once -- the finished
    epoch's validation is not repeated at the restart."""
    first = quiet(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    first.fit(Boring(), loader(2), loader(1))
    path = first.save_checkpoint(tmp_path / "last.ckpt")
    module = Boring()
    trainer = quiet(max_epochs=2, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, loader(2), loader(1), ckpt_path=path)
    assert len(module.validations) == 1 and trainer.global_step == 2


# -- prediction loop (test_prediction_loop.py) -----------------------------------------------------------------------
class PredictIdx(TrainingModule):
    def predict_step(self, batch, batch_idx):
        return batch_idx


def test_prediction_loop_returns_predictions():
    """test_prediction_loop.py::test_prediction_loop_stores_predictions: predict returns each batch's predict_step
    output in order: [0, 1] with limit_predict_batches=2."""
    assert quiet(limit_predict_batches=2).predict(PredictIdx(), loader(4)) == [0, 1]


def test_prediction_loop_return_predictions_false():
    """test_prediction_loop.py::test_prediction_loop_stores_predictions: predict(..., return_predictions=False)
    returns None."""
    assert quiet(limit_predict_batches=2).predict(PredictIdx(), loader(4), return_predictions=False) is None


# -- mid-epoch resume (test_training_epoch_loop.py::test_resume_mid_epoch_warning, test_loops.py::test_restart_parity)
def _checkpoints_every_step(tmp_path, data, **flags) -> dict[int, object]:
    from statemachine_trainer.callbacks import ModelCheckpoint

    trainer = quiet(enable_checkpointing=True, **flags,
                    callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)])
    module = Boring()
    trainer.fit(module, data)
    paths = {int(p.name.split("step=")[1].split(".")[0].split("-")[0]): p for p in tmp_path.iterdir() if not p.name.startswith(".")}
    return module, paths


def _resume_warnings(data, path, **flags) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet(max_epochs=1, **flags).fit(Boring(), data, ckpt_path=path)
    return [str(w.message) for w in caught if "middle of an epoch" in str(w.message)]


def test_resume_mid_epoch_warns_without_a_loader_position(tmp_path):
    """test_training_epoch_loop.py::test_resume_mid_epoch_warning: resuming from a checkpoint taken in the middle of
    an epoch warns when the loader has no position to restore (not stateful); with a loader that has one
    (ours: ResumableLoader) there is no warning."""
    from statemachine_trainer.data import ResumableLoader

    # resumable_data=False: the plain loader as given, without a position (the default would give it one).
    _, paths = _checkpoints_every_step(tmp_path / "plain", loader(3), max_epochs=1, resumable_data=False)
    assert len(_resume_warnings(loader(3), paths[1], resumable_data=False)) == 1
    _, paths = _checkpoints_every_step(tmp_path / "default", loader(3), max_epochs=1)
    assert _resume_warnings(loader(3), paths[1]) == []  # resumable_data=True: the same loader made resumable
    _, paths = _checkpoints_every_step(tmp_path / "resumable", ResumableLoader(loader(3), seed=0), max_epochs=1)
    assert _resume_warnings(ResumableLoader(loader(3), seed=0), paths[1]) == []


def test_resume_at_the_end_of_an_epoch_does_not_warn(tmp_path):
    """test_training_epoch_loop.py::test_resume_mid_epoch_warning (resume_step=3 of 3): a checkpoint written after
    the epoch's last batch needs no loader position, so resuming from it does not warn even with a plain
    loader."""
    _, paths = _checkpoints_every_step(tmp_path, loader(3), max_epochs=1)
    assert _resume_warnings(loader(3), paths[3]) == []


def test_restart_parity(tmp_path):
    """test_loops.py::test_restart_parity: 4 epochs of 4 batches with a checkpoint every step; a new Trainer and
    module resumed from the step-2 checkpoint (mid-epoch) end with the uninterrupted run's weights (ours:
    bit-identical, given a loader with a position: ResumableLoader, shuffled)."""
    from statemachine_trainer.data import ResumableLoader

    def data():
        return ResumableLoader(loader(4, shuffle=True), seed=0)

    torch.manual_seed(0)
    uninterrupted, paths = _checkpoints_every_step(tmp_path, data(), max_epochs=4)
    torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
    resumed = Boring()
    trainer = quiet(max_epochs=4)
    trainer.fit(resumed, data(), ckpt_path=paths[2])
    assert trainer.global_step == 16
    for name, tensor in uninterrupted.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


class LastBatchFlags(Boring):
    def __init__(self) -> None:
        super().__init__()
        self.flags = []

    def training_step(self, batch, batch_idx):
        self.flags.append(self.trainer.is_last_batch)
        return super().training_step(batch, batch_idx)


def test_is_last_batch():
    """test_loops.py::test_loop_state_on_complete_run (``is_last_batch``) and test_training_loop.py::
    test_on_train_batch_start_return_minus_one (``assert trainer.is_last_batch``): inside training_step,
    trainer.is_last_batch is True for the epoch's last batch only, and stays True after the fit."""
    module = LastBatchFlags()
    trainer = quiet(max_epochs=2)
    trainer.fit(module, loader(3))
    assert module.flags == [False, False, True] * 2
    assert trainer.is_last_batch
