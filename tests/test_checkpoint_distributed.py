"""Multi-process checkpoints: a real 2-rank gloo run via torchrun, damage, a killed rank, world sizes, the CLI.

One torchrun launch (module fixture ``dist_run``, ~15 s on 2 cores) writes every
2-rank checkpoint these tests need; tests that damage one work on a copy.
Everything else calls the same API in this process with no process group,
where it runs at world size 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given

from statemachine_trainer.checkpoint import (
    PARTS_FORMAT_VERSION,
    CheckpointError,
    WorldSizeError,
    diff_checkpoints,
    find_latest,
    load_checkpoint_dir,
    load_checkpoint_parts,
    load_latest,
    load_latest_parts,
    read_manifest,
    release_spares,
    save_checkpoint_dir,
    save_checkpoint_parts,
    verify_checkpoint,
)
from statemachine_trainer.cli import main
from statemachine_trainer.state import SCHEMA_VERSION

from ._ckpt_dist_worker import states
from ._ckpt_edit import write_manifest
from .test_checkpoint_format import same
from .test_checkpoint_format import states as state_trees

WORKER = Path(__file__).parent / "_ckpt_dist_worker.py"
PART_FILES = ["state.json", "tensors.pt", "rank-0/state.json", "rank-0/tensors.pt", "rank-1/state.json",
              "rank-1/tensors.pt"]


class DistRun:
    def __init__(self, out: Path, proc: subprocess.CompletedProcess[str]) -> None:
        self.out, self.proc = out, proc
        self.run, self.killed = out / "run", out / "killed"
        self.ws1, self.single = out / "ws1", out / "single"
        self.results = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory: pytest.TempPathFactory) -> DistRun:
    out = tmp_path_factory.mktemp("dist")
    save_checkpoint_parts(out / "ws1", *states(4, 0), {"step": 4})  # no process group: world size 1
    save_checkpoint_dir(out / "single", states(4, 0)[0], {"step": 4})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(WORKER), str(out), str(out / "ws1"), str(out / "single")],
                          capture_output=True, text=True, timeout=240, check=False)
    if not all((out / f"rank-{r}.json").exists() for r in range(2)):
        pytest.fail(f"the 2-rank run did not finish its checks:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return DistRun(out, proc)


# -- the real 2-rank run ---------------------------------------------------------------------------------

def test_two_ranks_write_replicated_state_once_and_read_their_parts_back_bit_identically(dist_run: DistRun) -> None:
    for rank, results in enumerate(dist_run.results):
        for step in ("1", "2", "3"):
            assert results["roundtrip"][step] == [None, None, 2], (rank, step)  # loaded == saved, on that rank
        assert results["latest"] == [str(dist_run.run / "step=3"), None, []]
    assert sorted(os.listdir(dist_run.run)) == ["step=2", "step=3"]  # keep_last=2 pruned step=1
    path = dist_run.run / "step=3"
    assert sorted(os.listdir(path)) == ["manifest.json", "rank-0", "rank-1", "state.json", "tensors.pt"]
    manifest = read_manifest(path)
    assert manifest["format_version"] == PARTS_FORMAT_VERSION and manifest["world_size"] == 2
    assert list(manifest["files"]) == PART_FILES and manifest["metadata"] == {"step": 3}
    for name in PART_FILES:
        assert manifest["files"][name]["size"] == (path / name).stat().st_size
    # Replicated state once, at the top; each rank dir holds only that rank's own state.
    assert set(json.loads((path / "state.json").read_text())) == {"module", "optimizers", "schedulers", "loops",
                                                                  "callbacks"}
    for rank in range(2):
        assert set(json.loads((path / f"rank-{rank}" / "state.json").read_text())) == {"rng", "loader", "grad_accum"}
        replicated, local, _ = load_checkpoint_parts(path, rank=rank, world_size=2)
        assert same(replicated, states(3, rank)[0])
        assert same(local, states(3, rank)[1])
    assert not torch.equal(states(3, 0)[1]["rng"]["torch"], states(3, 1)[1]["rng"]["torch"])  # parts differ
    assert verify_checkpoint(path) == []
    assert find_latest(dist_run.run) == (path, [])


def test_a_rank_that_cannot_encode_its_state_makes_every_rank_raise_and_nothing_is_written(dist_run: DistRun
                                                                                          ) -> None:
    rank0, rank1 = (results["refused"] for results in dist_run.results)
    assert rank1 == "$.fn: cannot store a function in a checkpoint; keep only numbers, strings, lists, dicts and tensors."
    assert rank0 == f"rank 1 failed to save checkpoint {dist_run.out / 'refused'}: {rank1}"
    assert not [name for name in os.listdir(dist_run.out) if "refused" in name]  # no checkpoint, no temp dir


def test_a_damaged_part_makes_every_rank_refuse_the_load(dist_run: DistRun) -> None:
    rank0, rank1 = (results["bad"] for results in dist_run.results)
    checksum = "bad/rank-1/tensors.pt does not match its crc32 checksum in the manifest"
    assert rank1.startswith("CheckpointError: ") and checksum in rank1
    assert rank0.startswith("CheckpointError: rank 1 failed to load its part of checkpoint") and checksum in rank0


def test_another_world_size_is_refused_naming_the_one_that_wrote_it(dist_run: DistRun) -> None:
    for results in dist_run.results:  # 2 ranks loading checkpoints written by one process
        assert results["ws1"].startswith("WorldSizeError: ")
        assert "was written at world size 1, but this run has world size 2" in results["ws1"]
        assert "Resume it with 1 process(es)" in results["ws1"]
        assert results["single"].startswith("WorldSizeError: ")
        assert "is a single-process checkpoint (world size 1, written by save_checkpoint_dir())" in results["single"]
        assert "this run has world size 2" in results["single"]
    path = dist_run.run / "step=3"  # and one process loading a 2-rank checkpoint, every way it can try
    with pytest.raises(WorldSizeError, match=r"was written at world size 2, but this run has world size 1\. Resume "
                                             r"it with 2 process\(es\) \(torchrun --nproc-per-node 2"):
        load_checkpoint_parts(path)
    with pytest.raises(WorldSizeError, match="world size 2, but this run has world size 3"):
        load_checkpoint_parts(path, rank=0, world_size=3)
    with pytest.raises(WorldSizeError, match="written by a multi-process run at world size 2"):
        load_checkpoint_dir(path)
    with pytest.raises(WorldSizeError, match="world size 2"):
        load_latest(dist_run.run)  # not skipped in favour of an older checkpoint: that would lose progress
    with pytest.raises(WorldSizeError, match="world size 2"):
        load_latest_parts(dist_run.run)


def test_a_rank_killed_while_writing_its_part_commits_nothing(dist_run: DistRun, tmp_path: Path) -> None:
    out = dist_run.proc.stdout
    assert dist_run.proc.returncode != 0 and "SIGKILL" in dist_run.proc.stderr  # rank 1 was killed
    assert "rank 0: step=1 committed" in out and "rank 1: step=1 committed" in out
    assert "step=2 committed" not in out  # no rank returned from the interrupted save
    killed = dist_run.killed
    assert not (killed / "step=2").exists()
    assert find_latest(killed) == (killed / "step=1", [])  # the hidden temp dir is never a candidate
    for rank in range(2):
        _, local, manifest = load_checkpoint_parts(killed / "step=1", rank=rank, world_size=2)
        assert same(local, states(1, rank)[1])
        assert manifest["metadata"] == {"step": 1}
    leftovers = [p for p in killed.iterdir() if p.name.startswith(".")]
    assert all(not (p / "manifest.json").exists() for p in leftovers)
    # The next save (the writers' pids are dead) removes what the killed one left.
    copy = shutil.copytree(killed, tmp_path / "killed", symlinks=True)
    save_checkpoint_parts(copy / "step=3", {"x": 1}, {"y": 2}, {"step": 3})
    assert sorted(os.listdir(copy)) == ["step=1", "step=3"]


# -- damage: invalid, and latest falls back ---------------------------------------------------------------

def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(path: Path, change: Any) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    write_manifest(path, manifest)


_DAMAGE = {
    "missing manifest": (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing", 0),
    "missing part": (lambda p: shutil.rmtree(p / "rank-1"), "rank-1/state.json is missing", 1),
    "missing part file": (lambda p: (p / "rank-0" / "tensors.pt").unlink(), "rank-0/tensors.pt is missing", 0),
    "corrupted part": (lambda p: _flip(p / "rank-1" / "tensors.pt"), "rank-1/tensors.pt does not match its crc32", 1),
    "truncated part": (lambda p: os.truncate(p / "rank-1" / "state.json", 10), "rank-1/state.json has 10 bytes", 1),
    "extra unlisted part": (lambda p: shutil.copytree(p / "rank-1", p / "rank-2"),
                            "rank-2 is not listed in the manifest of this world-size-2 checkpoint", 0),
    "extra file in a part": (lambda p: (p / "rank-1" / "extra.pt").write_bytes(b"x"),
                             "rank-1/extra.pt is not listed in the manifest", 1),
    "part missing from the manifest": (
        lambda p: _edit_manifest(p, lambda m: [m["files"].pop(f"rank-1/{n}") for n in ("state.json", "tensors.pt")]),
        "\"files\" must list", 1),
    "manifest for another world size": (lambda p: _edit_manifest(p, lambda m: m.update(world_size=3)),
                                        "rank-2/state.json", 0),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_a_damaged_multi_part_checkpoint_is_invalid_and_latest_falls_back(dist_run: DistRun, tmp_path: Path,
                                                                         damage: str) -> None:
    hurt, message, failing_rank = _DAMAGE[damage]
    good = shutil.copytree(dist_run.run / "step=2", tmp_path / "step=2")
    bad = shutil.copytree(dist_run.run / "step=3", tmp_path / "step=3")
    hurt(bad)
    problems = verify_checkpoint(bad)
    assert problems and any(message in p for p in problems), problems
    found, skipped = find_latest(tmp_path)
    assert found == good
    assert len(skipped) == 1 and skipped[0][0] == bad and message in skipped[0][1]
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_checkpoint_parts(bad, rank=failing_rank, world_size=2)
    replicated, _, _ = load_checkpoint_parts(good, rank=failing_rank, world_size=2)
    assert same(replicated, states(2, 0)[0])
    assert main(["verify", str(bad)]) == 1


# -- the CLI on multi-part checkpoints -----------------------------------------------------------------------

def test_verify_and_inspect_cover_every_part(dist_run: DistRun, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = shutil.copytree(dist_run.run / "step=3", tmp_path / "step=3")
    assert main(["verify", str(path)]) == 0
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"format version 2, schema version {SCHEMA_VERSION}" in text
    assert "world size 2: replicated state and 2 rank part(s)" in text
    assert "stopped at: fit_loop.ADVANCE" in text
    assert "  tensors: 12, " in text and "  rank-0 tensors: 3, " in text and "  rank-1 tensors: 3, " in text
    assert all(f"    {name}: ok" in text for name in PART_FILES)
    _flip(path / "rank-1" / "tensors.pt")
    assert main(["verify", str(path)]) == 1
    assert "rank-1/tensors.pt does not match its crc32 checksum" in capsys.readouterr().out
    assert main(["inspect", str(path), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["world_size"] == 2 and not summary["valid"]
    assert [f for f, entry in summary["files"].items() if not entry["ok"]] == ["rank-1/tensors.pt"]
    assert summary["ranks"][0]["tensors"]["count"] == 3 and summary["ranks"][1]["tensors"] is None


@pytest.mark.parametrize(("a", "b", "status", "expected"), [
    ("diff-a", "diff-a", 0, "identical"),
    ("diff-a", "diff-b", 1, "first difference: rank-1: $.loader.index: 36 != 37"),
    ("run/step=2", "run/step=3", 1, "first difference: $.module['0.weight'] (tensor): values differ"),
    ("run/step=3", "ws1", 1, "first difference: layout: world size 2 != world size 1"),
    ("ws1", "single", 1, "first difference: layout: world size 1 != single-process"),
])
def test_diff_compares_replicated_state_then_every_rank_part(dist_run: DistRun, capsys: pytest.CaptureFixture[str],
                                                             a: str, b: str, status: int, expected: str) -> None:
    assert main(["diff", str(dist_run.out / a), str(dist_run.out / b)]) == status
    assert capsys.readouterr().out.startswith(expected)


def test_diff_of_a_checkpoint_with_a_missing_part_is_an_error(dist_run: DistRun, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = shutil.copytree(dist_run.out / "diff-b", tmp_path / "diff-b")
    shutil.rmtree(bad / "rank-0")
    assert main(["diff", str(dist_run.out / "diff-a"), str(bad)]) == 2
    assert "rank-0/state.json is missing" in capsys.readouterr().err


# -- one process, no process group: world size 1 ---------------------------------------------------------------

@given(state_trees, state_trees)
def test_world_size_1_parts_round_trip_exactly(replicated: Any, local: Any) -> None:
    with tempfile.TemporaryDirectory() as root:
        path = save_checkpoint_parts(Path(root) / "c", replicated, local, {"step": 1}, durable=False)
        loaded_replicated, loaded_local, manifest = load_checkpoint_parts(path)
        assert same(loaded_replicated, replicated) and same(loaded_local, local)
        assert manifest["world_size"] == 1 and verify_checkpoint(path) == []
        assert diff_checkpoints(path, path) is None


def test_single_process_checkpoints_keep_their_layout(tmp_path: Path) -> None:
    path = save_checkpoint_dir(tmp_path / "c", {"w": torch.ones(2)}, {"step": 1})
    assert sorted(os.listdir(path)) == ["manifest.json", "state.json", "tensors.pt"]
    manifest = read_manifest(path)
    assert manifest["format_version"] == 1 and "world_size" not in manifest
    assert list(manifest["files"]) == ["state.json", "tensors.pt"]
    with pytest.raises(WorldSizeError, match="single-process checkpoint .*Load it with load_checkpoint_dir"):
        load_checkpoint_parts(path)


def test_saving_parts_refuses_before_writing_and_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    save_checkpoint_parts(tmp_path / "last", {"w": torch.ones(2)}, {"pos": 1}, {"step": 1})
    with pytest.raises(CheckpointError, match=r"\$\.loader\.fn: cannot store a function"):
        save_checkpoint_parts(tmp_path / "last", {"w": torch.ones(2)}, {"loader": {"fn": print}}, {"step": 2})
    with pytest.raises(CheckpointError, match="keep_last=0 would delete every checkpoint"):
        save_checkpoint_parts(tmp_path / "last", {}, {}, {"step": 2}, keep_last=0)
    assert os.listdir(tmp_path) == ["last"]
    assert load_checkpoint_parts(tmp_path / "last")[1] == {"pos": 1}
    with pytest.raises(CheckpointError, match="rank=2 is not a rank of world size 2"):
        load_checkpoint_parts(tmp_path / "last", rank=2, world_size=2)


def test_parts_keep_last_and_latest(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint_parts(tmp_path / f"step={step}", {"step": step}, {"rank_step": step}, {"step": step},
                              keep_last=2)
    release_spares()  # the pruned step=1 is deleted in the background, its replicated tensors kept as a spare
    assert sorted(os.listdir(tmp_path)) == ["step=2", "step=3"]
    _flip(tmp_path / "step=3" / "rank-0" / "tensors.pt")
    path, (replicated, local, _), skipped = load_latest_parts(tmp_path)  # type: ignore[misc]
    assert path == tmp_path / "step=2" and replicated == {"step": 2} and local == {"rank_step": 2}
    assert [(p.name, "rank-0/tensors.pt does not match" in why) for p, why in skipped] == [("step=3", True)]


def test_another_format_version_is_refused_naming_the_ones_read(tmp_path: Path) -> None:
    path = save_checkpoint_parts(tmp_path / "c", {}, {}, {"step": 1})
    _edit_manifest(path, lambda m: m.update(format_version=4))
    with pytest.raises(CheckpointError, match="format version 4, but this statemachine_trainer reads format "
                                              "version 1, 2 or 3"):
        load_checkpoint_parts(path)
