"""The outer-loop examples: ``examples/kfold.py`` and ``examples/active_learning.py``.

Each wraps the Trainer's fit loop (``loop.connect(fit_loop=trainer.fit_loop);
trainer.fit_loop = loop``), so the Trainer checkpoints the whole tree.  Each
runs from a shell with ``--fast-dev-run``; each table holds its own states;
each resumes exactly from a checkpoint taken mid-epoch, mid-evaluation,
between rounds and (active learning) while scoring the pool.  In-process runs
use a small slice of the digits data and a few optimizer steps.  The SIGKILL
tests of both scripts are in ``tests/test_kill_resume.py``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import torch

from statemachine_trainer import END, Table, Trainer
from statemachine_trainer.machine.diagram import to_mermaid
from statemachine_trainer.testing import assert_resume_exact

ROOT = Path(__file__).resolve().parent.parent


def _example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` under a unique module name (registered, so attrs/cattrs resolve its types)."""
    module_name = f"_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny MLPs: torch's thread pool only adds hand-off cost (and spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- both examples run from a shell ---------------------------------------------------------------
@pytest.mark.parametrize(("script", "final"), [("kfold.py", "mean_acc="), ("active_learning.py", "final_acc=")])
def test_example_runs_with_fast_dev_run(script: str, final: str) -> None:
    result = subprocess.run([sys.executable, f"examples/{script}", "--fast-dev-run", "--seed", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith(final), result.stdout
    assert 0.0 <= float(lines[-1].removeprefix(final)) <= 1.0
    if script == "kfold.py":
        assert [line.split()[0] for line in lines if line.startswith("fold=")] == ["fold=0", "fold=1"]
    else:
        rounds = [line for line in lines if line.startswith("round=")]
        assert [line.split()[1] for line in rounds] == ["labelled=20", "labelled=40", "labelled=60"]


# -- the tables -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls", "states", "edge"), [
    ("kfold", "KFold", ("START", "FOLD", "TRAIN", "EVALUATE", "END"), "EVALUATE --> FOLD: next / evaluate_fold"),
    ("active_learning", "ActiveLearning", ("START", "TRAIN", "SCORE", "LABEL", "END"),
     "SCORE --> END: next [finished]"),
])
def test_table_is_valid_and_has_its_own_states(name: str, cls: str, states: tuple[str, ...], edge: str) -> None:
    loop_class = getattr(_example(name), cls)
    table = loop_class.table
    assert table.states == states
    assert Table.from_dict(json.loads(json.dumps(table.to_dict()))) == table  # re-validated from plain data
    assert {row.dest for row in table.rows} == set(states[1:])  # every state but START is entered by a row
    diagram = to_mermaid(loop_class)
    assert edge in diagram
    for row in table.rows:
        assert f"{row.source} --> {row.dest}: {row.label()}" in diagram


# -- k-fold: the Trainer checkpoints the whole tree; resume from anywhere is exact ---------------------
@cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _example("kfold").load_data()
    return x[:450], y[:450]  # a slice: 3 folds of 300 training examples, 5 batches an epoch


def _kfold_trainer(callbacks=()) -> Trainer:
    kfold = _example("kfold")
    trainer = Trainer(max_epochs=2, seed=3, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, callbacks=list(callbacks))
    loop = kfold.KFold(*_digits(), folds=3, seed=3)
    loop.connect(fit_loop=trainer.fit_loop)
    trainer.fit_loop = loop
    return trainer


def test_kfold_tree_is_one_state_set_and_scores_every_fold() -> None:
    trainer = _kfold_trainer()
    trainer.fit(_example("kfold").Classifier())
    loop = trainer.fit_loop
    assert loop.state == END and loop.fields.fold == 3 and len(loop.fields.scores) == 3
    state = trainer.capture_state()
    assert set(state["loops"]["loops"]) >= {"kfold", "kfold.fit_loop", "kfold.fit_loop.epoch_loop", "kfold.test_loop"}
    assert state["loops"]["loops"]["kfold"]["fields"]["scores"] == loop.fields.scores
    assert trainer.current_epoch == 6 and trainer.global_step == 3 * 2 * 5  # monotonic over the folds
    assert all(0.5 < score <= 1.0 for score in loop.fields.scores)


@pytest.mark.parametrize(("hook", "call"), [
    ("on_train_batch_end", 3),  # mid-epoch in fold 0
    ("on_train_epoch_end", 3),  # between two epochs of fold 1
    ("on_fit_end", 2),  # fold 1 trained, not yet scored (the outer loop between TRAIN and EVALUATE)
    ("on_test_batch_end", 2),  # mid-evaluation of fold 0 (the test loop resumes at its next batch)
    ("on_test_end", 2),  # between fold 1 and fold 2
])
def test_kfold_resumes_exactly_from_anywhere_in_the_tree(hook: str, call: int, tmp_path: Path) -> None:
    kfold = _example("kfold")
    assert_resume_exact(kfold.Classifier, _kfold_trainer, tuple, hook, call, workdir=tmp_path)


def test_kfold_resume_is_not_vacuous(tmp_path: Path) -> None:
    """A checkpoint from one configuration does not reproduce another: the check can fail."""
    kfold = _example("kfold")
    path = assert_resume_exact(kfold.Classifier, _kfold_trainer, tuple, "on_test_end", 1, workdir=tmp_path)
    other = _kfold_trainer()
    other.fit_loop.seed = 4  # another split from the same checkpoint onwards
    other.fit_loop.splits = list(reversed(other.fit_loop.splits))
    other.fit(kfold.Classifier(), ckpt_path=path)
    reference = _kfold_trainer()
    reference.fit(kfold.Classifier())
    assert other.fit_loop.fields.scores != reference.fit_loop.fields.scores


# -- active learning: pool bookkeeping, uncertainty picks, resume while scoring -----------------------
@cache
def _pool_data(n_train: int = 60) -> dict[str, torch.Tensor]:
    data = _example("active_learning").load_data(seed=0)
    return {**data, "x": data["x"][:n_train], "y": data["y"][:n_train], "x_test": data["x_test"][:100],
            "y_test": data["y_test"][:100]}


def _al_trainer(callbacks=(), n_train: int = 60, k: int = 5, budget: int = 25, loop_class=None) -> Trainer:
    al = _example("active_learning")
    trainer = Trainer(max_steps=5, seed=2, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, callbacks=list(callbacks))
    loop = (loop_class or al.ActiveLearning)(_pool_data(n_train), k=k, initial=5, budget=budget, seed=3)
    loop.connect(fit_loop=trainer.fit_loop)
    trainer.fit_loop = loop
    return trainer


def test_active_learning_labels_the_k_most_uncertain_each_round() -> None:
    al = _example("active_learning")
    checks = {"picks": 0}

    class Checked(al.ActiveLearning):
        def label(self) -> None:  # picked, not yet labelled: the picks are the pool's most uncertain items
            fields = self.fields
            picked = set(fields.picked)
            assert len(picked) == self.k and picked <= set(fields.pool)
            assert not set(fields.labelled) & set(fields.pool)
            assert set(fields.labelled) | set(fields.pool) == set(range(60))
            module = self.context.module
            with torch.no_grad():
                probs = module(self.data["x"][fields.pool]).softmax(dim=1)
            entropy = dict(zip(fields.pool, (-(probs * probs.clamp_min(1e-12).log()).sum(dim=1)).tolist()))
            rest = [i for i in fields.pool if i not in picked]
            assert min(entropy[i] for i in picked) >= max(entropy[i] for i in rest)
            checks["picks"] += 1
            super().label()

    trainer = _al_trainer(loop_class=Checked)
    trainer.fit(al.Classifier())
    loop = trainer.fit_loop
    assert checks["picks"] == (25 - 5) // 5
    assert loop.state == END and len(loop.fields.labelled) == 25
    assert loop.fields.round == len(loop.fields.history) == 5
    assert json.loads(json.dumps(trainer.capture_state()["loops"]))["loops"][loop.name]["fields"] == \
        json.loads(json.dumps({"labelled": loop.fields.labelled, "pool": loop.fields.pool, "picked": [],
                               "round": 5, "history": loop.fields.history}))


def test_active_learning_stops_when_the_pool_is_empty() -> None:
    al = _example("active_learning")
    trainer = _al_trainer(n_train=23, k=10, budget=1000)
    trainer.fit(al.Classifier())
    loop = trainer.fit_loop
    assert loop.state == END and loop.fields.pool == []
    assert sorted(loop.fields.labelled) == list(range(23))  # 5, then 10, then the last 8
    assert loop.fields.round == 3


@pytest.mark.parametrize(("hook", "call"), [
    ("on_train_batch_end", 7),  # mid-round (round 1's fit)
    ("on_predict_batch_end", 1),  # while scoring the pool: written once the scores are in (after SCORE)
    ("on_test_end", 3),  # round 3 evaluated, before scoring
    ("on_fit_start", 4),  # a new round's fit just started
])
def test_active_learning_resumes_exactly_from_anywhere_in_the_tree(hook: str, call: int, tmp_path: Path) -> None:
    al = _example("active_learning")
    assert_resume_exact(al.Classifier, _al_trainer, tuple, hook, call, workdir=tmp_path)


def test_uncertainty_picks_beat_random_picks_on_the_default_budget() -> None:
    al = _example("active_learning")
    finals = {}
    for picks in ("entropy", "random"):
        finals[picks] = al.main(["--picks", picks, "--seed", "0"])
    assert finals["entropy"] > finals["random"] + 0.02  # the uncertain examples help more than random ones
