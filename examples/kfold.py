"""K-fold cross-validation as a custom transition table, crashed mid-fold and resumed exactly.

Run:  python examples/kfold.py [--folds K] [--epochs E] [--seed N] [--crash-in-fold F] [--fast-dev-run]

Cross-validation is a loop with its own states, so it is written as a table
(see ``KFOLD_TABLE`` below): FOLD sets up fold k (a fresh model; the split is a
pure function of the seed and k), TRAIN trains it -- a whole
``Trainer.fit`` on the other k-1 folds of scikit-learn's bundled digits --
EVALUATE scores it on the held-out fold, and the loop goes round until every
fold is scored.  The loop's own state (the seed, which fold, the scores so
far) is an attrs class, so ``loop.state_dict()`` is the whole position of the
cross-validation as JSON.

The script crashes the run half-way through one fold's training, rebuilds
everything from scratch (new loop, new model, other seed) from the last
snapshot, resumes, and checks the per-fold scores against an uninterrupted
run.  A snapshot is taken at every transition boundary of the fold loop and
holds the state set plus the model's weights.  A crash *inside*
``Trainer.fit`` resumes at the boundary before TRAIN: that fold restarts from
its beginning -- same fresh weights, same fold seed for shuffling -- so it ends
bit-identical to the uninterrupted fold.  (Resuming inside the fold's fit
would also need the Trainer's own checkpoint; restarting one fold is simpler
and costs at most one fold of work.)

Prints ``fold=<k> acc=<v>`` per fold and ``mean_acc=<v>`` last.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import END, START, Loop, Row, Table
from statemachine_trainer.callbacks import Callback
from statemachine_trainer.module import TrainingModule
from statemachine_trainer.trainer import Trainer, seed_everything


class Classifier(TrainingModule):
    """A 64 -> 64 -> 10 MLP on 8x8 digit images."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# --- loop ---
KFOLD_TABLE = Table(
    name="KFoldCV",
    states=(START, "FOLD", "TRAIN", "EVALUATE", END),
    rows=(
        Row("run", START, "FOLD", hooks="reset"),
        Row("next", "FOLD", END, conditions="all_scored"),
        Row("next", "FOLD", "TRAIN", hooks="new_model"),  # fresh weights for fold k
        Row("next", "TRAIN", "EVALUATE", hooks="train_fold"),  # Trainer.fit on the other k-1 folds
        Row("next", "EVALUATE", "FOLD", hooks="evaluate_fold"),  # score fold k, then k += 1
    ),
)


@attrs.define
class KFoldFields:
    seed: int = 0  # seeds the split, each fold's init and shuffling; saved, so a resume needs no flags
    folds: int = 5  # k; >= 2
    fold: int = 0  # the fold being set up / trained / scored; 0 <= fold <= folds
    scores: list[float] = attrs.Factory(list)  # held-out accuracy of folds 0..fold-1; len(scores) == fold


class KFoldCV(Loop):
    table = KFOLD_TABLE
    fields_class = KFoldFields

    def __init__(self, x: torch.Tensor, y: torch.Tensor, folds: int = 5, epochs: int = 5, seed: int = 0,
                 trainer_kwargs: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> None:
        super().__init__()
        self.name = "kfold"  # the key of this loop in state_dict() (the default would be "k_fold_c_v")
        self.x, self.y, self.folds, self.epochs, self.seed = x, y, folds, epochs, seed
        self.trainer_kwargs, self.log = trainer_kwargs or {}, log
        self.model = Classifier()  # replaced per fold by new_model, or loaded from a snapshot

    @property
    def all_scored(self) -> bool:
        return self.fields.fold >= self.fields.folds

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, held-out) indices of the current fold: recomputed from fields, so never stale after a resume."""
        splitter = StratifiedKFold(self.fields.folds, shuffle=True, random_state=self.fields.seed)
        return list(splitter.split(self.x, self.y))[self.fields.fold]

    def reset(self) -> None:
        self.fields = KFoldFields(seed=self.seed, folds=self.folds)

    def new_model(self) -> None:
        seed_everything(self.fields.seed + self.fields.fold)  # the fold's initial weights depend only on seed and k
        self.model = Classifier()

    def train_fold(self) -> None:
        train, _ = self.split()
        loader = DataLoader(TensorDataset(self.x[train], self.y[train]), batch_size=64, shuffle=True)
        # seed= reseeds every RNG at the start of fit: a restarted fold shuffles exactly as the first try did.
        trainer = Trainer(max_epochs=self.epochs, seed=self.fields.seed + self.fields.fold, accelerator="cpu",
                          logger=False, enable_progress_bar=False, enable_checkpointing=False, **self.trainer_kwargs)
        trainer.fit(self.model, loader)

    def evaluate_fold(self) -> None:
        _, held_out = self.split()
        self.model.eval()
        with torch.no_grad():
            predicted = self.model(self.x[held_out]).argmax(dim=1)
        accuracy = (predicted == self.y[held_out]).float().mean().item()
        self.fields.scores.append(accuracy)
        self.log(f"fold={self.fields.fold} acc={accuracy:.4f}")
        self.fields.fold += 1
# --- loop ---


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)  # 1797 8x8 images, bundled with scikit-learn (no download)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)  # pixels are 0..16


def snapshot(loop: KFoldCV) -> dict[str, Any]:
    """What a checkpoint of this run holds: the loop's state set (JSON) and the current model's weights."""
    return {"loops": json.loads(json.dumps(loop.state_dict())),
            "model": {k: v.clone() for k, v in loop.model.state_dict().items()}}  # clone: training updates in place


def restore(loop: KFoldCV, saved: dict[str, Any]) -> None:
    loop.load_state_dict(saved["loops"])
    loop.model.load_state_dict(saved["model"])


class Interrupted(Exception):
    """Stands in for a crash (or a SIGKILL) at a chosen point of the run."""


class CrashMidFold(Callback):
    """Raises ``Interrupted`` when the ``fold``-th fit of the run reaches epoch ``epoch``: a crash inside TRAIN."""

    def __init__(self, fold: int, epoch: int) -> None:
        self.fold, self.epoch, self.fits = fold, epoch, 0

    def on_fit_start(self, trainer: Trainer, module: TrainingModule) -> None:
        self.fits += 1  # one fit per fold, so in a run from scratch fit number k + 1 trains fold k

    def on_train_epoch_start(self, trainer: Trainer, module: TrainingModule) -> None:
        if self.fits - 1 == self.fold and trainer.current_epoch == self.epoch:
            raise Interrupted


def run_with_snapshots(loop: KFoldCV, crash_at_boundary: int | None = None) -> dict[str, Any]:
    """Run ``loop``, snapshotting at every transition boundary; return the last snapshot when it is interrupted.

    ``crash_at_boundary=n`` raises ``Interrupted`` right after the n-th snapshot (counted from 1).  Other crashes
    (e.g. a ``CrashMidFold`` callback) propagate the same way.  Returns the last snapshot, as a crashed process
    would have left it on disk.
    """
    saved: dict[str, Any] = {}
    count = [0]

    def observer(_: Loop) -> None:
        count[0] += 1
        saved.update(snapshot(loop))
        if count[0] == crash_at_boundary:
            raise Interrupted

    loop.observe(observer)
    try:
        loop.run()
    except Interrupted:
        pass
    finally:
        loop.observe(None)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per fold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crash-in-fold", type=int, default=2, help="fold whose training crashes; -1: none")
    parser.add_argument("--fast-dev-run", action="store_true", help="2 batches per fold's fit, 2 folds")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a 64-wide MLP: threads cost more in hand-off than they save
    folds = 2 if args.fast_dev_run else args.folds
    trainer_kwargs = {"fast_dev_run": 2} if args.fast_dev_run else {}
    x, y = load_data()

    crash_fold = min(args.crash_in_fold, folds - 1)
    crashed = KFoldCV(x, y, folds, args.epochs, args.seed, trainer_kwargs)
    if crash_fold >= 0:
        epoch = 0 if args.fast_dev_run else args.epochs // 2
        crashed.trainer_kwargs = {**trainer_kwargs, "callbacks": [CrashMidFold(crash_fold, epoch)]}
    saved = run_with_snapshots(crashed)
    if crashed.state != END:
        print(f"crashed during fold {crashed.fields.fold}'s training; resuming from the last snapshot")
        # A fresh loop and model, built with another seed: what matters must come from the snapshot.
        resumed = KFoldCV(x, y, folds, args.epochs, args.seed + 1, trainer_kwargs)
        restore(resumed, saved)
        print(f"resuming at {resumed.position}: fold {resumed.fields.fold} restarts from its beginning")
        resumed.run()
    else:
        resumed = crashed

    reference = KFoldCV(x, y, folds, args.epochs, args.seed, trainer_kwargs, log=lambda _: None)
    reference.run()
    same = resumed.fields.scores == reference.fields.scores
    print(f"resumed run matches an uninterrupted run fold for fold: {same}")
    print(f"mean_acc={float(np.mean(resumed.fields.scores)):.4f}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
