"""strategy="fsdp" (FSDP2's ``fully_shard``): the Trainer against hand-written FSDP2 loops, a world of one, refusals.

``tests/_fsdp_worker.py`` runs, in one torchrun job of 2 CPU processes (gloo), each optimization mode through the
Trainer and through a loop written with torch's own calls, and compares the full weights bit for bit.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, ConfigError, Trainer, TrainingModule
from statemachine_trainer.strategies import FSDPStrategy

WORKER = str(Path(__file__).parent / "_fsdp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TIMEOUT = 240
VARIANTS = ("automatic", "accumulate_clip_norm", "clip_value", "bf16_wrap_linear", "yield_two_optimizers", "manual")
WINDOW_CHECKS = ("window_grads", "window_grads_bf16")


def test_every_optimization_mode_matches_a_hand_written_fsdp2_loop_bit_for_bit(tmp_path):
    """One optimizer; accumulation over 2 batches (set_requires_gradient_sync) with norm clipping on DTensor
    gradients; value clipping; bf16-mixed as a MixedPrecisionPolicy with a class-set wrap policy; two optimizers
    with a generator step; manual optimization with toggle_optimizer, no_backward_sync and clip_gradients.  And
    the gradients an accumulation window holds inside FSDP, captured and restored (for checkpoints)."""
    done = subprocess.run([*TORCHRUN, WORKER, *VARIANTS, *WINDOW_CHECKS], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.split()[:1] != []}
    assert set(VARIANTS) <= lines.keys(), done.stdout
    for variant in VARIANTS:
        _, verdict, _hand_steps, trained, _global_step, synced, *differ = lines[variant]
        assert verdict == "equal" and trained == "True", (variant, differ)
        assert synced == ("-" if "optimizers" in variant or variant == "manual" else "True")  # sync_dist as DDP
    # The step counts the Trainer reports: 7 batches a rank for 2 epochs; accumulation 2 closes after batch 2, 4,
    # 6 and the epoch's last; two optimizers step twice a batch; manual: G every batch, D every 2nd of 8.
    assert [lines[v][4] for v in VARIANTS] == ["14", "8", "14", "14", "32", "24"]
    # Inside an accumulation window FSDP holds each rank's unsharded gradients itself (not on param.grad):
    # window_grads() reads all 6, restore_window_grads() puts them into a fresh sharded copy, whose gradients after
    # the window's last backward are then the same bit for bit; outside a window there are none.  Under bf16-mixed
    # they are held upcast to the float32 reduce dtype.
    assert [lines[name][1:] for name in WINDOW_CHECKS] == [["equal", "6", "True", "float32"]] * 2


class Tiny(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))

    def training_step(self, batch, batch_idx):
        return self(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val", self(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _fit(strategy, ckpt_path=None, **flags) -> tuple[Tiny, Trainer]:
    data = TensorDataset(torch.randn(24, 3, generator=torch.Generator().manual_seed(1)))
    module = Tiny()
    trainer = Trainer(strategy=strategy, devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, **{"enable_checkpointing": False, **flags})
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8), ckpt_path=ckpt_path)
    return module, trainer


def test_a_world_of_one_still_shards_and_trains_as_one_process_bit_for_bit():
    """devices=1 under "fsdp": a mesh of one, the parameters DTensors (the state set's shape does not depend on
    the world size); accumulation, clipping and evaluation (under no_grad, not inference_mode) included, the same
    weights bit for bit as strategy="auto"."""
    from torch.distributed.tensor import DTensor

    flags = {"accumulate_grad_batches": 2, "gradient_clip_val": 0.1}
    sharded, trainer = _fit("fsdp", **flags)
    plain, _ = _fit("auto", **flags)
    assert isinstance(sharded.body.weight, DTensor) and trainer.strategy.name == "fsdp"
    for name, param in plain.named_parameters():
        assert torch.equal(dict(sharded.named_parameters())[name].full_tensor(), param), name
    assert "val" in trainer.callback_metrics
    (again,) = trainer.validate(sharded, DataLoader(TensorDataset(torch.ones(8, 3)), batch_size=4))  # sharded already
    alone = Trainer(strategy="fsdp", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False)
    (fresh,) = alone.validate(Tiny(), DataLoader(TensorDataset(torch.ones(8, 3)), batch_size=4))  # sharded here
    assert again["val"] != fresh["val"]  # trained vs initial weights, both evaluated through FSDP


def test_a_world_of_one_writes_sharded_checkpoints_and_resumes_from_one_mid_window_bit_for_bit(tmp_path):
    """In a world of one the checkpoint is already the sharded format (DCP shards, format version 3); resuming
    from a checkpoint taken inside an accumulation window (FSDP then holds the gradients itself) ends with the
    uninterrupted run's weights, bit for bit (tests/test_cuda.py repeats it on a GPU)."""
    resume_mid_window_exactly(tmp_path)


def resume_mid_window_exactly(tmp_path, **flags) -> None:
    """A world-of-one FSDP run resumed from a checkpoint inside an accumulation window equals the whole run."""
    from statemachine_trainer.callbacks import ModelCheckpoint
    from statemachine_trainer.checkpoint import load_checkpoint_parts, read_manifest

    flags = {"accumulate_grad_batches": 3, "default_root_dir": str(tmp_path), **flags}
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=1, save_top_k=-1)  # none mid-window
    whole, _ = _fit("fsdp", enable_checkpointing=True, callbacks=[saver], **flags)
    mid = tmp_path / "mid.ckpt"

    class SaveMidWindow(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 2 and batch_idx == 1 and not mid.exists():  # 2 of 3 micro-batches held
                trainer.request_checkpoint(mid)

    _fit("fsdp", callbacks=[SaveMidWindow()], **flags)
    manifest = read_manifest(mid)
    assert manifest["format_version"] == 3 and manifest["world_size"] == 1
    assert any(name.startswith("shards/__0_") for name in manifest["files"])
    _, own, _ = load_checkpoint_parts(mid)  # no process group here: a world of one, the shards read whole
    assert sorted(own["held_grads"]) == ["body.bias", "body.weight", "head.bias", "head.weight"]

    resumed, _ = _fit("fsdp", ckpt_path=str(mid), **flags)
    for name, param in whole.named_parameters():
        assert torch.equal(dict(resumed.named_parameters())[name].full_tensor(), param.full_tensor()), name


@pytest.mark.parametrize(("options", "fragment"), [
    ({"wrap": "Linear"}, "pass None (each direct child with parameters), a set"),
    ({"wrap": nn.Linear}, "pass None (each direct child with parameters), a set"),
    ({"wrap": {int}}, "must name nn.Module subclasses"),
    ({"wrap": set()}, "must name nn.Module subclasses"),
    ({"mixed_precision": "bf16"}, "pass a torch.distributed.fsdp.MixedPrecisionPolicy"),
    ({"reshard_after_forward": 2}, "must be True or False"),
])
def test_a_bad_option_fails_when_the_strategy_is_built(options, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        FSDPStrategy(**options)


@pytest.mark.parametrize(("flags", "fragment"), [
    ({"strategy": "fsdp", "devices": 0}, "devices=0 must be an int >= 1"),
    ({"strategy": FSDPStrategy(), "devices": "two"}, "devices='two' must be an int >= 1"),
    ({"strategy": "fsdp", "sync_batchnorm": True}, "sync_batchnorm=True needs CUDA devices"),
])
def test_bad_flags_with_fsdp_fail_at_construction(flags, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Trainer(**flags)


def test_the_wrap_policy_picks_units_innermost_first_and_the_module_is_the_root():
    from statemachine_trainer._fsdp import _post_order

    module = Tiny()
    assert [m for m in _post_order(module) if FSDPStrategy().selects(module)(m)] == [module.body, module.head]
    assert [m for m in _post_order(module) if FSDPStrategy(wrap=lambda m: m is module.head).selects(module)(m)] \
        == [module.head]
    assert _post_order(module).__next__() is module.body and list(_post_order(module))[-1] is module


def test_lightnings_import_name_is_ours_and_the_other_strategy_classes_still_say_what_to_pass():
    from statemachine_trainer import strategies
    from statemachine_trainer._refused import UnsupportedError

    assert strategies.FSDPStrategy is FSDPStrategy
    with pytest.raises(UnsupportedError, match="strategy='ddp'"):
        strategies.DDPStrategy  # noqa: B018


def test_the_digits_example_runs_under_fsdp(tmp_path):
    digits = str(Path(__file__).parents[1] / "examples" / "digits.py")
    done = subprocess.run([sys.executable, digits, "--strategy", "fsdp", "--devices", "2", "--epochs", "3",
                           "--root", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT,
                          check=True)
    assert done.stdout.splitlines()[-1].startswith("val_acc=")
