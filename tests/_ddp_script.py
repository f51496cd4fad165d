"""A 2-process DDP run for tests/test_ddp.py: shuffle, dropout, a worker process, accumulation, mid-epoch val.

    torchrun --nproc-per-node 2 tests/_ddp_script.py [--resume latest] [--slow] [--strategy fsdp]
    python tests/_ddp_script.py --devices 2 [--resume latest]     # launches its own workers
    ... --mid-window BATCH                                         # see MidWindow (tests/test_fsdp_resume.py)

Runs in the current directory: checkpoints/ while it runs, final.ckpt at the end.
"""

import argparse
import os
import signal
import time

import torch
from _kill_classifier import NoisyPoints  # this script's directory is on sys.path
from torch import nn
from torch.utils.data import DataLoader

from statemachine_trainer import Callback, Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint


class Classifier(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


class Slow(Callback):
    """Gives a test time to signal one rank mid-epoch."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        time.sleep(0.05)


class MidWindow(Callback):
    """Writes ``mid.ckpt`` at the end of training batch ``batch`` of the first epoch -- an even one, so inside an
    accumulation window of 2 -- then rank 1 SIGKILLs itself as the next batch starts (the launcher stops rank 0)."""

    def __init__(self, batch: int) -> None:
        self.batch, self.saved = batch, False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.batch:
            trainer.request_checkpoint("mid.ckpt")
            self.saved = True

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.saved and trainer.global_rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resume", default=None)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp"))
    parser.add_argument("--mid-window", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = DataLoader(NoisyPoints(200, seed=1), batch_size=8, shuffle=True, num_workers=1)
    val = DataLoader(NoisyPoints(64, seed=2), batch_size=16)
    callbacks = [ModelCheckpoint(dirpath="checkpoints", every_n_train_steps=1, save_top_k=3)]
    if args.slow:
        callbacks.append(Slow())
    if args.mid_window is not None:
        callbacks.append(MidWindow(args.mid_window))
    trainer = Trainer(strategy=args.strategy, devices=args.devices, accelerator="cpu", max_epochs=args.epochs, seed=5,
                      accumulate_grad_batches=2, val_check_interval=0.5, num_sanity_val_steps=0,
                      enable_progress_bar=False, default_root_dir=".", log_every_n_steps=2, callbacks=callbacks)
    trainer.fit(Classifier(), train, val, ckpt_path=args.resume)
    trainer.save_checkpoint("final.ckpt")


if __name__ == "__main__":
    main()
