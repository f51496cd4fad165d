"""Active learning as a custom transition table: train, score the unlabelled pool, label the top k, repeat.

Run:  python examples/active_learning.py [--k K] [--budget B] [--seed N] [--fast-dev-run]

The loop's states are the steps of pool-based active learning (see
``ACTIVE_TABLE`` below).  TRAIN fits a fresh classifier on the labelled
examples (a ``Trainer.fit``) and measures its accuracy on a held-out test
split; SCORE computes every unlabelled example's predictive entropy and picks
the k most uncertain, or ends the run once the labelling budget is spent or
the pool is empty; LABEL asks the oracle -- here, the digits' true labels --
and moves the picked examples from the pool to the labelled set.

All of the loop's state -- labelled and pool indices, the picks awaiting
labels, the round, the accuracy history -- is an attrs class, so
``loop.state_dict()`` is plain JSON.  A checkpoint at any transition boundary
is that plus the model's weights (see ``kfold.py``, which crashes and resumes
a loop of this kind).

The script runs the loop twice on the same budget: picking by uncertainty,
then picking at random (the baseline).  Accuracy grows with the rounds, and
the uncertainty picks reach a higher final accuracy.  Prints
``round=<r> labelled=<n> acc=<v>`` per round and ``final_acc=<v>`` last.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import attrs
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import END, START, Loop, Row, Table
from statemachine_trainer.module import TrainingModule
from statemachine_trainer.trainer import Trainer, seed_everything


class Classifier(TrainingModule):
    """A 64 -> 64 -> 10 MLP on 8x8 digit images."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Weight decay: with a few dozen labels an unregularised MLP is confidently wrong, which blunts entropy.
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=1e-2)


# --- loop ---
ACTIVE_TABLE = Table(
    name="ActiveLearning",
    states=(START, "TRAIN", "SCORE", "LABEL", END),
    rows=(
        Row("run", START, "TRAIN", hooks="reset"),  # label a small random seed set
        Row("next", "TRAIN", "SCORE", hooks="train_round"),  # fresh model on the labelled set; test accuracy
        Row("next", "SCORE", END, conditions="finished"),  # budget spent or pool empty
        Row("next", "SCORE", "LABEL", hooks="pick"),  # the k most uncertain pool items
        Row("next", "LABEL", "TRAIN", hooks="label"),  # the oracle labels them
    ),
)


@attrs.define
class PoolFields:
    seed: int = 0  # seeds the initial labelled set, each round's init and the random baseline's picks
    labelled: list[int] = attrs.Factory(list)  # indices with known labels, in labelling order; disjoint from pool
    pool: list[int] = attrs.Factory(list)  # unlabelled indices; labelled + pool is every training index
    picked: list[int] = attrs.Factory(list)  # chosen in SCORE, labelled in LABEL; empty in every other state
    round: int = 0  # training rounds finished; == len(history)
    history: list[float] = attrs.Factory(list)  # test accuracy after each round


class ActiveLearning(Loop):
    table = ACTIVE_TABLE
    fields_class = PoolFields

    def __init__(self, data: dict[str, torch.Tensor], k: int = 20, initial: int = 20, budget: int = 200,
                 strategy: str = "entropy", seed: int = 0, trainer_kwargs: dict[str, Any] | None = None,
                 log: Callable[[str], None] = print) -> None:
        super().__init__()
        self.data, self.k, self.initial, self.budget, self.strategy, self.seed = data, k, initial, budget, strategy, seed
        self.trainer_kwargs, self.log = trainer_kwargs or {"max_steps": 60}, log
        self.model = Classifier()

    @property
    def finished(self) -> bool:
        return len(self.fields.labelled) >= self.budget or not self.fields.pool

    def reset(self) -> None:
        order = torch.randperm(len(self.data["y"]), generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.fields = PoolFields(seed=self.seed, labelled=order[:self.initial], pool=sorted(order[self.initial:]))

    def train_round(self) -> None:
        seed_everything(self.fields.seed + self.fields.round)  # retrain from scratch: init depends on (seed, round) only
        self.model = Classifier()
        index = self.fields.labelled
        # Full batch (a few hundred examples at most): a smooth fit, so rounds differ by their labels, not by noise.
        loader = DataLoader(TensorDataset(self.data["x"][index], self.data["y"][index]), batch_size=len(index))
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                **self.trainer_kwargs).fit(self.model, loader)
        accuracy = (self.predict(self.data["x_test"]).argmax(1) == self.data["y_test"]).float().mean().item()
        self.fields.history.append(accuracy)
        self.fields.round += 1
        self.log(f"round={self.fields.round} labelled={len(index)} acc={accuracy:.4f}")

    def pick(self) -> None:
        pool = self.fields.pool
        k = min(self.k, self.budget - len(self.fields.labelled), len(pool))  # the last round may pick fewer
        if self.strategy == "random":  # the baseline
            generator = torch.Generator().manual_seed(self.fields.seed + self.fields.round)
            chosen = torch.randperm(len(pool), generator=generator)[:k]
        else:
            probs = self.predict(self.data["x"][pool]).softmax(dim=1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)  # clamp: 0 * log 0 must be 0, not nan
            chosen = entropy.topk(k).indices
        self.fields.picked = [pool[i] for i in chosen.tolist()]

    def label(self) -> None:
        picked = set(self.fields.picked)
        self.fields.labelled += self.fields.picked  # the oracle: their labels in data["y"] become usable
        self.fields.pool = [i for i in self.fields.pool if i not in picked]
        self.fields.picked = []

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return self.model(x)
# --- loop ---


def load_data(seed: int = 0) -> dict[str, torch.Tensor]:
    x, y = load_digits(return_X_y=True)  # 1797 8x8 images, bundled with scikit-learn (no download)
    x = torch.tensor(x / 16.0, dtype=torch.float32)  # pixels are 0..16
    # A stratified test split that is never labelled or picked from; the pool is the rest.
    x_train, x_test, y_train, y_test = train_test_split(x, torch.tensor(y), test_size=0.3, stratify=y,
                                                        random_state=seed)
    return {"x": x_train, "y": y_train, "x_test": x_test, "y_test": y_test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=20, help="examples labelled per round")
    parser.add_argument("--initial", type=int, default=20, help="random examples labelled before round 1")
    parser.add_argument("--budget", type=int, default=200, help="stop once this many examples are labelled")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per round's fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast-dev-run", action="store_true", help="2 batches per fit, 2 labelling rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a 64-wide MLP: threads cost more in hand-off than they save
    budget = args.initial + 2 * args.k if args.fast_dev_run else args.budget
    trainer_kwargs = {"fast_dev_run": 2} if args.fast_dev_run else {"max_steps": args.steps}
    data = load_data(args.seed)

    loop = ActiveLearning(data, args.k, args.initial, budget, "entropy", args.seed, trainer_kwargs)
    loop.run()
    baseline = ActiveLearning(data, args.k, args.initial, budget, "random", args.seed, trainer_kwargs,
                              log=lambda _: None)
    baseline.run()
    print(f"random picks, same budget: acc={baseline.fields.history[-1]:.4f} "
          f"(uncertainty picks: {loop.fields.history[-1]:.4f})")
    print(f"final_acc={loop.fields.history[-1]:.4f}")


if __name__ == "__main__":
    main()
