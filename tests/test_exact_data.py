"""Exact data through the Trainer: augmentations in the dataset, dropout and draws in hooks resume bit for bit.

A ``ResumableLoader`` with its default ``rngs`` seeds the global RNGs from each
batch's key twice: for the fetch (the dataset's augmentations, in whichever
process fetches) and when the batch reaches the loop (the training stream:
dropout, draws in hooks).  So a run is the same with 0 or 2 workers, a resume
is exact from inside a step (the batch in flight is served again without
touching the restored RNGs) or between steps, and a checkpoint written with
one ``num_workers`` resumes with another.  The loader-level contract is in
test_data.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from statemachine_trainer import Trainer, TrainingModule
from statemachine_trainer.checkpoint import first_difference
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.testing import assert_resume_exact, interrupt_at


class Augmented(Dataset):
    """Points whose features get noise from torch, Python's random and NumPy in ``__getitem__``."""

    def __init__(self, length: int = 40) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(length, 6, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.1 * torch.randn(6) + 0.05 * random.gauss(0, 1) + 0.05 * float(np.random.randn())
        return self.x[index] + noise, self.y[index]


class Net(TrainingModule):
    """Dropout in a two-optimizer step (Lightning 1.x's ``optimizer_idx``), and draws from every global RNG per step.

    A checkpoint requested after the first optimizer stepped is written between the two optimizers' parts: the
    resumed run serves the batch in flight again, and the second part's dropout and draws must come from the
    restored RNG states, not from a reseeded stream.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
        self.register_buffer("drawn", torch.zeros((), dtype=torch.float64))

    def training_step(self, batch, batch_idx, optimizer_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log(f"loss{optimizer_idx}", loss)
        return loss

    def on_before_optimizer_step(self, optimizer):
        self.drawn += float(torch.rand(())) + random.random() + float(np.random.rand())

    def configure_optimizers(self):
        return (torch.optim.Adam(self.net[0].parameters(), lr=1e-2),
                torch.optim.SGD(self.net[3].parameters(), lr=0.1))


def loaders(workers: int):
    return lambda: (ResumableLoader(DataLoader(Augmented(), batch_size=8, shuffle=True, num_workers=workers), seed=3),)


def trainer(callbacks=()):
    return Trainer(max_epochs=2, seed=1, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                   callbacks=list(callbacks))


def final_state(fitted: Trainer) -> dict:
    state = fitted.capture_state()
    return {key: state[key] for key in ("module", "optimizers", "rng", "loops", "data", "results")}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(("hook", "call"), [("on_before_zero_grad", 5), ("on_train_batch_end", 6),
                                            ("on_train_batch_start", 7)], ids=["between-optimizers", "batch-end",
                                                                               "batch-start"])
def test_resume_is_exact_with_augmentation_and_dropout(tmp_path, workers, hook, call):
    assert_resume_exact(Net, trainer, loaders(workers), hook, call, tmp_path)


def tensor_loaders(workers: int):
    """The same points as a TensorDataset: a fetch that draws nothing, so the loader seeds no generator at all."""
    points = Augmented()
    return lambda: (ResumableLoader(DataLoader(TensorDataset(points.x, points.y), batch_size=8, shuffle=True,
                                               num_workers=workers), seed=3),)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(("hook", "call"), [("on_before_zero_grad", 5), ("on_train_batch_end", 6)],
                         ids=["between-optimizers", "batch-end"])
def test_resume_is_exact_when_the_fetch_draws_nothing(tmp_path, workers, hook, call):
    """No seeding: dropout and the hook's draws from torch, random and NumPy run on across batches as in a plain
    loop, and the checkpoint's RNG states replay them (mid-step too, where the batch in flight is served again)."""
    assert tensor_loaders(workers)()[0]._seed_training is None
    assert_resume_exact(Net, trainer, tensor_loaders(workers), hook, call, tmp_path)


def test_the_run_is_the_same_with_any_num_workers():
    runs = []
    for workers in (0, 2):
        fitted = trainer()
        fitted.fit(Net(), *loaders(workers)())
        runs.append(final_state(fitted))
    assert first_difference(runs[0], runs[1]) is None
    # Not vacuous: another loader seed changes the augmentations, the dropout masks and so the weights.
    other = trainer()
    other.fit(Net(), ResumableLoader(DataLoader(Augmented(), batch_size=8, shuffle=True), seed=4))
    assert not torch.equal(other.module.net[0].weight, runs[0]["module"]["net.0.weight"])


def test_a_step_is_interrupted_between_its_optimizers(tmp_path):
    """Not vacuous: the checkpoint of the between-optimizers case is written inside a step."""
    path = assert_resume_exact(Net, trainer, loaders(0), "on_before_zero_grad", 5, tmp_path)
    from statemachine_trainer.checkpoint import load_checkpoint_dir

    state, _ = load_checkpoint_dir(path)
    assert state["loops"]["loops"]["fit_loop.epoch_loop"]["position"]["row"] is not None  # inside advance
    assert state["data"]["train"]["position"] == 3  # batch 2 (of 5 per epoch) in flight


def test_a_checkpoint_resumes_with_another_num_workers(tmp_path):
    path = tmp_path / "mid-step.ckpt"
    full = trainer([interrupt_at("on_before_zero_grad", 7, path)])
    full.fit(Net(), *loaders(0)())
    resumed = trainer()
    resumed.fit(Net(), *loaders(2)(), ckpt_path=path)
    assert first_difference(final_state(full), final_state(resumed)) is None


def test_the_python_generator_is_seeded_exactly_as_random_seed_seeds_it():
    """The per-batch seeding calls random's C seed directly (no wrapper): same state, no cached gauss left."""
    import random

    from statemachine_trainer.data._seeding import seeder

    for key in (0, 1, 2**32 + 7, 2**64 - 1, 0x5EED_7EA1_7EA1_5EED):
        random.seed(key)
        want = random.getstate()
        random.gauss(0, 1)  # leaves a cached second deviate behind
        seeder(["random"])(key)
        assert random.getstate() == want
