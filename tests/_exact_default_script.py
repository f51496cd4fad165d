"""A run with plain ``DataLoader``s and no resume-specific code; tests/test_exact_by_default.py kills it.

Shuffled training data with an augmentation drawn in the collate function
(torch, ``random`` and NumPy), dropout, validation twice per epoch from a
plain validation ``DataLoader``, and a checkpoint after every step.  Nothing
here mentions resumable data: ``Trainer(resumable_data=True)`` (the
default) is what makes a mid-epoch kill resume exactly.  Usage::

    python tests/_exact_default_script.py ROOT [--resume latest] [--workers N] [--opt-out] [--kill-at-step S]
    python tests/_exact_default_script.py ROOT --strategy ddp --devices 2 --seen   # which samples each rank read

writes ROOT/checkpoints/*.ckpt while it runs and ROOT/final.ckpt at the end
(with ``--seen``, ROOT/seen-rank<r>.json: the sample indices rank r trained on).
``--kill-at-step S`` sends the process SIGKILL itself in the S-th step's
``on_train_batch_end``, before that step's checkpoint: a kill at a known
mid-epoch position, for a test whose outcome must not depend on timing.
"""

import argparse
import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint


def augment(samples):
    """Batch the samples and add noise drawn from all three global RNGs: an augmentation in collate_fn."""
    index = torch.stack([s[0] for s in samples])
    x = torch.stack([s[1] for s in samples])
    y = torch.stack([s[2] for s in samples])
    x = x + 0.1 * torch.randn_like(x) + 0.01 * random.random() + 0.01 * float(np.random.rand())
    return index, x, y


class Classifier(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        index, x, y = batch
        self.seen.extend(index.tolist())
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        _, x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class KillAtStep(Callback):
    """SIGKILL this process in step ``step``'s on_train_batch_end (before ModelCheckpoint, which runs last)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def points(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(torch.arange(n), x, (x.sum(1) > 0).long())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--opt-out", action="store_true", help="Trainer(resumable_data=False)")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--seen", action="store_true", help="write the sample indices this rank trained on")
    parser.add_argument("--kill-at-step", type=int, default=None, help="SIGKILL itself in this step's batch end")
    args = parser.parse_args()
    root = Path(args.root)
    torch.set_num_threads(1)
    workers = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
    train = DataLoader(points(96, seed=1), batch_size=8, shuffle=True, collate_fn=augment, **workers)
    val = DataLoader(points(32, seed=2), batch_size=16, collate_fn=augment, **workers)
    saver = ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=1, save_top_k=3)
    trainer = Trainer(max_epochs=2, seed=5, val_check_interval=0.5, num_sanity_val_steps=0,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      callbacks=[saver] + ([] if args.kill_at_step is None else [KillAtStep(args.kill_at_step)]),
                      resumable_data=not args.opt_out, strategy=args.strategy,
                      devices=args.devices)
    module = Classifier()
    trainer.fit(module, train, val, ckpt_path=args.resume)
    trainer.save_checkpoint(root / "final.ckpt")
    if args.seen:
        (root / f"seen-rank{trainer.global_rank}.json").write_text(json.dumps(module.seen))


if __name__ == "__main__":
    main()
