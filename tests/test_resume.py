"""Resume from a checkpoint written at a transition boundary continues the run bit for bit.

Epoch-end checkpoints (ModelCheckpoint's), checkpoints requested inside a
hook (written at the next boundary), preemption by signal, mid-epoch
boundaries with resumable loaders (inside accumulation windows and
mid-epoch validation), and multi-optimizer steps (generator, manual,
optimizer_idx).  Refusals, damaged checkpoints and logs are in
test_resume_safety.py; whole processes killed with SIGKILL in
test_kill_resume.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import PREEMPTED_EXIT_CODE, Callback, Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.checkpoint import load_checkpoint_dir, verify_checkpoint
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.testing import assert_resume_exact

from .test_optimization_modes import IndexGAN, ManualGAN, YieldGAN, real_loader

EPOCHS = 4


class Net(TrainingModule):
    def __init__(self, init_seed: int) -> None:
        super().__init__()
        torch.manual_seed(init_seed)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)}


def loader(seed: int, shuffle: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 6, generator=g)
    return DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=16, shuffle=shuffle)


def fit(root: Path, module: Net, validate: bool, ckpt_path: Path | None = None) -> Trainer:
    checkpoints = ModelCheckpoint(dirpath=root, filename="{epoch}", save_top_k=-1)
    trainer = Trainer(max_epochs=EPOCHS, seed=5, accumulate_grad_batches=2, enable_progress_bar=False,
                      logger=False, callbacks=[checkpoints], num_sanity_val_steps=1)
    trainer.fit(module, loader(0), loader(1, shuffle=False) if validate else None, ckpt_path=ckpt_path)
    return trainer


def assert_same_run(a: Trainer, b: Trainer) -> None:
    for (name, x), y in zip(a.module.state_dict().items(), b.module.state_dict().values()):
        assert torch.equal(x, y), name
    sa, sb = a.optimizers[0].state_dict()["state"], b.optimizers[0].state_dict()["state"]
    for key in sa:
        for field in sa[key]:
            assert torch.equal(torch.as_tensor(sa[key][field]), torch.as_tensor(sb[key][field])), (key, field)
    assert a.optimizers[0].param_groups[0]["lr"] == b.optimizers[0].param_groups[0]["lr"]
    assert a.global_step == b.global_step and a.current_epoch == b.current_epoch
    assert torch.equal(a.callback_metrics["loss"], b.callback_metrics["loss"])
    assert torch.equal(torch.get_rng_state(), torch.get_rng_state())


@pytest.mark.parametrize("validate", [False, True], ids=["no-validation", "validation"])
@pytest.mark.parametrize("epoch", [0, 2])
def test_resume_from_an_epoch_end_checkpoint_is_bit_identical(tmp_path, validate, epoch):
    full = fit(tmp_path / "full", Net(init_seed=0), validate)
    after_full = torch.get_rng_state()
    saved = tmp_path / "full" / f"epoch={epoch}.ckpt"
    state, manifest = load_checkpoint_dir(saved)
    assert manifest["metadata"]["epoch"] == epoch + 1  # written after the epoch completed
    assert state["loops"]["loops"]["fit_loop"]["position"]["row"] is None  # at a boundary, not inside a hook
    resumed = fit(tmp_path / "resumed", Net(init_seed=99), validate, ckpt_path=saved)
    assert_same_run(full, resumed)
    assert torch.equal(torch.get_rng_state(), after_full)  # the RNG stream continued exactly
    # the resumed run kept writing checkpoints, and its last one equals the uninterrupted run's
    last_full, _ = load_checkpoint_dir(tmp_path / "full" / f"epoch={EPOCHS - 1}.ckpt")
    last_resumed, _ = load_checkpoint_dir(tmp_path / "resumed" / f"epoch={EPOCHS - 1}.ckpt")
    for name, tensor in last_full["module"].items():
        assert torch.equal(tensor, last_resumed["module"][name])


def test_checkpoint_requested_in_a_hook_is_written_at_the_next_boundary(tmp_path):
    positions = []

    class Probe(ModelCheckpoint):
        def on_train_epoch_end(self, trainer, module):
            trainer.request_checkpoint(tmp_path / f"probe-{trainer.current_epoch}.ckpt",
                                       on_written=lambda path: positions.append(trainer.fit_loop.position))

    trainer = Trainer(max_epochs=2, enable_progress_bar=False, logger=False, callbacks=[Probe(dirpath=tmp_path)])
    trainer.fit(Net(init_seed=0), loader(0))
    assert [p.state for p in positions] == ["ADVANCE", "ADVANCE"]
    assert all(p.row is None for p in positions)  # between transitions, never inside on_advance_end
    assert (tmp_path / "probe-0.ckpt" / "manifest.json").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_preemption_signal_checkpoints_at_the_next_boundary_and_exits_75(tmp_path, sig):
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_preempt_script.py"), str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "training"
    time.sleep(0.3)  # some steps into the first epoch
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == PREEMPTED_EXIT_CODE == 75, err
    (saved,) = (tmp_path / "checkpoints").glob("preempted-*.ckpt")
    assert verify_checkpoint(saved) == []
    state, manifest = load_checkpoint_dir(saved)
    assert 0 < manifest["metadata"]["step"] < 1000  # mid-epoch: the run did not finish an epoch first
    fit_loop = state["loops"]["loops"]["fit_loop"]["position"]
    assert fit_loop["state"] == "ADVANCE"


def test_preemption_handlers_are_restored_after_fit():
    before = signal.getsignal(signal.SIGTERM)
    Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False).fit(
        Net(init_seed=0), loader(0))
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_mid_epoch_resume_warns_that_it_is_not_exact_yet(tmp_path):
    class MidEpoch(ModelCheckpoint):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                trainer.request_checkpoint(tmp_path / "mid.ckpt")

    # resumable_data=False: the loader as given, which has no position (the default would make it resumable).
    first = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, callbacks=[MidEpoch(dirpath=tmp_path)],
                    resumable_data=False)
    first.fit(Net(init_seed=0), loader(0))
    resumed = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                      resumable_data=False)
    with pytest.warns(UserWarning, match=r"middle of an epoch \(2 of 5 batches done\)"):
        resumed.fit(Net(init_seed=0), loader(0), ckpt_path=tmp_path / "mid.ckpt")


# -- mid-epoch: resumable loaders, accumulation windows, mid-epoch validation ------------------------------
INTERRUPT_HOOKS = ("on_after_backward", "on_before_optimizer_step", "on_train_batch_end", "on_validation_batch_end")


class Plateau(Net):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_mean", loss, on_step=False, on_epoch=True)  # accumulated over the epoch: in the checkpoint
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


def request_at(hook: str, n: int, path: Path) -> Callback:
    """A callback that asks for a checkpoint at the n-th call of ``hook`` (and otherwise does nothing)."""
    def maybe(self, trainer, *args):
        self.calls += 1
        if self.calls == n:
            trainer.request_checkpoint(path)
    return type("RequestAt", (Callback,), {"calls": 0, hook: maybe})()


def resumable_fit(module: Net, extra_callbacks=(), ckpt_path: Path | None = None) -> Trainer:
    train = ResumableLoader(loader(0), seed=3)
    val = ResumableLoader(loader(1, shuffle=False))
    trainer = Trainer(max_epochs=2, seed=5, accumulate_grad_batches=3, val_check_interval=0.5,
                      num_sanity_val_steps=0, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                      callbacks=list(extra_callbacks))
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return trainer


@settings(max_examples=8, deadline=None)
@given(hook=st.sampled_from(INTERRUPT_HOOKS), n=st.integers(1, 4))  # each hook runs at least 4 times
def test_resume_from_any_mid_epoch_boundary_is_bit_identical(tmp_path_factory, hook, n):
    path = tmp_path_factory.mktemp("mid") / "interrupt.ckpt"
    full = resumable_fit(Plateau(init_seed=0), [request_at(hook, n, path)])
    resumed = resumable_fit(Plateau(init_seed=42), ckpt_path=path)
    assert_same_run(full, resumed)
    assert set(full.callback_metrics) == set(resumed.callback_metrics) >= {"val_loss", "train_mean"}
    for key, value in full.callback_metrics.items():
        assert torch.equal(value, resumed.callback_metrics[key]), key


def test_a_checkpoint_inside_an_accumulation_window_keeps_the_partial_gradients(tmp_path):
    path = tmp_path / "window.ckpt"
    resumable_fit(Plateau(init_seed=0), [request_at("on_after_backward", 2, path)])  # batch 2 of a 3-batch window
    state, _ = load_checkpoint_dir(path)
    assert state["grads"] and all(g.abs().sum() > 0 for g in state["grads"].values())
    assert state["data"]["train"]["position"] == 2  # the in-flight batch was the second


# -- several optimizers: generator (yield) steps and manual optimization -----------------------------------


def gan_fit(module, extra_callbacks=(), ckpt_path=None) -> Trainer:
    trainer = Trainer(max_epochs=2, seed=5, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                      callbacks=list(extra_callbacks))
    trainer.fit(module, ResumableLoader(real_loader(), seed=1), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("cls", [YieldGAN, ManualGAN, IndexGAN], ids=["generator", "manual", "optimizer_idx"])
@pytest.mark.parametrize("n", [1, 2, 5])  # odd calls: between the first and second optimizer of a step
def test_resume_of_multi_optimizer_steps_is_bit_identical(tmp_path, cls, n):
    path = tmp_path / "gan.ckpt"
    full = gan_fit(cls(), [request_at("on_before_optimizer_step", n, path)])
    state, _ = load_checkpoint_dir(path)
    generator_loop = state["loops"]["loops"]["fit_loop.epoch_loop.batch_loop.generator_loop"]
    assert generator_loop["progress"]["optimizer_position"] == 0 or generator_loop["position"]["state"] != "ADVANCE"
    resumed = gan_fit(cls(), ckpt_path=path)
    for a, b in zip(full.module.parameters(), resumed.module.parameters()):
        assert torch.equal(a, b)
    for opt_a, opt_b in zip(full.optimizers, resumed.optimizers):
        for key, value in opt_a.state_dict()["state"].items():
            for field, tensor in value.items():
                assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(opt_b.state_dict()["state"][key][field]))
    assert full.global_step == resumed.global_step


# -- schedulers stepped by lr_scheduler_step, epochs cut short, no optimizer ------------------------------------
class EpochCounter:
    """A scheduler that is no torch LRScheduler: its step takes the epoch, so the module's lr_scheduler_step
    steps it; its state (the epochs seen) is checkpointed like a torch scheduler's."""

    def __init__(self, optimizer) -> None:
        self.optimizer, self.epochs = optimizer, []

    def step(self, epoch):
        self.epochs.append(epoch)

    def state_dict(self):
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state):
        self.epochs = list(state["epochs"])


class SteppedByHook(Net):
    def lr_scheduler_step(self, scheduler, metric):
        if isinstance(scheduler, EpochCounter):
            scheduler.step(epoch=self.current_epoch)
        else:
            super().lr_scheduler_step(scheduler, metric)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.9), "interval": "step"},
                       EpochCounter(opt)]


class WithoutOptimizer(Net):
    def configure_optimizers(self):
        return None


@pytest.mark.parametrize(("cls", "hook", "call"), [
    (SteppedByHook, "on_train_batch_end", 3), (SteppedByHook, "on_train_epoch_end", 1),
    (WithoutOptimizer, "on_train_batch_end", 4)])
def test_resume_is_exact_with_lr_scheduler_step_and_with_no_optimizer(tmp_path, cls, hook, call):
    """max_steps=12 ends the third 5-batch epoch after 2 batches: its epoch scheduler does not step (Lightning)."""
    def trainer(callbacks):
        return Trainer(max_steps=12, seed=5, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                       enable_model_summary=False, callbacks=callbacks)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # WithoutOptimizer's "no optimizer" warning, once per fit
        assert_resume_exact(lambda: cls(init_seed=0), trainer, lambda: (ResumableLoader(loader(0), seed=3),), hook,
                            call, workdir=tmp_path)
    done = trainer([])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        done.fit(cls(init_seed=0), ResumableLoader(loader(0), seed=3))
    assert done.global_step == 12 and done.current_epoch == 3  # the cut-short epoch counts as ended
    if cls is SteppedByHook:
        assert done.lr_scheduler_configs[1].scheduler.epochs == [0, 1]  # not 2: that epoch was cut short
        assert done.lr_scheduler_configs[0].scheduler.last_epoch == 12
