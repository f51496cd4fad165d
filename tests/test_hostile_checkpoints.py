"""Damaged and hostile checkpoints: each refused by ``CheckpointError`` naming the file and the key, nothing applied.

One table per attack surface (issue 16):

- ``STATE_EDITS``: ``state.json`` edited with its checksums recomputed (so
  only the reader's own checks stand in the way) -- wrong types, unknown keys,
  numbers too long to convert, nesting too deep, unhashable keys, unknown
  dtypes, bad UTF-8, an empty file.  ``fit(ckpt_path=...)`` must refuse each
  one *before* the module, the optimizer, the RNGs, the loop tree, the
  callbacks or the loader position change, and ``verify``/``inspect``/``diff``
  and ``find_latest`` must not crash on it;
- ``FILE_ATTACKS``: files that are symlinks (to ``/dev/zero``), FIFOs, or
  other sizes than the manifest says -- refused before they are read;
- ``MANIFEST_EDITS``: the manifest itself (bad UTF-8, huge numbers, a flipped
  bit in its recorded step, an unknown key);
- saving beside symlinks, and pruning that is killed half-way.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from statemachine_trainer import Callback, Trainer
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.checkpoint import (
    CheckpointError,
    find_latest,
    load_latest,
    release_spares,
    save_checkpoint_dir,
    summarize,
    verify_checkpoint,
)
from statemachine_trainer.checkpoint._inspect import format_summary
from statemachine_trainer.cli import main
from statemachine_trainer.data import ResumableLoader

from ._ckpt_edit import edit_state, rewrite, write_manifest
from .test_resume import Net, loader
from .test_resume_safety import fit_with_checkpoints

# -- a real run's checkpoints, and a run that must stay untouched ----------------------------------------------


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    fit_with_checkpoints(root, Net(init_seed=0), max_epochs=1, logger=False, accumulate_grad_batches=2)
    return root


@pytest.fixture
def ckpt(run_root: Path, tmp_path: Path) -> Path:
    """A copy of the run's last checkpoint (step 3 of 3; epoch=0-step=2.ckpt is an older one)."""
    return Path(shutil.copytree(run_root / "ckpts" / "epoch=0-step=3.ckpt", tmp_path / "ckpts" / "epoch=0-step=3.ckpt"))


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """A FIFO read would block forever: fail the test instead of the suite."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("a checkpoint read hung"))
    signal.alarm(120)
    yield
    signal.alarm(0)


def _rng() -> tuple[Any, ...]:
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()


class Probe(Callback):
    """A callback whose load_state_dict changes itself, then refuses a state without "limit"."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "limit": 3}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]
        self.limit = int(state["limit"])


def _snapshot(trainer: Trainer, module: Net, data: ResumableLoader, saver: ModelCheckpoint) -> dict[str, Any]:
    return {"module": {k: v.clone() for k, v in module.state_dict().items()},
            "grads": [p.grad for p in module.parameters()], "data": data.state_dict(), "saver": saver.state_dict(),
            "probe": [cb.state_dict() for cb in trainer.callbacks if isinstance(cb, Probe)],
            "loops": json.dumps(trainer.fit_loop.state_dict(), sort_keys=True)}


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["module"].keys() == b["module"].keys()
    assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"]), "the module was modified"
    assert all(g is None for g in b["grads"]), "gradients were restored"
    assert a["data"] == b["data"], "the loader position was restored"
    assert a["saver"] == b["saver"] and a["probe"] == b["probe"], "a callback state was restored"
    assert a["loops"] == b["loops"], "the loop tree was restored"


def refused_by_fit(path: Path, tmp_path: Path) -> str:
    """``fit(ckpt_path=path)`` raises CheckpointError and nothing of the run changed; the message."""
    module, data = Net(init_seed=1), ResumableLoader(loader(0), seed=3)
    saver = ModelCheckpoint(dirpath=tmp_path / "new", every_n_train_steps=1, save_top_k=-1)
    trainer = Trainer(max_epochs=1, seed=5, enable_progress_bar=False, logger=False, callbacks=[saver, Probe()],
                      num_sanity_val_steps=0, accumulate_grad_batches=2, enable_model_summary=False)
    before = _snapshot(trainer, module, data, saver)
    with pytest.raises(CheckpointError) as raised:
        trainer.fit(module, data, ckpt_path=path)
    rng = _rng()
    _same(before, _snapshot(trainer, module, data, saver))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)  # what fit's seed=5 set: no RNG state was restored
    seeded = _rng()
    assert rng[0] == seeded[0] and np.array_equal(rng[1], seeded[1]) and torch.equal(rng[2], seeded[2]), \
        "an RNG state was restored"
    assert trainer.optimizers == [] or all(not opt.state for opt in trainer.optimizers), "the optimizer was restored"
    return str(raised.value)


def _tools_do_not_crash(path: Path) -> None:
    """verify, inspect, diff and find_latest on a refused checkpoint: an answer or CheckpointError, never more."""
    assert verify_checkpoint(path), "verify passed a checkpoint that fit refuses"
    try:
        format_summary(summarize(path))
    except CheckpointError:
        pass
    assert main(["diff", str(path), str(path)]) in (0, 2)
    found, skipped = find_latest(path.parent)
    assert found is None and [p for p, _ in skipped] == [path]


# -- state.json edited, checksums recomputed --------------------------------------------------------------------

_HUGE, _DEEP = "9" * 10_001, "[" * 100_000 + "]" * 100_000


def _text(marker: str, replacement: str) -> Callable[[Path], None]:
    """Put ``replacement`` -- text ``json.dumps`` cannot write -- where the edit left the string ``marker``."""

    def damage(path: Path) -> None:
        rewrite(path, "state.json", (path / "state.json").read_bytes().replace(json.dumps(marker).encode(),
                                                                               replacement.encode()))

    return damage


def _edit(change: Callable[[dict[str, Any]], Any], then: Callable[[Path], None] | None = None
          ) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        edit_state(path, change)
        if then is not None:
            then(path)

    return damage


def _set(*keys_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *keys, value = keys_and_value

    def change(state: dict[str, Any]) -> None:
        target = state
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _displace(*keys_and_value: Any) -> Callable[[dict[str, Any]], None]:
    """Like :func:`_set`, but the old value moves to ``$.extra.displaced``: its tensors stay referenced, so the
    check that fires is the one for the new value, not the tensor file's bookkeeping."""
    *keys, value = keys_and_value

    def change(state: dict[str, Any]) -> None:
        target = state
        for key in keys[:-1]:
            target = target[key]
        key = keys[-1] if keys[-1] is not _FIRST else next(iter(target))
        state["extra"]["displaced"] = target[key]
        target[key] = value

    return change


_FIRST = object()  # the first key of a mapping, whatever it is called


def _with_tensor(name: str, tensor: torch.Tensor, then: Callable[[Path], None]) -> Callable[[Path], None]:
    """Add ``tensor`` to tensors.pt as ``name`` (checksums recomputed), then ``then``."""

    def damage(path: Path) -> None:
        tensors = torch.load(path / "tensors.pt", weights_only=True) | {name: tensor}
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        rewrite(path, "tensors.pt", buffer.getvalue())
        then(path)

    return damage


STATE_EDITS: list[tuple[str, Callable[[Path], None], str]] = [
    ("grads-a-list", _edit(_set("grads", [])), r"\$\.grads"),
    ("python-rng-an-int", _edit(_set("rng", "python", 7)), r"\$\.rng\.python"),
    ("python-rng-short", _edit(lambda s: s["rng"]["python"]["__tuple__"][1].update(__tuple__=[1, 2, 3])),
     r"\$\.rng\.python"),
    ("numpy-rng-unknown-dtype", _edit(lambda s: s["rng"]["numpy"]["__tuple__"][1].update(dtype="<q9")),
     r"\$\.rng\.numpy\[1\].*NumPy array"),
    ("torch-rng-a-string", _edit(_displace("rng", "torch", "seed")), r"\$\.rng\.torch"),
    ("torch-rng-a-float-tensor", _edit(lambda s: s["rng"].update(torch=s["module"].pop("net.0.bias")) or s[
        "module"].update({"net.0.bias": {"__tensor__": "rng/torch"}})), r"\$\.rng\.torch"),
    ("data-unknown-key", _edit(lambda s: s["data"]["train"].update(bogus=1)), r"\$\.data\.train"),
    ("data-position-a-string", _edit(lambda s: s["data"]["train"].update(position="3")), r"\$\.data\.train"),
    ("callbacks-a-list", _edit(_set("callbacks", [])), r"\$\.callbacks"),
    ("callback-state-refused", _edit(lambda s: s["callbacks"].update(Probe={"count": 7})),
     r"\$\.callbacks\['Probe'\] was refused by Probe \(KeyError"),
    ("an-unknown-top-level-key", _edit(_set("surprise", 1)), r"surprise"),
    ("a-missing-part", _edit(lambda s: s.pop("precision")), r"it has no \$\.precision"),
    ("module-tensor-a-number", _edit(_displace("module", _FIRST, 3.0)), r"\$\.module\['net\.0\.weight'\] is float"),
    ("module-tensor-unknown", _edit(_displace("module", _FIRST, {"__tensor__": "nope"})),
     r"\$\.module\['net\.0\.weight'\]: the state refers to tensor 'nope'"),
    ("optimizer-lr-a-string", _edit(lambda s: s["optimizers"][0]["param_groups"][0].update(lr="fast")),
     r"\$\.optimizers\[0\]\.param_groups\[0\]\['lr'\]"),
    ("optimizer-params-renumbered", _edit(lambda s: s["optimizers"][0]["param_groups"][0].update(
        params=[0, 0, 0, 0])), r"\$\.optimizers\[0\]\.param_groups"),
    ("optimizer-state-a-list", _edit(_displace("optimizers", 0, "state", [])), r"\$\.optimizers\[0\]\.state"),
    ("optimizer-buffer-a-string", _edit(_displace("optimizers", 0, "state", "__items__", 0, 1, "exp_avg", "x")),
     r"\$\.optimizers\[0\]\.state\[0\]\['exp_avg'\] is str"),
    ("optimizer-buffer-misshaped", _with_tensor("bogus", torch.zeros(3), _edit(_displace(
        "optimizers", 0, "state", "__items__", 0, 1, "exp_avg", {"__tensor__": "bogus"}))),
     r"\['exp_avg'\] is a torch\.float32 tensor of shape \(3,\), not a buffer for a parameter of shape \(16, 6\)"),
    ("scheduler-unknown-key", _edit(lambda s: s["schedulers"][0].update(bogus=1)), r"\$\.schedulers\[0\]"),
    ("scheduler-epoch-a-string", _edit(lambda s: s["schedulers"][0].update(last_epoch="1")),
     r"\$\.schedulers\[0\]\['last_epoch'\] is str '1', not a number"),
    ("scheduler-lrs-not-a-list", _edit(lambda s: s["schedulers"][0].update(_last_lr=0.1)),
     r"\$\.schedulers\[0\]\['_last_lr'\] is float, not a list"),
    ("loop-position-unknown-state", _edit(lambda s: s["loops"]["loops"]["fit_loop"]["position"].update(
        state="NOWHERE")), r"\$\.loops"),
    ("loop-progress-a-string", _edit(lambda s: s["loops"]["loops"]["fit_loop"].update(progress="many")),
     r"\$\.loops"),
    ("results-misshaped", _edit(_displace("results", "slots", 5)), r"\$\.results\.slots is int 5, not list"),
    ("results-stage-a-dict", _edit(_set("results", "stage", {"a": 1})), r"\$\.results\.stage is dict"),
    ("results-refused", _edit(lambda s: s["results"].pop("fx") and None), r"\$\.results was refused by Results \(KeyError"),
    ("hparams-misshaped", _edit(_set("hparams", [])), r"\$\.hparams"),
    ("datamodule-a-number", _edit(_set("datamodule", 5)), r"\$\.datamodule"),
    ("an-unknown-marker", _edit(_set("extra", {"__bogus__": 1})), r"\$\.extra.*marker"),
    ("an-unhashable-key", _edit(_set("extra", {"__items__": [[[1, 2], 3]]})), r"\$\.extra.*dict key"),
    ("a-tensor-used-twice", _edit(lambda s: s["grads"].update(
        {"net.0.weight": s["module"]["net.0.weight"]})), r"\$\.grads\['net\.0\.weight'\]: .* a second time"),
    ("grads-of-another-dtype", _with_tensor("grads/net.0.bias", torch.zeros(16, dtype=torch.int64), _edit(
        lambda s: s["grads"].update({"net.0.bias": {"__tensor__": "grads/net.0.bias"}}))),
     r"\$\.grads\['net\.0\.bias'\] is a torch\.int64 tensor"),
    ("a-10001-digit-integer", _edit(_set("data", "train", "position", "HUGE"), _text("HUGE", _HUGE)),
     r"state\.json is not valid checkpoint JSON"),
    ("100000-nested-arrays", _edit(_set("extra", "DEEP"), _text("DEEP", _DEEP)), r"state\.json nests"),
    ("150-nested-arrays", _edit(_set("extra", "DEEP"), _text("DEEP", "[" * 150 + "]" * 150)),
     r"more than 100 levels deep"),
    ("a-NaN-literal", _edit(_set("extra", "NAN"), _text("NAN", "NaN")), r"NaN is not JSON"),
    ("not-a-mapping", _edit(lambda s: [s]), r"\$ is a list"),
    ("bad-utf-8", lambda p: rewrite(p, "state.json", b"\xff\xfe" + (p / "state.json").read_bytes()),
     r"state\.json is not UTF-8"),
    ("zero-length", lambda p: rewrite(p, "state.json", b""), r"state\.json is not valid checkpoint JSON"),
]


@pytest.mark.parametrize(("damage", "message"), [case[1:] for case in STATE_EDITS], ids=[c[0] for c in STATE_EDITS])
def test_an_edited_state_is_refused_before_anything_is_applied(ckpt: Path, tmp_path: Path, damage, message) -> None:
    damage(ckpt)
    text = refused_by_fit(ckpt, tmp_path)
    assert str(ckpt) in text
    assert re.search(message, text), text
    assert "Traceback" not in text
    if not verify_checkpoint(ckpt):  # type and shape errors are the run's business: verify checks the files
        return
    _tools_do_not_crash(ckpt)


# -- files that are not what the manifest says ------------------------------------------------------------------


def _symlink_to_dev_zero(path: Path) -> None:
    (path / "tensors.pt").unlink()
    os.symlink("/dev/zero", path / "tensors.pt")


def _fifo(path: Path) -> None:
    (path / "state.json").unlink()
    os.mkfifo(path / "state.json")


def _symlinked_manifest(path: Path) -> None:
    (path / "manifest.json").rename(path / "real-manifest")
    os.symlink(path / "real-manifest", path / "manifest.json")


def _grown(path: Path) -> None:
    with open(path / "tensors.pt", "ab") as f:
        f.write(b"\0" * 4096)


def _size_lie(path: Path) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["tensors.pt"]["size"] = 1 << 40
    write_manifest(path, manifest)


FILE_ATTACKS = [
    ("tensors-a-symlink-to-dev-zero", _symlink_to_dev_zero, r"tensors\.pt is a symbolic link"),
    ("state-a-fifo", _fifo, r"state\.json is a FIFO"),
    ("manifest-a-symlink", _symlinked_manifest, r"manifest\.json is a symbolic link"),
    ("tensors-grown", _grown, r"tensors\.pt has \d+ bytes but the manifest records"),
    ("tensors-size-a-lie", _size_lie, r"tensors\.pt has \d+ bytes but the manifest records 1099511627776"),
]


@pytest.mark.parametrize(("damage", "message"), [case[1:] for case in FILE_ATTACKS], ids=[c[0] for c in FILE_ATTACKS])
def test_a_file_that_is_not_what_the_manifest_says_is_refused_unread(ckpt: Path, tmp_path: Path, damage,
                                                                      message) -> None:
    damage(ckpt)
    problems = verify_checkpoint(ckpt)
    assert problems and any(re.search(message, p) for p in problems), problems
    assert re.search(message, refused_by_fit(ckpt, tmp_path))
    _tools_do_not_crash(ckpt)
    assert main(["inspect", str(ckpt)]) == 1


def test_an_oversized_state_json_is_refused_before_it_is_read(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    edit_state(ckpt, _set("extra", "x" * (2 << 20)))
    monkeypatch.setenv("STATEMACHINE_TRAINER_MAX_STATE_MB", "1")
    text = refused_by_fit(ckpt, tmp_path)
    assert "state.json holds" in text and "STATEMACHINE_TRAINER_MAX_STATE_MB" in text
    with pytest.raises(CheckpointError, match="more than the 1048576 allowed"):  # nor can a run write one
        save_checkpoint_dir(tmp_path / "big", {"extra": "x" * (2 << 20)})
    assert not any(tmp_path.glob(".big*")) and not (tmp_path / "big").exists()


# -- the manifest ---------------------------------------------------------------------------------------------


def _manifest_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        (path / "manifest.json").write_bytes(change((path / "manifest.json").read_bytes()))

    return damage


def _flip_step(data: bytes) -> bytes:
    at = data.index(b'"step": ') + len(b'"step": ')
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]  # 3 -> 2: an older checkpoint's step


MANIFEST_EDITS = [
    ("bad-utf-8", _manifest_bytes(lambda d: d.replace(b'"format"', b'"f\xffrmat"')), r"not UTF-8"),
    ("zero-length", _manifest_bytes(lambda d: b""), r"manifest\.json is not valid checkpoint JSON"),
    ("a-10001-digit-size", _manifest_bytes(lambda d: d.replace(b'"size": ', b'"size": ' + _HUGE.encode(), 1)),
     r"manifest\.json is not valid checkpoint JSON"),
    ("deeply-nested", _manifest_bytes(lambda d: d.replace(b'"metadata": {', b'"metadata": {"x": ' + _DEEP.encode()
                                                          + b", ")), r"manifest\.json nests"),
    ("a-flipped-step", _manifest_bytes(_flip_step), r"does not match its own crc32 checksum"),
    ("an-unknown-key", lambda p: write_manifest(p, json.loads((p / "manifest.json").read_text()) | {"x": 1}),
     r"key\(s\) \['x'\]"),
    ("a-bool-size", lambda p: write_manifest(p, _with_bool_size(json.loads((p / "manifest.json").read_text()))),
     r'"files" must list'),
]


def _with_bool_size(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["files"]["state.json"]["size"] = True
    return manifest


@pytest.mark.parametrize(("damage", "message"), [case[1:] for case in MANIFEST_EDITS],
                         ids=[c[0] for c in MANIFEST_EDITS])
def test_a_damaged_manifest_is_refused_and_latest_falls_back(ckpt: Path, run_root: Path, tmp_path: Path, damage,
                                                             message) -> None:
    older = Path(shutil.copytree(run_root / "ckpts" / "epoch=0-step=2.ckpt", ckpt.parent / "epoch=0-step=2.ckpt"))
    damage(ckpt)
    assert re.search(message, verify_checkpoint(ckpt)[0])
    assert re.search(message, refused_by_fit(ckpt, tmp_path))
    found, skipped = find_latest(ckpt.parent)
    assert found == older and [p for p, _ in skipped] == [ckpt] and re.search(message, skipped[0][1])
    assert load_latest(ckpt.parent)[0] == older
    assert main(["inspect", str(ckpt)]) == 1 and main(["diff", str(ckpt), str(older)]) == 2


def test_a_damaged_older_manifest_does_not_stop_latest(ckpt: Path, run_root: Path) -> None:
    """Ordering reads every manifest: one that is not even UTF-8 is ordered by its name, not a crash."""
    older = Path(shutil.copytree(run_root / "ckpts" / "epoch=0-step=2.ckpt", ckpt.parent / "epoch=0-step=2.ckpt"))
    data = bytearray((older / "manifest.json").read_bytes())
    data[10] = 0xFF
    (older / "manifest.json").write_bytes(bytes(data))
    assert find_latest(ckpt.parent) == (ckpt, [])


# -- saving beside symlinks, pruning killed half-way -----------------------------------------------------------


def _hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_saving_onto_a_symlinked_checkpoint_replaces_the_link_not_its_target(tmp_path: Path) -> None:
    target = save_checkpoint_dir(tmp_path / "step=1", {"w": torch.ones(3)}, {"step": 1})
    os.symlink(target, tmp_path / "last.ckpt")
    save_checkpoint_dir(tmp_path / "last.ckpt", {"w": torch.zeros(3)}, {"step": 2})
    assert not (tmp_path / "last.ckpt").is_symlink() and verify_checkpoint(tmp_path / "last.ckpt") == []
    assert verify_checkpoint(target) == [] and torch.equal(load_latest(target.parent)[1][0]["w"], torch.zeros(3))
    assert _hidden(tmp_path) == []


def test_pruning_beside_a_symlinked_checkpoint_neither_follows_nor_fails(tmp_path: Path) -> None:
    outside = save_checkpoint_dir(tmp_path / "elsewhere" / "step=9", {"w": torch.ones(1)}, {"step": 9})
    root = tmp_path / "ckpts"
    for step in (1, 2):
        save_checkpoint_dir(root / f"step={step}", {"w": torch.ones(1) * step}, {"step": step})
    os.symlink(outside, root / "linked")
    os.symlink(root / "step=1", root / "alias")
    save_checkpoint_dir(root / "step=3", {"w": torch.ones(1) * 3}, {"step": 3}, keep_last=1)
    release_spares()  # the pruned ones are deleted in the background (one tensors file kept for the next save)
    assert sorted(p.name for p in root.iterdir()) == ["alias", "linked", "step=3"]
    assert verify_checkpoint(outside) == [] and _hidden(root) == []


def test_a_prune_killed_half_way_leaves_nothing_visible_and_the_next_save_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "ckpts"
    for step in (1, 2):
        save_checkpoint_dir(root / f"step={step}", {"w": torch.ones(1) * step}, {"step": step})
    # A process that prunes step=1 and is killed between the rename that hides it and the (background) delete.
    script = (f"import os, signal; from statemachine_trainer.checkpoint import _fsops, _latest; "
              f"_fsops.remove_entry = lambda p: os.kill(os.getpid(), signal.SIGKILL); "
              f"_latest.prune({str(root)!r}, 1)")
    repo = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", script], check=False, env={**os.environ, "PYTHONPATH": repo})
    assert result.returncode == -signal.SIGKILL
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["step=2"]
    # step=1, hidden, and its tensors file, kept for a next save to write over: both strays of a dead process
    assert [re.sub(r"-\d+$", "", name) for name in _hidden(root)] == [".step=1.del", ".tensors.pt.spare"]
    assert find_latest(root) == (root / "step=2", [])
    save_checkpoint_dir(root / "step=3", {"w": torch.ones(1) * 3}, {"step": 3})
    assert _hidden(root) == [] and sorted(p.name for p in root.iterdir()) == ["step=2", "step=3"]


# -- diff compares runs, not where they were stored -----------------------------------------------------------


def test_diff_of_the_same_run_under_two_roots_reports_the_paths_as_a_note(run_root: Path, tmp_path: Path,
                                                                         capsys) -> None:
    other = tmp_path / "other"
    fit_with_checkpoints(other, Net(init_seed=0), max_epochs=1, logger=False, accumulate_grad_batches=2)
    a, b = run_root / "ckpts" / "epoch=0-step=3.ckpt", other / "ckpts" / "epoch=0-step=3.ckpt"
    assert json.loads((a / "state.json").read_text())["callbacks"] != json.loads((b / "state.json").read_text())[
        "callbacks"]  # the stored directory differs...
    capsys.readouterr()
    assert main(["diff", str(a), str(b)]) == 0  # ...but it is the same run
    out = capsys.readouterr().out
    assert out.startswith("identical") and "note:" in out and "dirpath" in out
    assert main(["diff", str(a), str(other / "ckpts" / "epoch=0-step=2.ckpt")]) == 1  # a real difference still is


@pytest.mark.parametrize(("content", "message"), [(b"\xff\xfe{}", "is not UTF-8"), (b"", "is not valid checkpoint JSON")],
                         ids=["bad-utf-8", "zero-length"])
def test_inspect_describes_an_unreadable_state_json_instead_of_crashing(ckpt: Path, capsys, content: bytes,
                                                                        message: str) -> None:
    rewrite(ckpt, "state.json", content)
    capsys.readouterr()
    assert main(["inspect", str(ckpt)]) == 1
    out = capsys.readouterr().out
    assert f"state.json: FAILED - {ckpt / 'state.json'} {message}" in out and "tensors.pt: ok" in out


def test_model_checkpoint_deletes_a_symlinked_checkpoint_as_a_link(tmp_path: Path) -> None:
    from statemachine_trainer.checkpoint import remove_checkpoint

    target = save_checkpoint_dir(tmp_path / "step=1", {"w": torch.ones(1)}, {"step": 1})
    os.symlink(target, tmp_path / "best.ckpt")
    remove_checkpoint(tmp_path / "best.ckpt")
    assert verify_checkpoint(target) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["step=1"]
    remove_checkpoint(target)
    assert list(tmp_path.iterdir()) == []
