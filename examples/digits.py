"""Handwritten digits (scikit-learn's bundled 8x8 images) with an MLP: the README's main example.

Run:  python examples/digits.py [--epochs 20] [--seed 0] [--fast-dev-run] [--root runs/digits] [--max-steps N]
      python examples/digits.py --resume last      # continue from the last checkpoint of a previous run
      python examples/digits.py --resume latest    # ... or from the newest valid one (after a kill -9)
      torchrun --nproc-per-node 2 examples/digits.py --strategy ddp   # two processes (DDP, gloo on CPU)
      python examples/digits.py --strategy ddp --devices 2            # the same, launching its own workers
      python examples/digits.py --strategy fsdp --devices 2           # FSDP2: parameters sharded over the 2

What it shows: a TrainingModule with training/validation/test steps, a
torchmetrics accuracy logged as a Metric object (computed and reset each
epoch), Adam with a cosine LR schedule, ModelCheckpoint keeping the best epoch
by validation accuracy plus ``last.ckpt``, and a final validation of the best
checkpoint.  The last line printed is ``val_acc=<accuracy of the best checkpoint>``.
The data ships inside scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torchmetrics
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Trainer, TrainingModule, seed_everything
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.script import add_run_flags, save_final, trainer_kwargs


class DigitsClassifier(TrainingModule):
    def __init__(self, hidden: int = 128, lr: float = 3e-3, epochs: int = 20) -> None:
        super().__init__()
        self.lr, self.epochs = lr, epochs
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(hidden, 10),
        )
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.val_acc(logits, y)  # accumulates; the logged Metric is computed and reset at epoch end
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


def digits_loaders(seed: int, batch_size: int = 64) -> tuple[ResumableLoader, DataLoader]:
    """80/20 stratified split, standardised with the training split's statistics."""
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    x_train, x_val = torch.tensor(x_train, dtype=torch.float32), torch.tensor(x_val, dtype=torch.float32)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6  # some border pixels are always 0: avoid dividing by 0
    train = TensorDataset((x_train - mean) / std, torch.tensor(y_train))
    val = TensorDataset((x_val - mean) / std, torch.tensor(y_val))
    # ResumableLoader: a seeded shuffle whose position is in every checkpoint, so a mid-epoch resume is exact.
    return ResumableLoader(DataLoader(train, batch_size=batch_size, shuffle=True), seed=seed), \
        DataLoader(val, batch_size=256)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    add_run_flags(parser, root="runs/digits", checkpoint_every=100)  # also: --resume last (ROOT/checkpoints/last.ckpt)
    parser.add_argument("--strategy", default="auto", choices=("auto", "ddp", "fsdp"),
                        help="'ddp': one process per device; 'fsdp': the same, parameters sharded (FSDP2)")
    parser.add_argument("--devices", type=int, default=None,
                        help="processes with --strategy ddp|fsdp (default: torchrun's --nproc-per-node, else 1)")
    parser.add_argument("--num-nodes", type=int, default=1,
                        help="machines of a --strategy ddp|fsdp run (torchrun's --nnodes)")
    parser.add_argument("--global-batch-size", type=int, default=None,
                        help="samples per optimizer step at any world size (a multiple of 64 * processes): a "
                             "checkpoint then resumes at another world size (README 'Elastic resume')")
    args = parser.parse_args(argv)
    devices = args.devices or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    torch.set_num_threads(1)  # a tiny MLP: one thread beats two (no cross-thread sync per op)
    seed_everything(args.seed)  # model initialisation; the Trainer reseeds the run itself with seed=
    train_loader, val_loader = digits_loaders(args.seed)
    module = DigitsClassifier(epochs=args.epochs)
    best = ModelCheckpoint(dirpath=Path(args.root) / "checkpoints", monitor="val_acc", mode="max", save_last=True)
    # The common flags' checkpoints every --checkpoint-every steps, plus the best epoch by val_acc and last.ckpt.
    trainer = Trainer(max_epochs=args.epochs, strategy=args.strategy, devices=devices, num_nodes=args.num_nodes,
                      global_batch_size=args.global_batch_size,
                      **trainer_kwargs(args, callbacks=[best], logger=True, enable_progress_bar=True))
    resume = Path(args.root) / "checkpoints" / "last.ckpt" if args.resume == "last" else args.resume
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume)
    save_final(trainer, args)

    ckpt_path = None if args.fast_dev_run else "best"
    (result,) = trainer.validate(module, val_loader, ckpt_path=ckpt_path)
    if trainer.is_global_zero:  # every rank has the same (synced) result; one of them prints it
        print(f"best checkpoint: {best.best_model_path or '(none in fast-dev-run)'}")
        print(f"val_acc={result['val_acc']:.4f}")
    return result["val_acc"]


if __name__ == "__main__":
    main()
