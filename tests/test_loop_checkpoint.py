"""A loop tree run without a Trainer: checkpointed with one call, in the Trainer's format, resumed exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import ConfigError, Loop, StateError, load_loop_checkpoint, save_loop_checkpoint
from statemachine_trainer.data import ResumableLoader

CLI = [sys.executable, "-m", "statemachine_trainer.cli"]


class Run:
    """A model with dropout, an optimizer with state, a scheduler, a shuffled resumable loader and a two-level tree."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3)
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g))
        self.loader = ResumableLoader(DataLoader(data, batch_size=8, shuffle=True), seed=5)
        self.tree = _fit(self)

    def parts(self) -> dict:
        return {"module": self.model, "optimizers": [self.optimizer], "schedulers": [self.scheduler],
                "data": {"train": self.loader}}


def _fit(run: Run) -> Loop:
    class Epoch(Loop):
        def reset(self, epoch):
            self.progress.reset_on_run()
            run.loader.set_epoch(epoch)
            self.batches = iter(run.loader)

        def on_restart(self):
            self.batches = iter(run.loader)

        @property
        def done(self):
            return self.progress.current.completed == len(run.loader)

        def advance(self):
            x, y = next(self.batches)
            loss = nn.functional.cross_entropy(run.model(x), y)
            loss.backward()  # gradients accumulate over two batches: partial .grad is state between them
            if self.progress.current.completed % 2 == 1:
                run.optimizer.step()
                run.optimizer.zero_grad()
            elif self.progress.current.completed == len(run.loader) - 1:
                run.optimizer.zero_grad()  # an odd batch count: the epoch's last gradient is dropped
            self.progress.increment_completed()

    class Fit(Loop):
        def __init__(self):
            super().__init__()
            self.epoch = Epoch()

        @property
        def done(self):
            return self.progress.total.completed == 3

        def advance(self):
            self.epoch.run(self.progress.total.completed)
            run.scheduler.step()
            self.progress.increment_completed()

    return Fit()


def _weights(run: Run) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def _reference() -> tuple[dict[str, torch.Tensor], int]:
    run, count = Run(), [0]
    run.tree.observe(lambda _: count.__setitem__(0, count[0] + 1))
    run.tree.run()
    return _weights(run), count[0]


REFERENCE = _reference()


# A resumed optimizer object has not called step() yet when the scheduler steps: torch warns, harmlessly.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@settings(max_examples=15, deadline=None)
@given(boundary=st.integers(1, REFERENCE[1] - 1))
def test_saved_at_any_boundary_resumes_bit_identical(boundary: int, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("loop") / "ckpt"
    run, count = Run(), [0]

    def observer(_: Loop) -> None:
        count[0] += 1
        if count[0] == boundary:
            save_loop_checkpoint(path, run.tree, **run.parts())

    run.tree.observe(observer)
    run.tree.run()
    resumed = Run(seed=9)  # other initial weights: everything that matters must come from the checkpoint
    load_loop_checkpoint(path, resumed.tree, **resumed.parts())
    resumed.tree.run()
    weights, _ = REFERENCE
    assert all(torch.equal(weights[k], v) for k, v in resumed.model.state_dict().items())


def test_the_checkpoint_is_the_trainers_format_and_the_cli_reads_it(tmp_path: Path) -> None:
    run = Run()
    run.tree.run()
    path = save_loop_checkpoint(tmp_path / "done", run.tree, **run.parts(), extra={"note": "finished"})
    for command in ("verify", "inspect"):
        result = subprocess.run([*CLI, command, str(path)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    again = save_loop_checkpoint(tmp_path / "again", run.tree, **run.parts(), extra={"note": "finished"})
    assert subprocess.run([*CLI, "diff", str(path), str(again)], capture_output=True, check=False).returncode == 0
    assert load_loop_checkpoint(path, Run().tree, **Run().parts()) == {"note": "finished"}


def test_a_mismatch_is_refused_before_anything_changes(tmp_path: Path) -> None:
    run = Run()
    path = save_loop_checkpoint(tmp_path / "start", run.tree, **run.parts())
    other = Run(seed=3)
    before = _weights(other)
    other.model[0] = nn.Linear(4, 17)  # another architecture
    with pytest.raises(ConfigError, match=r"\$\.module\['0\.weight'\] has shape \(16, 4\)"):
        load_loop_checkpoint(path, other.tree, **other.parts())
    fresh = Run(seed=3)
    with pytest.raises(ConfigError, match="loader"):
        load_loop_checkpoint(path, fresh.tree, module=fresh.model, optimizers=[fresh.optimizer],
                             schedulers=[fresh.scheduler], data={"val": fresh.loader})
    with pytest.raises(ConfigError, match="1 optimizer"):
        load_loop_checkpoint(path, fresh.tree, module=fresh.model, optimizers=[fresh.optimizer, fresh.optimizer],
                             schedulers=[fresh.scheduler])

    class Other(Loop):
        def advance(self):
            pass

        @property
        def done(self):
            return True

    with pytest.raises(StateError, match=r"\$\.loops"):
        load_loop_checkpoint(path, Other(), **fresh.parts())
    assert all(torch.equal(before[k], v) for k, v in fresh.model.state_dict().items())  # untouched
