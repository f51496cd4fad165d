"""The custom-table examples: ``examples/kfold.py`` and ``examples/active_learning.py``.

Each runs from a shell with ``--fast-dev-run``; each table holds its own
states; k-fold resumes exactly from any boundary (and from a crash inside a
fold's ``Trainer.fit``); active learning keeps its pool and labelled set
consistent and its state set JSON-able.  In-process runs use a small slice of
the digits data and a few optimizer steps, so every run takes well under a
second.
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
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine_trainer import END, Table
from statemachine_trainer.machine.diagram import to_mermaid

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


def _quiet(_: str) -> None:
    pass


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
        assert "crashed during fold 1's training" in result.stdout
        assert "matches an uninterrupted run fold for fold: True" in result.stdout
    else:
        rounds = [line for line in lines if line.startswith("round=")]
        assert [line.split()[1] for line in rounds] == ["labelled=20", "labelled=40", "labelled=60"]


# -- the tables -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls", "states", "edge"), [
    ("kfold", "KFoldCV", ("START", "FOLD", "TRAIN", "EVALUATE", "END"),
     "EVALUATE --> FOLD: next / evaluate_fold"),
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


# -- k-fold: resume from any boundary, and from a crash inside a fold's fit ---------------------------
KFOLD_CONFIG = {"folds": 3, "epochs": 1, "seed": 7}


@cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _example("kfold").load_data()
    return x[:600], y[:600]  # a slice: 3 folds x 1 epoch x 7 batches per run


def _kfold(seed_offset: int = 0, **trainer_kwargs):
    kfold = _example("kfold")
    config = {**KFOLD_CONFIG, "seed": KFOLD_CONFIG["seed"] + seed_offset}
    return kfold.KFoldCV(*_digits(), **config, trainer_kwargs=trainer_kwargs, log=_quiet)


@cache
def _kfold_reference() -> tuple[list[float], dict[str, torch.Tensor], int]:
    """Scores and final weights of an uninterrupted run, and how many boundaries it passes."""
    loop, count = _kfold(), [0]
    loop.observe(lambda _: count.__setitem__(0, count[0] + 1))
    loop.run()
    assert loop.state == END and len(loop.fields.scores) == KFOLD_CONFIG["folds"]
    return list(loop.fields.scores), loop.model.state_dict(), count[0]


def _resume_kfold(saved: dict):
    kfold = _example("kfold")
    resumed = _kfold(seed_offset=1)  # another seed: everything that matters must come from the snapshot
    kfold.restore(resumed, saved)
    resumed.run()
    return resumed


def _assert_same_as_reference(resumed) -> None:
    scores, weights, _ = _kfold_reference()
    assert resumed.state == END
    assert resumed.fields.scores == scores  # exact float equality, fold for fold
    assert all(torch.equal(weights[k], v) for k, v in resumed.model.state_dict().items())


def test_kfold_boundary_count_is_what_the_table_implies() -> None:
    # START->FOLD, then FOLD->TRAIN->EVALUATE->FOLD per fold, then FOLD->END; one hook per row, so no inner boundaries.
    assert _kfold_reference()[2] == 1 + 3 * KFOLD_CONFIG["folds"] + 1


@settings(max_examples=12)
@given(data=st.data())
def test_kfold_interrupted_at_any_boundary_resumes_to_the_same_scores(data: st.DataObject) -> None:
    kfold = _example("kfold")
    boundary = data.draw(st.integers(1, _kfold_reference()[2]), label="boundary")
    crashed = _kfold()
    saved = kfold.run_with_snapshots(crashed, crash_at_boundary=boundary)
    assert (crashed.state == END) == (boundary == _kfold_reference()[2])  # the crash really happened
    _assert_same_as_reference(_resume_kfold(saved))


def test_kfold_crash_inside_a_folds_fit_restarts_that_fold_exactly() -> None:
    kfold = _example("kfold")
    crashed = _kfold(callbacks=[kfold.CrashMidFold(fold=1, epoch=0)])
    saved = kfold.run_with_snapshots(crashed)
    assert crashed.state == "TRAIN" and crashed.fields.fold == 1 and len(crashed.fields.scores) == 1
    assert saved["loops"]["loops"][crashed.name]["position"] == {"state": "TRAIN", "row": None, "hook": 0, "queue": []}
    _assert_same_as_reference(_resume_kfold(saved))


# -- active learning: pool bookkeeping, uncertainty picks, JSON state ---------------------------------
@cache
def _pool_data(n_train: int = 60) -> dict[str, torch.Tensor]:
    data = _example("active_learning").load_data(seed=0)
    return {**data, "x": data["x"][:n_train], "y": data["y"][:n_train], "x_test": data["x_test"][:100],
            "y_test": data["y_test"][:100]}


def test_active_learning_labels_k_most_uncertain_per_round_and_state_round_trips_json() -> None:
    al = _example("active_learning")
    k, initial, budget = 5, 5, 25
    loop = al.ActiveLearning(_pool_data(), k=k, initial=initial, budget=budget, seed=3,
                             trainer_kwargs={"max_steps": 5}, log=_quiet)
    everything = set(range(60))
    sizes, states, checks = [], [], {"picks": 0}

    def observer(_) -> None:
        fields = loop.fields
        states.append(loop.state)
        assert not set(fields.labelled) & set(fields.pool), "an item is both labelled and in the pool"
        assert len(set(fields.labelled)) == len(fields.labelled)
        assert set(fields.labelled) | set(fields.pool) == everything
        if loop.state == "TRAIN":
            sizes.append(len(fields.labelled))
        if loop.state == "LABEL":  # picked, not yet labelled: the picks are the pool's most uncertain items
            picked = set(fields.picked)
            assert len(picked) == k and picked <= set(fields.pool)
            probs = loop.predict(loop.data["x"]).softmax(dim=1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
            rest = [i for i in fields.pool if i not in picked]
            assert min(entropy[i] for i in picked) >= max(entropy[i] for i in rest)
            checks["picks"] += 1
        else:
            assert fields.picked == []
        saved = loop.state_dict()
        fresh = al.ActiveLearning(_pool_data(), log=_quiet)
        fresh.load_state_dict(json.loads(json.dumps(saved)))  # through text, as a checkpoint file would
        assert fresh.fields == loop.fields and fresh.state_dict() == saved

    loop.observe(observer)
    loop.run()
    assert sizes == list(range(initial, budget + 1, k))  # grows by exactly k per round, up to the budget
    assert checks["picks"] == (budget - initial) // k
    assert loop.state == END and states[-1] == END
    assert loop.fields.round == len(loop.fields.history) == len(sizes)


def test_active_learning_stops_when_the_pool_is_empty() -> None:
    al = _example("active_learning")
    loop = al.ActiveLearning(_pool_data(n_train=23), k=10, initial=5, budget=1000, trainer_kwargs={"max_steps": 2},
                             log=_quiet)
    loop.run()
    assert loop.state == END and loop.fields.pool == []
    assert sorted(loop.fields.labelled) == list(range(23))  # 5, then 10, then the last 8
    assert loop.fields.round == 3


@pytest.mark.slow
def test_uncertainty_picks_beat_random_picks_on_the_default_budget() -> None:
    al = _example("active_learning")
    data = al.load_data(seed=0)
    finals = {}
    for strategy in ("entropy", "random"):
        loop = al.ActiveLearning(data, strategy=strategy, seed=0, log=_quiet)
        loop.run()
        finals[strategy] = loop.fields.history
    history = finals["entropy"]
    assert history[-1] > history[0] + 0.2  # more labels, better model
    assert history[-1] > finals["random"][-1] + 0.02  # and the uncertain ones help more than random ones
