"""Active learning as a loop that wraps the Trainer's fit loop: train, score the pool, label the top k, repeat.

Run:  python examples/active_learning.py [--k 20] [--initial 20] [--budget 200] [--picks entropy|random]
                                         [--seed 0] [--root runs/al] [--checkpoint-every 50] [--max-steps 60]
      python examples/active_learning.py --root runs/al --resume latest   # after a kill -9, anywhere

The loop's states are the steps of pool-based active learning (see
``ACTIVE_TABLE`` below), and like Flash's ``ActiveLearningLoop`` it wraps the
fit loop (``loop.connect(fit_loop=trainer.fit_loop); trainer.fit_loop =
loop``).  TRAIN starts a round -- fresh weights and optimizers, the labelled
set as training data -- runs the fit loop, and measures test accuracy with
the test loop; SCORE runs the predict loop over the unlabelled pool and picks
the k examples with the highest predictive entropy (or k at random: the
baseline), or ends the run once the budget is spent or the pool is empty;
LABEL asks the oracle -- here, the digits' true labels -- and moves the
picks from the pool to the labelled set.

The loop's own state -- labelled and pool indices, the picks awaiting labels,
the round, the accuracy history -- is an attrs class in the Trainer's
checkpoints, with the fit loop's position, weights, optimizers and RNGs, so a
run killed anywhere (mid-round, while scoring, while labelling) resumes
exactly with ``--resume latest``.  ``--max-steps`` caps each round's fit
(default 60 optimizer steps, one full batch each).

Prints ``round=<r> labelled=<n> acc=<v>`` per round and ``final_acc=<v>`` last.
"""

from __future__ import annotations

import argparse
from typing import Any

import attrs
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import END, START, Row, Table, Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.loops import EvaluationLoop, FitLoop, PredictionLoop, TrainerLoop
from statemachine_trainer.script import add_run_flags, save_final, trainer_kwargs


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

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(dim=1) == y).float().mean(), batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Weight decay: with a few dozen labels an unregularised MLP is confidently wrong, which blunts entropy.
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=1e-2)


# --- loop ---
ACTIVE_TABLE = Table(
    name="ActiveLearning",
    states=(START, "TRAIN", "SCORE", "LABEL", END),
    rows=(
        Row("run", START, "TRAIN", hooks="reset"),  # label a small random seed set
        # A round: fresh weights, optimizers and data; the fit loop on the labelled set; test accuracy.
        Row("next", "TRAIN", "SCORE", hooks=("new_round", "train_round", "evaluate_round")),
        Row("next", "SCORE", END, conditions="finished"),  # budget spent or pool empty
        Row("next", "SCORE", "LABEL", hooks="pick"),  # the predict loop over the pool: the k most uncertain
        Row("next", "LABEL", "TRAIN", hooks="label"),  # the oracle labels them
    ),
)


@attrs.define
class PoolFields:
    labelled: list[int] = attrs.Factory(list)  # indices with known labels, in labelling order; disjoint from pool
    pool: list[int] = attrs.Factory(list)  # unlabelled indices; labelled + pool is every training index
    picked: list[int] = attrs.Factory(list)  # chosen in SCORE, labelled in LABEL; empty in every other state
    round: int = 0  # training rounds finished; == len(history)
    history: list[float] = attrs.Factory(list)  # test accuracy after each round


class ActiveLearning(TrainerLoop):
    table = ACTIVE_TABLE
    fields_class = PoolFields

    def __init__(self, data: dict[str, torch.Tensor], k: int = 20, initial: int = 20, budget: int = 200,
                 picks: str = "entropy", seed: int = 0) -> None:
        super().__init__()
        self.data, self.k, self.initial, self.budget, self.picks, self.seed = data, k, initial, budget, picks, seed
        self.fit_loop = FitLoop()  # connect(fit_loop=trainer.fit_loop) puts the Trainer's own here
        self.test_loop = EvaluationLoop("test")
        self.predict_loop = PredictionLoop()

    @property
    def finished(self) -> bool:
        return len(self.fields.labelled) >= self.budget or not self.fields.pool

    def reset(self) -> None:
        order = torch.randperm(len(self.data["y"]), generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.fields = PoolFields(labelled=order[:self.initial], pool=sorted(order[self.initial:]))

    def on_restart(self) -> None:
        self.use_round_data()  # resumed: the data is not in the checkpoint, the labelled set and pool are

    def new_round(self) -> None:
        run = self.context
        run.reset_parameters(seed=self.seed + self.fields.round)  # retrain from scratch: init from (seed, round)
        run.reset_optimizers()
        self.use_round_data()

    def train_round(self) -> None:
        self.fit_loop.run()

    def evaluate_round(self) -> None:
        accuracy = self.test_loop.run()["test_acc"]
        self.fields.history.append(accuracy)
        self.fields.round += 1
        print(f"round={self.fields.round} labelled={len(self.fields.labelled)} acc={accuracy:.4f}")

    def pick(self) -> None:
        pool = self.fields.pool
        k = min(self.k, self.budget - len(self.fields.labelled), len(pool))  # the last round may pick fewer
        if self.picks == "random":  # the baseline
            generator = torch.Generator().manual_seed(self.seed + self.fields.round)
            chosen = torch.randperm(len(pool), generator=generator)[:k]
        else:
            probs = torch.cat(self.predict_loop.run()).softmax(dim=1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)  # clamp: 0 * log 0 must be 0, not nan
            chosen = entropy.topk(k).indices
        self.fields.picked = [pool[i] for i in chosen.tolist()]

    def label(self) -> None:
        picked = set(self.fields.picked)
        self.fields.labelled += self.fields.picked  # the oracle: their labels in data["y"] become usable
        self.fields.pool = [i for i in self.fields.pool if i not in picked]
        self.fields.picked = []

    def use_round_data(self) -> None:
        """This round's loaders, a pure function of the fields: the labelled set, the test split, the pool."""
        x, y, index = self.data["x"], self.data["y"], self.fields.labelled
        # Full batch (a few hundred examples at most): a smooth fit, so rounds differ by their labels, not by noise.
        labelled = DataLoader(TensorDataset(x[index], y[index]), batch_size=len(index))
        test = DataLoader(TensorDataset(self.data["x_test"], self.data["y_test"]), batch_size=256)
        pool = DataLoader(TensorDataset(x[self.fields.pool]), batch_size=256) if self.fields.pool else None
        self.context.use_data(train=ResumableLoader(labelled, seed=self.seed), test=ResumableLoader(test),
                              predict=pool)
# --- loop ---


def load_data(seed: int = 0) -> dict[str, torch.Tensor]:
    x, y = load_digits(return_X_y=True)  # 1797 8x8 images, bundled with scikit-learn (no download)
    x = torch.tensor(x / 16.0, dtype=torch.float32)  # pixels are 0..16
    # A stratified test split that is never labelled or picked from; the pool is the rest.
    x_train, x_test, y_train, y_test = train_test_split(x, torch.tensor(y), test_size=0.3, stratify=y,
                                                        random_state=seed)
    return {"x": x_train, "y": y_train, "x_test": x_test, "y_test": y_test}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=20, help="examples labelled per round")
    parser.add_argument("--initial", type=int, default=20, help="random examples labelled before round 1")
    parser.add_argument("--budget", type=int, default=200, help="stop once this many examples are labelled")
    parser.add_argument("--picks", default="entropy", choices=("entropy", "random"),
                        help="label the most uncertain pool examples, or random ones (the baseline)")
    add_run_flags(parser, max_steps_counts="optimizer steps per round (default 60)",
                  fast_dev_run="2 batches per round's fit, 2 labelling rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a 64-wide MLP: threads cost more in hand-off than they save
    budget = args.initial + 2 * args.k if args.fast_dev_run else args.budget
    steps = 60 if args.max_steps is None else args.max_steps

    trainer = Trainer(num_sanity_val_steps=0, **trainer_kwargs(args, max_steps=steps))
    loop = ActiveLearning(load_data(args.seed), args.k, args.initial, budget, args.picks, args.seed)
    loop.connect(fit_loop=trainer.fit_loop)
    trainer.fit_loop = loop
    trainer.fit(Classifier(), ckpt_path=args.resume)  # the loop brings each round's data itself
    save_final(trainer, args)
    print(f"final_acc={loop.fields.history[-1]:.4f}")
    return loop.fields.history[-1]


if __name__ == "__main__":
    main()
