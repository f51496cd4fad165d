"""Lightning itself as the reference: real Lightning programs, ported by renaming imports, run the same here.

Each program in ``tests/lightning_programs/`` is the public Lightning code
(demos, tutorials, bug-report template) written against ``lightning``.  It
runs once under Lightning 2.6.6 and once ported with
:func:`statemachine_trainer.porting.port_source` -- the imports and the two
base classes renamed, not one other character changed -- and the two runs
must agree bit for bit: the trained weights, the logged metrics, what
``validate``/``test``/``predict`` return, and, for the hook recorder, every
hook call with its arguments, in order.
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from statemachine_trainer.porting import RENAMES, port_source

pytest.importorskip("lightning", reason="the reference runs need Lightning: pip install -e '.[lightning]'")

PROGRAMS = Path(__file__).parent / "lightning_programs"
ROOT = Path(__file__).parent.parent


def load(name: str, ported: bool) -> types.ModuleType:
    """The program ``name`` as written (Lightning) or ported (ours), as a fresh module object."""
    path = PROGRAMS / f"{name}.py"
    source = path.read_text()
    if ported:
        source = port_source(source)
        leftover = re.findall(r"^\s*(?:from|import) (?:lightning|pytorch_lightning)\b.*$", source, re.MULTILINE)
        assert not leftover, f"the port left Lightning imports: {leftover}"
    module = types.ModuleType(f"{'ported' if ported else 'lightning'}_{name}")
    module.__file__ = str(path)
    sys.path.insert(0, str(PROGRAMS))  # the programs share _digits.py
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - our own test programs
    finally:
        sys.path.remove(str(PROGRAMS))
    return module


def run_both(name: str, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from statemachine_trainer import Trainer

    # Lightning iterates a DataLoader as given: ours runs with resumable_data=False (the programs stay unedited).
    defaults = Trainer.__init__.__kwdefaults__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice (num_workers, ...) is not under test
        theirs = load(name, ported=False).run(tmp_path / "lightning")
        defaults["resumable_data"] = False
        try:
            ours = load(name, ported=True).run(tmp_path / "ours")
        finally:
            defaults["resumable_data"] = True
    return theirs, ours


def assert_same(theirs: Any, ours: Any, where: str = "$") -> None:
    """Equal all the way down: modules by state_dict (bit for bit), tensors with torch.equal, floats exactly."""
    if isinstance(theirs, torch.nn.Module):
        theirs, ours = theirs.state_dict(), ours.state_dict()
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and torch.equal(theirs, ours), f"{where} differs"
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and sorted(theirs) == sorted(ours), f"{where}: keys {sorted(theirs)} != " \
                                                                          f"{sorted(ours)}"
        for key in theirs:
            assert_same(theirs[key], ours[key], f"{where}.{key}")
    elif isinstance(theirs, (list, tuple)):
        assert len(theirs) == len(ours), f"{where}: length {len(theirs)} != {len(ours)}"
        for i, (a, b) in enumerate(zip(theirs, ours)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert theirs == ours, f"{where}: {theirs!r} (Lightning) != {ours!r} (ours)"


@pytest.mark.parametrize("program", ["autoencoder", "backbone_classifier", "boring", "manual_gan"])
def test_a_ported_lightning_program_runs_bit_identically(program: str, tmp_path: Path) -> None:
    theirs, ours = run_both(program, tmp_path)
    assert_same(theirs, ours)


#: Where the hook sequences differ on purpose (README "Differences from Lightning"); the comparison undoes exactly
#: these, and checks what it undoes in another way.
#: 1. Where a hook is both the module's and a callback's, the module's runs first (Lightning: the callbacks').
#: 2. Gradients are zeroed right after the optimizer step (Lightning: before the backward of the next accumulation
#:    window's first batch): on_before_zero_grad and optimizer_zero_grad are compared by count, not position.
#: 3. ``*_dataloader()`` is called when fit starts, before configure_optimizers (Lightning: the validation loader
#:    inside the sanity check, the training loader after it); compared by count.
MOVED = ("on_before_zero_grad", "optimizer_zero_grad", "train_dataloader", "val_dataloader")


def lightning_order(calls: list[tuple[str, str, tuple[Any, ...]]]) -> list[tuple[str, str, tuple[Any, ...]]]:
    """Our calls with difference 1 undone: a module hook directly followed by the same callback hook swaps."""
    calls, i = list(calls), 0
    while i < len(calls) - 1:
        (who, name, args), following = calls[i], calls[i + 1]
        if who == "module" and following == ("callback", name, args):
            calls[i], calls[i + 1] = following, calls[i]
            i += 2
        else:
            i += 1
    return calls


def without_moved(calls: list[tuple[str, str, tuple[Any, ...]]]) -> list[tuple[str, str, tuple[Any, ...]]]:
    return [call for call in calls if call[1] not in MOVED]


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_every_hook_call_matches_lightning(stage: str, hook_runs: dict[str, Any]) -> None:
    theirs, ours = hook_runs["lightning"]["calls"][stage], hook_runs["ours"]["calls"][stage]
    assert without_moved(lightning_order(ours)) == without_moved(theirs)
    for name in MOVED:  # differences 2 and 3: the same calls, elsewhere
        assert sorted(c[:2] for c in ours if c[1] == name) == sorted(c[:2] for c in theirs if c[1] == name), name


@pytest.fixture(scope="module")
def hook_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    theirs, ours = run_both("hooks", tmp_path_factory.mktemp("hooks"))
    return {"lightning": theirs, "ours": ours}


def test_hook_recorder_trains_the_same_weights(hook_runs: dict[str, Any]) -> None:
    assert_same(hook_runs["lightning"]["model"], hook_runs["ours"]["model"])


# -- the rename table ------------------------------------------------------------------------------------------
def test_port_source_renames_imports_and_base_classes_only() -> None:
    lightning = ("import lightning as L\nimport lightning.pytorch as pl\nimport pytorch_lightning as ptl\n"
                 "from lightning.pytorch.callbacks import ModelCheckpoint\nfrom lightning import Trainer\n"
                 "from pytorch_lightning.utilities import rank_zero_only\n"
                 "class A(L.LightningModule): pass\nclass D(pl.LightningDataModule): pass\n"
                 "x = 'lightning_logs'  # MyLightningModuleHelper stays\n")
    assert port_source(lightning) == (
        "import statemachine_trainer as L\nimport statemachine_trainer as pl\nimport statemachine_trainer as ptl\n"
        "from statemachine_trainer.callbacks import ModelCheckpoint\nfrom statemachine_trainer import Trainer\n"
        "from statemachine_trainer.utilities import rank_zero_only\n"
        "class A(L.TrainingModule): pass\nclass D(pl.DataModule): pass\n"
        "x = 'lightning_logs'  # MyLightningModuleHelper stays\n")


def test_readme_rename_table_is_the_code_table() -> None:
    readme = (ROOT / "README.md").read_text()
    for rename in RENAMES:
        assert rename.why in readme, f"README's porting table lacks the row for {rename.why}"


def test_the_port_command_prints_or_rewrites_a_file(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("from lightning.pytorch import LightningModule\n")
    printed = subprocess.run([sys.executable, "-m", "statemachine_trainer.cli", "port", str(script)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
    assert printed.stdout == "from statemachine_trainer import TrainingModule\n"
    assert script.read_text() == "from lightning.pytorch import LightningModule\n"
    subprocess.run([sys.executable, "-m", "statemachine_trainer.cli", "port", str(script), "--write"], check=True,
                   capture_output=True, cwd=ROOT)
    assert script.read_text() == "from statemachine_trainer import TrainingModule\n"
