"""K-fold cross-validation as a loop that wraps the Trainer's fit loop: one tree, one checkpoint, exact resume.

Run:  python examples/kfold.py [--folds 5] [--epochs 5] [--seed 0] [--root runs/kfold] [--checkpoint-every 20]
      python examples/kfold.py --root runs/kfold --resume latest     # after a kill -9, anywhere

As in Lightning 1.5's K-fold example, the cross-validation loop *wraps* the
fit loop: ``kfold.connect(fit_loop=trainer.fit_loop); trainer.fit_loop =
kfold``, and its TRAIN transition runs ``self.fit_loop.run()``.  So the
Trainer checkpoints the whole tree -- which fold, the scores so far, the fit
loop's position inside the fold, weights, optimizers, RNGs, the data
position -- and a run killed mid-fold, mid-epoch, between folds or while
scoring a fold resumes exactly where it was (``--resume latest``).

The table (``KFOLD_TABLE``): FOLD starts fold k (fresh weights from the seed
and k, fresh optimizers, fold k's split), TRAIN fits it on the other k-1
folds of scikit-learn's bundled digits, EVALUATE runs the test loop on the
held-out fold; round again until every fold is scored.  What the loop keeps
across a checkpoint is its ``fields`` (the fold and the scores); the data is
rebuilt from them in ``on_restart``.

Prints ``fold=<k> acc=<v>`` per fold and ``mean_acc=<v>`` last.
"""

from __future__ import annotations

import argparse
from typing import Any

import attrs
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import END, START, Row, Table, Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.loops import EvaluationLoop, FitLoop, TrainerLoop
from statemachine_trainer.script import add_run_flags, save_final, trainer_kwargs


class Classifier(TrainingModule):
    """A 64 -> 64 -> 10 MLP with dropout on 8x8 digit images."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                       torch.nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(dim=1) == y).float().mean(), batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# --- loop ---
KFOLD_TABLE = Table(
    name="KFold",
    states=(START, "FOLD", "TRAIN", "EVALUATE", END),
    rows=(
        Row("run", START, "FOLD", hooks="reset"),
        Row("next", "FOLD", END, conditions="all_scored"),
        Row("next", "FOLD", "TRAIN", hooks="new_fold"),  # fresh weights and optimizers, fold k's split
        Row("next", "TRAIN", "EVALUATE", hooks="train_fold"),  # the Trainer's fit loop on the other folds
        Row("next", "EVALUATE", "FOLD", hooks="evaluate_fold"),  # the test loop on fold k, then k += 1
    ),
)


@attrs.define
class KFoldFields:
    fold: int = 0  # the fold being started / trained / scored; 0 <= fold <= folds
    scores: list[float] = attrs.Factory(list)  # held-out accuracy of folds 0..fold-1; len(scores) == fold


class KFold(TrainerLoop):
    table = KFOLD_TABLE
    fields_class = KFoldFields

    def __init__(self, x: torch.Tensor, y: torch.Tensor, folds: int = 5, seed: int = 0) -> None:
        super().__init__()
        self.name = "kfold"
        self.x, self.y, self.folds, self.seed = x, y, folds, seed
        self.fit_loop = FitLoop()  # connect(fit_loop=trainer.fit_loop) puts the Trainer's own here
        self.test_loop = EvaluationLoop("test")
        self.splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))

    @property
    def all_scored(self) -> bool:
        return self.fields.fold >= self.folds

    def reset(self) -> None:
        self.fields = KFoldFields()

    def on_restart(self) -> None:
        # Resumed from a checkpoint: the data is not in it (its position is), the fold is. Rebuild it.
        if not self.all_scored:
            self.use_fold_data()

    def new_fold(self) -> None:
        run = self.context
        run.reset_parameters(seed=self.seed + self.fields.fold)  # fold k starts from the same weights every run
        run.reset_optimizers()
        self.use_fold_data()

    def train_fold(self) -> None:
        self.fit_loop.run()

    def evaluate_fold(self) -> None:
        accuracy = self.test_loop.run()["test_acc"]
        self.fields.scores.append(accuracy)
        print(f"fold={self.fields.fold} acc={accuracy:.4f}")
        self.fields.fold += 1

    def use_fold_data(self) -> None:
        """Fold k's loaders: a pure function of the seed and k (the shuffle order is seeded per fold)."""
        train, held_out = self.splits[self.fields.fold]
        fit_data = DataLoader(TensorDataset(self.x[train], self.y[train]), batch_size=64, shuffle=True)
        test_data = DataLoader(TensorDataset(self.x[held_out], self.y[held_out]), batch_size=128)
        self.context.use_data(train=ResumableLoader(fit_data, seed=self.seed + self.fields.fold),
                              test=ResumableLoader(test_data, seed=self.seed))
# --- loop ---


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)  # 1797 8x8 images, bundled with scikit-learn (no download)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)  # pixels are 0..16


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per fold")
    add_run_flags(parser, max_steps_counts="optimizer steps per fold", checkpoint_every=20,
                  fast_dev_run="2 folds of 2 batches each")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a 64-wide MLP: threads cost more in hand-off than they save
    x, y = load_data()

    trainer = Trainer(max_epochs=args.epochs, num_sanity_val_steps=0, **trainer_kwargs(args))
    kfold = KFold(x, y, folds=2 if args.fast_dev_run else args.folds, seed=args.seed)
    kfold.connect(fit_loop=trainer.fit_loop)
    trainer.fit_loop = kfold
    trainer.fit(Classifier(), ckpt_path=args.resume)  # the loop brings each fold's data itself
    save_final(trainer, args)
    mean = sum(kfold.fields.scores) / len(kfold.fields.scores)
    print(f"mean_acc={mean:.4f}")
    return mean


if __name__ == "__main__":
    main()
