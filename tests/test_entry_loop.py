"""The entry loops: each entry point's lifecycle (setup, configure_optimizers, teardown...) as table rows.

The rows must run in table order with the user's hooks inside the row that
names them, a failure must tear the run down exactly from the rows after
``prepare_data``, the next call must start from START again, and a Trainer
is drawn as its fit lifecycle around the fit tree.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from statemachine_trainer import Callback, ConfigError, Trainer
from statemachine_trainer._entry import ENTRY_TABLE, FIT_ENTRY_TABLE
from statemachine_trainer.cli import main
from statemachine_trainer.machine import END
from statemachine_trainer.machine.diagram import to_dot, to_mermaid

from ._points_module import Net, points

FLAGS = {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False, "logger": False,
             "enable_checkpointing": False, "num_sanity_val_steps": 0}


class Recorded(Net):
    """Net recording its lifecycle hooks into a shared list (and failing in one of them, if asked)."""

    def __init__(self, calls: list[str], fail_in: str | None = None) -> None:
        super().__init__()
        self.calls, self.fail_in = calls, fail_in

    def _hook(self, name: str) -> None:
        self.calls.append(f"module.{name}")
        if name == self.fail_in:
            raise RuntimeError(f"boom in {name}")

    def prepare_data(self):
        self._hook("prepare_data")

    def setup(self, stage):
        self._hook("setup")

    def configure_model(self):
        self._hook("configure_model")

    def configure_optimizers(self):
        self._hook("configure_optimizers")
        return super().configure_optimizers()

    def training_step(self, batch, batch_idx):
        self._hook("training_step")
        return super().training_step(batch, batch_idx)

    def teardown(self, stage):
        self._hook("teardown")


def record_rows(trainer: Trainer, stage: str, calls: list[str]) -> None:
    """Record each entry-loop row hook as it starts (through the loop's public hook wrapper)."""
    entry = trainer.entry_loops[stage]

    def wrap(action, fn):
        if not action.startswith(type(entry).__name__ + "."):
            return fn

        def recorded(*args, **kwargs):
            calls.append(action.split(".", 1)[1])
            return fn(*args, **kwargs)
        return recorded
    entry.profile(wrap)


def data():
    return DataLoader(points(16), batch_size=8)


def test_fit_runs_every_row_in_table_order_with_the_users_hooks_inside_their_rows():
    calls: list[str] = []
    trainer = Trainer(**FLAGS)
    record_rows(trainer, "fit", calls)
    trainer.fit(Recorded(calls), data(), data())
    rows = [hook for row in FIT_ENTRY_TABLE.rows for hook in row.hooks]
    assert [c for c in calls if not c.startswith("module.")] == rows
    # each user hook runs inside the row hook named after it (or the tree, for training_step)
    expect_after = {"module.prepare_data": "prepare_data", "module.setup": "setup",
                    "module.configure_model": "configure_model", "module.configure_optimizers": "configure_optimizers",
                    "module.training_step": "run_tree", "module.teardown": "teardown"}
    for user, row in expect_after.items():
        before = [c for c in calls[:calls.index(user)] if not c.startswith("module.")]
        assert before[-1] == row, (user, before)
    assert trainer.entry_loops["fit"].state == END


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluation_runs_the_evaluation_rows(stage):
    calls: list[str] = []
    trainer = Trainer(**FLAGS)
    record_rows(trainer, stage, calls)
    getattr(trainer, stage)(Recorded(calls), data(), verbose=False)
    assert [c for c in calls if not c.startswith("module.")] == [h for r in ENTRY_TABLE.rows for h in r.hooks]
    assert "module.configure_optimizers" not in calls


@pytest.mark.parametrize("fail_in, torn_down", [
    ("prepare_data", False),  # before setup: nothing to tear down (as before, and as Lightning)
    ("setup", True),
    ("configure_model", True),
    ("configure_optimizers", True),
    ("training_step", True),
])
def test_a_failure_tears_down_from_the_rows_after_prepare_data_and_the_next_fit_starts_afresh(fail_in, torn_down):
    calls: list[str] = []
    trainer = Trainer(**FLAGS)
    with pytest.raises(RuntimeError, match=f"boom in {fail_in}"):
        trainer.fit(Recorded(calls, fail_in=fail_in), data())
    assert ("module.teardown" in calls) is torn_down
    assert calls.count("module.teardown") <= 1
    assert calls[-1] == ("module.teardown" if torn_down else f"module.{fail_in}")
    assert trainer.run.state == "idle" or not torn_down
    if fail_in == "training_step":
        return  # the tree stopped mid-run: what a next fit() does then is issue 16's (failures mid-transition)
    # The same trainer runs the next fit through the whole table, from START.
    again: list[str] = []
    trainer.fit(Recorded(again), data())
    assert again[0] == "module.prepare_data" and again[-1] == "module.teardown"
    assert trainer.entry_loops["fit"].state == END and trainer.global_step == 2


def test_a_failing_teardown_is_not_called_twice():
    calls: list[str] = []
    trainer = Trainer(**FLAGS)
    with pytest.raises(RuntimeError, match="boom in teardown"):
        trainer.fit(Recorded(calls, fail_in="teardown"), data())
    assert calls.count("module.teardown") == 1


def test_a_callbacks_setup_and_teardown_run_inside_the_rows():
    calls: list[str] = []

    class Cb(Callback):
        def setup(self, trainer, module, stage):
            calls.append("callback.setup")

        def teardown(self, trainer, module, stage):
            calls.append("callback.teardown")

    trainer = Trainer(**FLAGS, callbacks=[Cb()])
    record_rows(trainer, "fit", calls)
    trainer.fit(Recorded(calls), data())
    assert calls.index("setup") < calls.index("callback.setup") < calls.index("module.setup") \
        < calls.index("configure_model")
    assert calls.index("teardown") < calls.index("callback.teardown") < calls.index("module.teardown")


def test_the_entry_loop_is_drawn_around_the_tree_without_restarting():
    trainer = Trainer(**FLAGS)
    mermaid = to_mermaid(trainer.entry_loops["fit"])
    assert "fit__PREPARED --> fit__SET_UP: advance / setup, configure_model, read_checkpoint" in mermaid
    assert "fit__RAN --> fit__END: advance / teardown" in mermaid
    assert 'state "fit.fit_loop (FitLoop)"' in mermaid and 'state "fit.fit_loop.epoch_loop' in mermaid
    assert "fit__RESTARTING" not in mermaid  # never restored: it runs around what a checkpoint holds
    assert "fit__fit_loop__RESTARTING" in mermaid  # the tree is
    dot = to_dot(trainer.entry_loops["test"])
    assert '"test.SET_UP" -> "test.CONNECTED" [label="advance / connect_data, assemble"]' in dot
    assert '"test.RESTARTING"' not in dot and '"test.test_loop.RESTARTING"' in dot


def make_trainer() -> Trainer:
    return Trainer(**FLAGS)


def test_the_diagram_command_draws_a_trainer_as_its_fit_lifecycle(capsys):
    assert main(["diagram", "tests.test_entry_loop:make_trainer"]) == 0
    out = capsys.readouterr().out
    assert 'state "fit (FitEntryLoop)"' in out and "configure_optimizers, assemble" in out
    assert 'state "fit.fit_loop.epoch_loop (TrainingEpochLoop)"' in out


def test_a_users_loop_as_the_root_is_the_entry_loops_child():
    from statemachine_trainer.machine import Loop

    class Rounds(Loop):
        def advance(self):
            pass

        @property
        def done(self):
            return True

    trainer = Trainer(**FLAGS)
    trainer.fit_loop = Rounds()
    assert trainer.entry_loops["fit"].children() == {"fit_loop": trainer.fit_loop}


# -- a run an exception left inside a transition ---------------------------------------------------
class FailsOnce(Net):
    """Raises in training_step at one global step, once (the bug is "fixed" before the next call)."""

    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.at_step = at_step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.at_step:
            self.at_step = -1
            raise RuntimeError("boom mid-fit")
        return super().training_step(batch, batch_idx)


def checkpointing_trainer(root) -> Trainer:
    from statemachine_trainer.callbacks import ModelCheckpoint

    flags = {**FLAGS, "enable_checkpointing": True, "max_epochs": 2, "seed": 0}
    return Trainer(**flags, default_root_dir=root,
                   callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1)])


def test_after_a_failed_fit_the_trainer_refuses_a_checkpoint_and_a_fit_without_one_then_resumes_exactly(tmp_path):
    from statemachine_trainer.checkpoint import CheckpointError
    from statemachine_trainer.data import ResumableLoader

    reference = checkpointing_trainer(tmp_path / "straight")  # seeds: the model is built after it, as below
    straight = FailsOnce(at_step=-1)
    reference.fit(straight, ResumableLoader(points(32), batch_size=8, shuffle=True))

    trainer = checkpointing_trainer(tmp_path / "failed")
    model = FailsOnce(at_step=5)
    loader = ResumableLoader(points(32), batch_size=8, shuffle=True)
    with pytest.raises(RuntimeError, match="boom mid-fit"):
        trainer.fit(model, loader)
    with pytest.raises(CheckpointError, match="stopped inside a transition .*ckpt_path='latest'"):
        trainer.save_checkpoint(tmp_path / "half.ckpt")
    assert not (tmp_path / "half.ckpt").exists()
    with pytest.raises(ConfigError, match="last fit stopped inside a transition"):
        trainer.fit(model, loader)
    trainer.fit(model, loader, ckpt_path="latest")
    assert trainer.global_step == 8
    for ours, reference in zip(model.parameters(), straight.parameters()):
        assert torch.equal(ours, reference)


def test_an_evaluation_an_exception_stopped_starts_over_at_the_next_call():
    class FailsInValidation(Net):
        fail = True

        def validation_step(self, batch, batch_idx):
            if self.fail and batch_idx == 1:
                raise RuntimeError("boom in validation")
            return super().validation_step(batch, batch_idx)

    trainer = Trainer(**FLAGS)
    model = FailsInValidation()
    with pytest.raises(RuntimeError, match="boom in validation"):
        trainer.validate(model, data(), verbose=False)
    model.fail = False
    (result,) = trainer.validate(model, data(), verbose=False)
    assert "val_loss" in result
