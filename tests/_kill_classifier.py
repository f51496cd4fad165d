"""A run with every source of nondeterminism a resume must reproduce; tests/test_kill_resume.py kills it.

Shuffled data with a random augmentation drawn in two worker processes,
dropout, gradient accumulation over 3 batches, validation twice per epoch,
ReduceLROnPlateau on the validation loss, a logged epoch mean, a CSV log, and
a checkpoint after every optimizer step.  Usage::

    python tests/_kill_classifier.py ROOT [--resume latest] [--accelerator cuda] [--precision bf16-mixed]

writes ROOT/checkpoints/*.ckpt while it runs and ROOT/final.ckpt at the end.
"""

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statemachine_trainer import Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.data import ResumableLoader


class NoisyPoints(Dataset):
    """Points with fresh Gaussian noise at every read: an augmentation drawn from the global torch RNG."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(6), self.y[i]


class Classifier(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32")
    args = parser.parse_args()
    root = Path(args.root)
    torch.set_num_threads(1)
    train = ResumableLoader(DataLoader(NoisyPoints(240, seed=1), batch_size=8, shuffle=True, num_workers=2),
                            seed=3)
    val = ResumableLoader(DataLoader(NoisyPoints(64, seed=2), batch_size=32, num_workers=2), seed=4)
    saver = ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=1, save_top_k=4)
    trainer = Trainer(accelerator=args.accelerator, precision=args.precision, deterministic=True,
                      max_epochs=2, seed=5, accumulate_grad_batches=3, val_check_interval=0.5,
                      num_sanity_val_steps=0, enable_progress_bar=False, default_root_dir=root,
                      log_every_n_steps=2, callbacks=[saver])
    trainer.fit(Classifier(), train, val, ckpt_path=args.resume)
    trainer.save_checkpoint(root / "final.ckpt")


if __name__ == "__main__":
    main()
