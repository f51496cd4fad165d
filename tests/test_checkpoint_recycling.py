"""A retired checkpoint's tensors file is written over by the next save -- never while anyone else holds it.

See ``statemachine_trainer/checkpoint/_spare.py`` for why.  Each test looks
at inode numbers: a save that recycled the spare wrote its ``tensors.pt`` into
the spare's inode; one that did not made a new file.
"""

from __future__ import annotations

import mmap
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from statemachine_trainer import Trainer
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.checkpoint import (
    _spare,
    load_checkpoint_dir,
    load_checkpoint_parts,
    release_spares,
    remove_checkpoint,
    save_checkpoint_dir,
    save_checkpoint_parts,
    verify_checkpoint,
    wait_for_removals,
)

from .test_resume import Net, loader

pytestmark = pytest.mark.skipif(_spare._F_SETLEASE is None, reason="recycling needs Linux's file leases")


@pytest.fixture(autouse=True)
def _no_spare_left() -> object:
    release_spares()  # a spare from an earlier test lives in another directory: not this test's business
    yield
    release_spares()


def _state(step: int, n: int = 100_000) -> dict[str, object]:
    return {"w": torch.full((n,), float(step)), "step": step}


def _spare_file(directory: Path) -> Path:
    return directory / f".tensors.pt.spare-{os.getpid()}"


def _inode(path: Path) -> int:
    return os.stat(path).st_ino


def _loads_as(path: Path, step: int, n: int) -> bool:
    state, _ = load_checkpoint_dir(path)
    return state["step"] == step and torch.equal(state["w"], torch.full((n,), float(step)))


def test_the_next_save_writes_over_the_replaced_tensors_file(tmp_path: Path) -> None:
    save_checkpoint_dir(tmp_path / "last", _state(1), {"step": 1})
    first = _inode(tmp_path / "last" / "tensors.pt")
    save_checkpoint_dir(tmp_path / "last", _state(2), {"step": 2})
    wait_for_removals()
    assert _inode(_spare_file(tmp_path)) == first  # the replaced checkpoint's tensors, kept
    save_checkpoint_dir(tmp_path / "last", _state(3), {"step": 3})
    assert _inode(tmp_path / "last" / "tensors.pt") == first  # written over, not made anew
    assert verify_checkpoint(tmp_path / "last") == [] and _loads_as(tmp_path / "last", 3, 100_000)


@pytest.mark.parametrize(("old", "new"), [(300_000, 1_000), (1_000, 300_000)])
def test_a_recycled_file_holds_exactly_what_a_new_file_would(tmp_path: Path, old: int, new: int) -> None:
    for step in (1, 2):
        save_checkpoint_dir(tmp_path / "c", _state(step, old), {"step": step})
    spare = _inode(_spare_file(tmp_path))
    save_checkpoint_dir(tmp_path / "c", _state(3, new), {"step": 3})  # shrinks or grows the spare
    save_checkpoint_dir(tmp_path / "elsewhere" / "c", _state(3, new), {"step": 3})  # no spare there: a new file
    recycled, fresh = tmp_path / "c" / "tensors.pt", tmp_path / "elsewhere" / "c" / "tensors.pt"
    assert _inode(recycled) == spare and _inode(fresh) != spare
    assert recycled.read_bytes() == fresh.read_bytes()  # not one old byte past the new end
    assert verify_checkpoint(tmp_path / "c") == [] and _loads_as(tmp_path / "c", 3, new)


def _spare_held_open(tmp_path: Path) -> tuple[Path, bytes]:
    for step in (1, 2):
        save_checkpoint_dir(tmp_path / "c", _state(step), {"step": step})
    wait_for_removals()
    spare = _spare_file(tmp_path)
    return spare, spare.read_bytes()


def test_a_spare_someone_reads_is_not_written_over(tmp_path: Path) -> None:
    spare, before = _spare_held_open(tmp_path)
    with open(spare, "rb") as reader:  # e.g. a sidecar that opened the old checkpoint before it was replaced
        save_checkpoint_dir(tmp_path / "c", _state(3), {"step": 3})
        assert _inode(tmp_path / "c" / "tensors.pt") != os.fstat(reader.fileno()).st_ino
        assert reader.read() == before  # what it reads is still the old checkpoint's, whole
    assert _loads_as(tmp_path / "c", 3, 100_000)


def test_a_spare_someone_maps_is_not_written_over(tmp_path: Path) -> None:
    spare, before = _spare_held_open(tmp_path)
    fd = os.open(spare, os.O_RDONLY)
    mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)  # torch.load(mmap=True) keeps only this
    os.close(fd)
    try:
        save_checkpoint_dir(tmp_path / "c", _state(3), {"step": 3})
        assert mapped[:] == before
    finally:
        mapped.close()
    assert _loads_as(tmp_path / "c", 3, 100_000)


def test_a_spare_another_process_holds_is_not_written_over(tmp_path: Path) -> None:
    spare, before = _spare_held_open(tmp_path)
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        f = open({str(spare)!r}, "rb")
        print("open", flush=True)
        sys.stdin.readline()
        sys.stdout.write(str(f.read() == open({str(tmp_path / 'expected')!r}, "rb").read()))
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    (tmp_path / "expected").write_bytes(before)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
    save_checkpoint_dir(tmp_path / "c", _state(3), {"step": 3})
    out, _ = reader.communicate("go\n", timeout=60)
    assert out == "True"


def test_a_tensors_file_with_another_link_is_never_recycled(tmp_path: Path) -> None:
    save_checkpoint_dir(tmp_path / "c", _state(1), {"step": 1})
    os.link(tmp_path / "c" / "tensors.pt", tmp_path / "backup.pt")  # e.g. a hard-link snapshot (cp -al)
    before = (tmp_path / "backup.pt").read_bytes()
    for step in (2, 3):
        save_checkpoint_dir(tmp_path / "c", _state(step), {"step": step})
    wait_for_removals()
    assert (tmp_path / "backup.pt").read_bytes() == before and os.stat(tmp_path / "backup.pt").st_nlink == 1


def test_rank_zero_writes_the_replicated_state_over_its_spare(tmp_path: Path) -> None:
    for step in (1, 2):  # a multi-process checkpoint (a world of one here): replicated state + rank-0/ part
        save_checkpoint_parts(tmp_path / "last", _state(step), {"rank_step": step}, {"step": step})
    wait_for_removals()
    spare = _inode(_spare_file(tmp_path))
    save_checkpoint_parts(tmp_path / "last", _state(3), {"rank_step": 3}, {"step": 3})
    assert _inode(tmp_path / "last" / "tensors.pt") == spare
    assert verify_checkpoint(tmp_path / "last") == []
    replicated, local, _ = load_checkpoint_parts(tmp_path / "last")
    assert replicated["step"] == 3 and torch.equal(replicated["w"], torch.full((100_000,), 3.0))
    assert local == {"rank_step": 3}


def test_one_spare_per_process(tmp_path: Path) -> None:
    for name in ("a", "b"):
        for step in (1, 2):
            save_checkpoint_dir(tmp_path / name / "c", _state(step), {"step": step})
    wait_for_removals()
    assert not _spare_file(tmp_path / "a").exists() and _spare_file(tmp_path / "b").exists()
    assert _spare.kept_spares() == {_spare_file(tmp_path / "b").absolute()}


def test_removing_a_checkpoint_in_the_background_keeps_its_tensors_for_the_next_save(tmp_path: Path) -> None:
    save_checkpoint_dir(tmp_path / "epoch=0.ckpt", _state(1), {"step": 1})
    first = _inode(tmp_path / "epoch=0.ckpt" / "tensors.pt")
    remove_checkpoint(tmp_path / "epoch=0.ckpt", wait=False)  # ModelCheckpoint's top-k removal
    save_checkpoint_dir(tmp_path / "epoch=1.ckpt", _state(2), {"step": 2})
    assert _inode(tmp_path / "epoch=1.ckpt" / "tensors.pt") == first
    assert sorted(os.listdir(tmp_path)) == ["epoch=1.ckpt"] and _loads_as(tmp_path / "epoch=1.ckpt", 2, 100_000)


def test_a_fit_leaves_no_spare_behind(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=1, monitor="loss", mode="min",
                                 save_last=True, every_n_train_steps=2)
    trainer = Trainer(max_epochs=2, logger=False, enable_progress_bar=False, callbacks=[checkpoint],
                      default_root_dir=tmp_path)
    trainer.fit(Net(init_seed=0), loader(0))
    names = os.listdir(tmp_path / "ckpts")
    assert "last.ckpt" in names and not [name for name in names if re.search(r"\.(spare|del|tmp|old)-\d+$", name)]
    assert _spare.kept_spares() == frozenset()


_LEASE_HOLDER = textwrap.dedent("""
    import os, subprocess, sys, time
    from statemachine_trainer.checkpoint import _spare
    path = sys.argv[1]
    fd = os.open(path, os.O_RDWR)
    with _spare._write_lease(fd):
        # Someone opens the file while the lease is held (a backup tool scanning the directory): the kernel
        # signals the holder and makes the opener wait until the lease is dropped.
        opener = subprocess.Popen([sys.executable, "-c", f"import time; open({path!r}, 'rb'); print(time.time())"],
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)  # the opener starts Python and blocks in open() meanwhile
        dropped = time.time()
    opened = float(opener.communicate(timeout=60)[0])
    print("alive", opener.returncode, "blocked" if opened >= dropped else "not blocked", flush=True)
""")


def test_someone_opening_the_spare_during_the_lease_check_kills_nobody(tmp_path: Path) -> None:
    (tmp_path / "spare").write_bytes(b"x" * 1000)
    result = subprocess.run([sys.executable, "-c", _LEASE_HOLDER, str(tmp_path / "spare")], check=False,
                            capture_output=True, text=True, timeout=120)
    # "blocked": the opener's open() returned only after the lease was dropped, so the break signal was sent
    assert (result.returncode, result.stdout.strip()) == (0, "alive 0 blocked"), result.stderr
