"""Sharded (FSDP2) checkpoints: DCP shards inside our directory, listed and checksummed, read back resharded or
whole, refused when damaged or forged -- from a real 2-rank ``fully_shard`` run under torchrun.

One torchrun launch (module fixture ``shard_run``, ``tests/_shards_worker.py``) writes the checkpoints and
checks, on each rank, that a fresh sharded model loads its own slices back; everything else reads them in this
process, without a process group, as ``inspect``, ``diff``, ``verify`` and ``consolidate`` do.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from statemachine_trainer.checkpoint import (
    CheckpointError,
    WorldSizeError,
    diff_checkpoints,
    load_checkpoint_parts,
    load_module_state,
    read_manifest,
    verify_checkpoint,
)
from statemachine_trainer.checkpoint._read import load_all_parts
from statemachine_trainer.cli import main

from ._ckpt_edit import rewrite

WORKER = Path(__file__).parent / "_shards_worker.py"


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(WORKER), str(out)], capture_output=True, text=True, timeout=240, check=False)
    if not all((out / f"rank-{r}.json").exists() for r in range(2)):
        pytest.fail(f"the 2-rank FSDP run did not finish its checks:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return out


@pytest.fixture
def copy(shard_run: Path, tmp_path: Path) -> Path:
    """A copy of the step-2 checkpoint to damage."""
    return Path(shutil.copytree(shard_run / "step=2", tmp_path / "step=2"))


def _full(shard_run: Path) -> dict:
    return torch.load(shard_run / "full-2.pt", weights_only=True)


def test_each_rank_loads_its_own_slices_back_into_a_fresh_sharded_model(shard_run: Path) -> None:
    for rank in range(2):
        seen = json.loads((shard_run / f"rank-{rank}.json").read_text())
        damaged = seen.pop("damaged")
        assert seen == {"same": True, "sharded": True, "own": {"note": f"rank {rank}"}}
        # The ranks split checking the shard files: rank 0 finds the flipped byte, rank 1 refuses with it.
        assert "__0_0.distcp" in damaged and "checksum" in damaged if rank == 0 else "rank 0" in damaged, damaged


def test_the_manifest_lists_every_shard_file_and_the_checkpoint_verifies(shard_run: Path, capsys) -> None:
    manifest = read_manifest(shard_run / "step=2")
    assert manifest["format_version"] == 3 and manifest["world_size"] == 2
    shards = sorted(name for name in manifest["files"] if name.startswith("shards/"))
    assert shards == ["shards/.metadata", "shards/__0_0.distcp", "shards/__1_0.distcp"]
    assert sorted(p.name for p in (shard_run / "step=2" / "shards").iterdir()) == [s.split("/")[1] for s in shards]
    assert verify_checkpoint(shard_run / "step=2") == []
    assert main(["verify", str(shard_run / "step=2")]) == 0
    assert main(["inspect", str(shard_run / "step=2")]) == 0
    out = capsys.readouterr().out
    assert "sharded tensors (DCP, 2 shard files): 12," in out and "module/0.weight: float32[16, 8]" in out
    assert "shards/__1_0.distcp: ok" in out


def test_read_without_a_process_group_every_sharded_tensor_is_whole(shard_run: Path) -> None:
    state, ranks, _ = load_all_parts(shard_run / "step=2")
    full = _full(shard_run)
    assert sorted(state["module"]) == sorted(full["module"])
    for name, tensor in full["module"].items():
        assert torch.equal(state["module"][name], tensor), name
    saved, loaded = full["optimizers"][0]["state"], state["optimizers"][0]["state"]
    assert sorted(saved) == sorted(loaded)
    for index, entry in saved.items():
        for key, tensor in entry.items():
            assert torch.equal(loaded[index][key], tensor), (index, key)
    assert ranks == [{"note": "rank 0"}, {"note": "rank 1"}]


def test_diff_compares_logical_tensors_not_files(shard_run: Path, copy: Path) -> None:
    assert diff_checkpoints(shard_run / "step=2", copy) is None
    difference = diff_checkpoints(shard_run / "step=2", shard_run / "step=3")
    assert difference is not None and difference.startswith("$.module['0.weight'] (tensor): values differ")


def test_consolidate_writes_the_whole_module_as_one_state_dict_file(shard_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["consolidate", str(shard_run / "step=2"), str(tmp_path / "model.pt")]) == 0
    assert "4 entries, 195 values" in capsys.readouterr().out
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    for name, tensor in _full(shard_run)["module"].items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert sorted(load_module_state(shard_run / "step=2")) == sorted(model.state_dict())


def test_a_rank_killed_while_dcp_writes_its_shards_commits_nothing(shard_run: Path) -> None:
    assert not (shard_run / "step=4").exists()
    assert read_manifest(shard_run / "step=3")["metadata"]["step"] == 3  # the previous ones are untouched
    assert verify_checkpoint(shard_run / "step=3") == []


def test_another_world_size_is_refused_as_for_any_multi_process_checkpoint(shard_run: Path) -> None:
    with pytest.raises(WorldSizeError, match="written at world size 2, but this run has world size 1"):
        load_checkpoint_parts(shard_run / "step=2")


def test_a_damaged_shard_file_fails_its_checksum_before_dcp_reads_it(copy: Path) -> None:
    data = bytearray((copy / "shards/__1_0.distcp").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "shards/__1_0.distcp").write_bytes(data)
    problems = verify_checkpoint(copy)
    assert len(problems) == 1 and "shards/__1_0.distcp" in problems[0] and "checksum" in problems[0]
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp.*checksum"):
        load_all_parts(copy)


def test_a_file_added_to_the_shards_is_not_listed_and_refused(copy: Path) -> None:
    shutil.copy(copy / "shards/__1_0.distcp", copy / "shards/__2_0.distcp")
    (problem,) = verify_checkpoint(copy)
    assert "__2_0.distcp is not listed in the manifest" in problem


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "PWNED",))


def test_a_forged_index_with_code_in_it_is_refused_without_running_it(copy: Path) -> None:
    marker = Path(__file__).parent / "PWNED"
    rewrite(copy, "shards/.metadata", pickle.dumps(_Payload()))  # checksums recomputed: only the content can tell
    problems = verify_checkpoint(copy)
    assert len(problems) == 1 and "is not a DCP index this library reads" in problems[0]
    with pytest.raises(CheckpointError, match="is not a DCP index this library reads"):
        load_all_parts(copy)
    assert not marker.exists()


def test_an_index_pointing_outside_the_listed_shard_files_is_refused(copy: Path) -> None:
    metadata = pickle.loads((copy / "shards/.metadata").read_bytes())  # our own file: safe to unpickle here
    for info in metadata.storage_data.values():
        info.relative_path = "../state.json"
    rewrite(copy, "shards/.metadata", pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"points to '\.\./state\.json', which is not a shard file"):
        load_all_parts(copy)


def test_a_manifest_without_the_index_is_damaged(copy: Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["shards/.metadata"]
    from ._ckpt_edit import write_manifest

    write_manifest(copy, manifest)
    with pytest.raises(CheckpointError, match=r"must list shards/\.metadata, DCP's index"):
        read_manifest(copy)
