"""A fit whose data depends on its data module's state; tests/test_datamodule.py kills it and resumes it.

The data module counts the batches trained so far (``seen``, its
``state_dict``), and every sample it serves is shifted by that count: a
resume that did not give the data module its state back would train on
other data, and end with other weights.  Usage::

    python tests/_kill_datamodule.py ROOT [--resume latest] [--forget-state]

writes ROOT/checkpoints/*.ckpt (one per step) and ROOT/final.ckpt.
``--forget-state`` drops the saved state on load: the negative control.
"""

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statemachine_trainer import DataModule, Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.data import ResumableLoader


class Shifted(Dataset):
    """Fixed points, shifted by how many batches the data module has seen when they are read."""

    def __init__(self, n: int, seed: int, source: "Drifting") -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x.sum(1) > 0).long()
        self.source = source

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.05 * self.source.seen, self.y[i]


class Drifting(DataModule):
    def __init__(self, forget: bool = False) -> None:
        super().__init__()
        self.seen = 0
        self.forget = forget

    def setup(self, stage):
        self.train_set = Shifted(96, 1, self)

    def train_dataloader(self):
        return ResumableLoader(DataLoader(self.train_set, batch_size=8, shuffle=True), seed=3)

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state_dict):
        if not self.forget:
            self.seen = state_dict["seen"]


class Classifier(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.trainer.datamodule.seen += 1

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--forget-state", action="store_true")
    args = parser.parse_args()
    root = Path(args.root)
    torch.set_num_threads(1)
    saver = ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=1, save_top_k=4)
    trainer = Trainer(max_epochs=2, seed=5, enable_progress_bar=False, logger=False, default_root_dir=root,
                      callbacks=[saver])
    model = Classifier()  # built after Trainer(seed=5): the same weights in every run
    trainer.fit(model, datamodule=Drifting(forget=args.forget_state), ckpt_path=args.resume)
    trainer.save_checkpoint(root / "final.ckpt")


if __name__ == "__main__":
    main()
