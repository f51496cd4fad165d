"""Asynchronous checkpoints: the same bytes as synchronous ones, one write in flight, failures surfaced, waited for
at exit and on preemption, and a kill -9 during a background write resumes exactly from the checkpoint before it.

The runs are real processes (``tests/_async_script.py``), killed with SIGKILL or signalled; a write is held
(``--stall-at``) only to choose *when* the kill lands, never to change what is written.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, Trainer, TrainingModule
from statemachine_trainer._optim import ConfigError
from statemachine_trainer._preemption import PREEMPTED_EXIT_CODE
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.checkpoint import (
    AsyncCheckpointWriter,
    AsyncWriteError,
    find_latest,
    load_checkpoint_dir,
    read_manifest,
    save_checkpoint_dir,
    verify_checkpoint,
)
from statemachine_trainer.checkpoint._host import PIECE_BYTES, HostCopier
from statemachine_trainer.testing import compare_final_states

SCRIPT = Path(__file__).with_name("_async_script.py")
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
STALL_AT = 9  # the kill lands while the step-9 checkpoint is being written; the step-6 one is the previous one


def _script(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """tests/_async_script.py with ``args``, run to its end in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=workdir, env=ENV, capture_output=True, text=True,
                          timeout=120, check=False)


def _run(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = _script(workdir, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _start(workdir: Path, *args: str) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=workdir,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _read_until(process: subprocess.Popen[str], wanted: set[str]) -> list[str]:
    """stdout lines until every line in ``wanted`` was seen (the process keeps running); killed after 120 s."""
    lines: list[str] = []
    watchdog = threading.Timer(120, lambda: os.killpg(process.pid, signal.SIGKILL))  # a hang fails, never blocks
    watchdog.start()
    try:
        while not wanted <= set(lines):
            line = process.stdout.readline()
            assert line, f"the run ended before printing {wanted - set(lines)}: {process.stderr.read()[-3000:]}"
            lines.append(line.strip())
    finally:
        watchdog.cancel()
    return lines


def _checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".ckpt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The script run to the end, synchronously and asynchronously (each in its own working directory)."""
    root = tmp_path_factory.mktemp("async-runs")
    started = [_start(root / "sync", "--sync"), _start(root / "async")]  # side by side: two cores
    for process in started:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-3000:]
    return {"sync": root / "sync", "async": root / "async"}


def test_asynchronous_checkpoints_hold_the_same_bytes_as_synchronous_ones(runs):
    sync, async_ = runs["sync"] / "checkpoints", runs["async"] / "checkpoints"
    names = _checkpoints(sync)
    assert names == _checkpoints(async_) and len(names) == 7  # every 3rd of 20 steps, and last.ckpt
    for name in names:
        for file in ("state.json", "tensors.pt"):  # the tied weights share one storage in both
            assert (sync / name / file).read_bytes() == (async_ / name / file).read_bytes(), (name, file)
        manifests = [json.loads((folder / name / "manifest.json").read_text()) for folder in (sync, async_)]
        for manifest in manifests:
            del manifest["created"], manifest["checksum"], manifest["metadata"]["run"]  # a time, each run's own id
        assert manifests[0] == manifests[1], name
    compare_final_states(runs["sync"] / "final.ckpt", runs["async"] / "final.ckpt")
    state, _ = load_checkpoint_dir(async_ / "last.ckpt")
    weights = state["module"]
    assert torch.equal(weights["encode.weight"], weights["decode.weight"])


def test_a_kill_during_the_background_write_leaves_the_previous_checkpoint_and_resumes_exactly(runs, tmp_path):
    process = _start(tmp_path, "--stall-at", str(STALL_AT))
    try:
        _read_until(process, {"stalled", f"step {STALL_AT + 2}"})  # training went on while the write was held
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
        process.stderr.close()
    folder = tmp_path / "checkpoints"
    (partial,) = [p for p in folder.iterdir() if p.name.startswith(f".epoch=0-step={STALL_AT}.ckpt.tmp-")]
    assert (partial / "tensors.pt").is_file() and not (partial / "manifest.json").exists()  # killed mid-write
    latest, skipped = find_latest(folder)
    assert latest is not None and read_manifest(latest)["metadata"]["step"] == STALL_AT - 3 and skipped == []
    assert verify_checkpoint(latest) == []

    _run(tmp_path, "--resume", "latest")
    compare_final_states(runs["sync"] / "final.ckpt", tmp_path / "final.ckpt")
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]  # the resumed run's first save removed it
    assert _checkpoints(folder) == _checkpoints(runs["sync"] / "checkpoints")


def test_sigterm_flushes_the_write_in_flight_then_checkpoints_and_exits_75(tmp_path):
    process = _start(tmp_path, "--stall-at", str(STALL_AT), "--stall-seconds", "1")
    _read_until(process, {"stalled"})
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == PREEMPTED_EXIT_CODE, err
    folder = tmp_path / "checkpoints"
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    (preempted,) = folder.glob("preempted-*.ckpt")
    assert verify_checkpoint(folder / f"epoch=0-step={STALL_AT}.ckpt") == []  # in flight at the signal: flushed
    assert verify_checkpoint(preempted) == []
    assert read_manifest(preempted)["metadata"]["step"] >= STALL_AT


def test_the_process_waits_for_writes_in_flight_at_exit_and_reports_a_failed_one(tmp_path):
    (tmp_path / "not-a-dir").write_text("a file where the checkpoint's folder should be")
    done = _script(tmp_path, "--exit-test", "good.ckpt", "not-a-dir/bad.ckpt")
    assert done.stdout.strip() == "in flight at exit: True"
    assert verify_checkpoint(tmp_path / "good.ckpt") == []
    assert "asynchronous write of checkpoint" in done.stderr and "not-a-dir/bad.ckpt" in done.stderr, done.stderr


# -- in-process: the writer's rules ------------------------------------------------------------------------------
def test_one_write_in_flight_the_next_save_waits_and_commits_in_order(tmp_path):
    release, order = threading.Event(), []
    writer = AsyncCheckpointWriter()
    writer.save([(tmp_path / "a.ckpt", lambda path: (release.wait(30), order.append(path.name)))], {"x": torch.ones(3)})
    second = threading.Thread(
        target=writer.save, args=([(tmp_path / "b.ckpt", lambda p: order.append(p.name))], {"x": torch.zeros(3)})
    )
    second.start()
    time.sleep(0.3)
    assert writer.in_flight and second.is_alive()  # b waits for a, before it even copies its state
    assert not (tmp_path / "b.ckpt").exists() and not list(tmp_path.glob(".b.ckpt.tmp-*"))
    release.set()
    second.join(30)
    writer.wait()
    assert order == ["a.ckpt", "b.ckpt"]
    assert torch.equal(load_checkpoint_dir(tmp_path / "b.ckpt")[0]["x"], torch.zeros(3))


def test_the_copy_is_taken_at_the_save_so_later_changes_do_not_reach_the_checkpoint(tmp_path):
    weights = torch.arange(6.0)
    state = {"w": weights, "view": weights[2:4], "step": [1]}
    writer = AsyncCheckpointWriter()
    writer.save([(tmp_path / "a.ckpt", None)], state, {"step": 1})
    weights.add_(100.0)  # the next optimizer step, while the write may still run
    state["step"].append(2)
    writer.wait()
    saved, _ = load_checkpoint_dir(tmp_path / "a.ckpt")
    assert torch.equal(saved["w"], torch.arange(6.0)) and saved["step"] == [1]
    assert torch.equal(saved["view"], torch.tensor([2.0, 3.0]))
    save_checkpoint_dir(tmp_path / "b.ckpt", {"w": torch.arange(6.0), "view": torch.arange(6.0)[2:4], "step": [1]})
    for file in ("state.json", "tensors.pt"):
        assert (tmp_path / "a.ckpt" / file).read_bytes() == (tmp_path / "b.ckpt" / file).read_bytes()


def test_a_host_copy_in_pieces_over_threads_holds_the_same_tensors_and_sharing():
    """Storages larger than a piece are copied by several threads: every byte lands, views and tied tensors share
    their copy's storage as they shared the original's, and the copy is independent of the live tensors."""
    big = torch.randn(3 * PIECE_BYTES // 4 + 1001)  # 3 pieces and a bit, an odd size
    tensors = {"big": big, "view": big[5:40].view(5, 7), "tied": big, "small": torch.arange(10), "empty": torch.empty(0)}
    copier = HostCopier()
    copied = copier.copy(tensors)
    for name, t in tensors.items():
        assert torch.equal(copied[name], t) and copied[name].stride() == t.stride()
    assert copied["view"].untyped_storage().data_ptr() == copied["big"].untyped_storage().data_ptr()
    assert copied["tied"] is not copied["big"] and copied["tied"].data_ptr() == copied["big"].data_ptr()
    assert copied["big"].data_ptr() != big.data_ptr()
    big.add_(1)  # training goes on: the copy keeps the values of the moment it was taken
    assert torch.equal(copied["big"] + 1, big)
    later = copier.copy(tensors, later={big.untyped_storage()._cdata})  # the big storage copied by finish()
    assert torch.equal(later["small"], tensors["small"]) and not torch.equal(later["big"], big)  # old values still
    copier.finish()
    for name, t in tensors.items():
        assert torch.equal(later[name], t), name
    copier.release()


def test_a_failed_background_write_is_raised_by_the_next_save_and_by_wait(tmp_path):
    (tmp_path / "file").write_text("")
    writer = AsyncCheckpointWriter()
    writer.save([(tmp_path / "file" / "bad.ckpt", None)], {"x": torch.ones(2)})  # fails in the background
    with pytest.raises(AsyncWriteError, match=r"file/bad\.ckpt failed") as raised:
        writer.save([(tmp_path / "next.ckpt", None)], {"x": torch.ones(2)})
    assert isinstance(raised.value.__cause__, OSError)
    assert not (tmp_path / "next.ckpt").exists()  # refused before starting
    writer.save([(tmp_path / "file" / "bad2.ckpt", None)], {"x": torch.ones(2)})
    with pytest.raises(AsyncWriteError, match=r"bad2\.ckpt"):
        writer.wait()
    writer.wait()  # reported once


def _adam_state() -> tuple[nn.Module, torch.optim.Optimizer, dict]:
    """A net and an Adam that has stepped once (so it has moments), and their state as the Trainer captures it."""
    torch.manual_seed(0)
    net = nn.Linear(8, 4)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(5, 8)).pow(2).sum().backward()
    opt.step()
    return net, opt, {"module": net.state_dict(), "optimizer": opt.state_dict()}


def _held_copy(writer: AsyncCheckpointWriter) -> threading.Event:
    """Hold the writer's deferred copy (``HostCopier.finish``) until the returned event is set."""
    release, finish = threading.Event(), writer._copier.finish

    def held() -> None:
        assert release.wait(30)
        finish()

    writer._copier.finish = held
    return release


def test_optimizer_state_is_copied_in_the_background_and_its_next_step_waits_for_the_copy(tmp_path):
    net, opt, state = _adam_state()
    save_checkpoint_dir(tmp_path / "sync.ckpt", state)  # what the asynchronous checkpoint must hold
    writer = AsyncCheckpointWriter()
    release = _held_copy(writer)
    writer.save([(tmp_path / "a.ckpt", None)], state, until_step=[opt])  # returns with the moments not yet copied
    assert len(opt._optimizer_step_pre_hooks) == 1
    with torch.no_grad():
        net.weight.add_(1.0)  # parameters were copied at the save: a change now does not reach the checkpoint
    net(torch.randn(5, 8)).pow(2).sum().backward()  # training goes on until the step
    stepping = threading.Thread(target=opt.step)
    stepping.start()
    time.sleep(0.3)
    assert stepping.is_alive()  # the step waits: its state is not copied yet
    release.set()
    stepping.join(30)
    assert not stepping.is_alive()
    writer.close()
    assert len(opt._optimizer_step_pre_hooks) == 0  # close removes the hook
    for file in ("state.json", "tensors.pt"):
        assert (tmp_path / "a.ckpt" / file).read_bytes() == (tmp_path / "sync.ckpt" / file).read_bytes()
    opt.step()  # no hook left, nothing to wait for


def test_optimizer_state_changed_in_place_before_the_step_fails_that_checkpoint(tmp_path):
    _, opt, state = _adam_state()
    writer = AsyncCheckpointWriter()
    release = _held_copy(writer)
    writer.save([(tmp_path / "a.ckpt", None)], state, until_step=[opt])
    exp_avg = next(iter(opt.state.values()))["exp_avg"]
    exp_avg.mul_(0.0)  # e.g. a callback resetting the moments outside step(), while the copy is pending
    release.set()
    with pytest.raises(AsyncWriteError, match=r"a\.ckpt failed.*exp_avg.*changed in place.*before the optimizer's "
                                              r"next step"):
        writer.wait()
    assert not (tmp_path / "a.ckpt").exists() and not list(tmp_path.glob(".a.ckpt.tmp-*"))
    writer.save([(tmp_path / "b.ckpt", None)], state, until_step=[opt])  # the next save works (same hook, kept)
    writer.close()
    assert verify_checkpoint(tmp_path / "b.ckpt") == [] and len(opt._optimizer_step_pre_hooks) == 0


def _flat(state: dict) -> dict[str, torch.Tensor]:
    """The module's and the optimizer's tensors of a state, by a name that says where each came from."""
    flat = {f"module.{k}": v for k, v in state["module"].items()}
    for index, per_param in state["optimizer"]["state"].items():
        flat.update({f"optimizer.{index}.{k}": v for k, v in per_param.items()})
    return flat


@settings(max_examples=25)
@given(st.lists(st.sampled_from(["save", "step", "change a parameter", "change a moment"]), min_size=1, max_size=10))
def test_an_asynchronous_checkpoint_holds_the_state_at_its_save_or_fails_saying_why(tmp_path_factory, actions):
    """Whatever training does after an asynchronous save -- steps, in-place changes to parameters (copied at the
    save), in-place changes to optimizer state before its next step (copied later) -- the checkpoint holds exactly
    the state at the save, or it is not written and the failure names the changed optimizer state; the failure
    happens only when such a change came before the optimizer's next step."""
    root = tmp_path_factory.mktemp("async-property")
    net, opt, _ = _adam_state()
    writer = AsyncCheckpointWriter()
    pending = None  # the save not checked yet: its path, its state copied at the save, whether it may fail

    def check_pending() -> None:
        nonlocal pending
        if pending is None:
            return
        (path, expected, may_fail), pending = pending, None
        try:
            writer.wait()
        except AsyncWriteError as failure:
            assert may_fail and "changed in place" in str(failure), failure
            assert not path.exists()
            return
        saved = _flat(load_checkpoint_dir(path)[0])
        assert saved.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(saved[name], tensor), name

    stepped = True  # whether the optimizer stepped since the last save (so its state's copy is surely done)
    for number, action in enumerate(actions):
        if action == "save":
            check_pending()  # the writer would wait for it anyway; checked before the next save replaces it
            state = {"module": net.state_dict(), "optimizer": opt.state_dict()}
            pending = (root / f"{number}.ckpt", copy.deepcopy(_flat(state)), False)
            writer.save([(pending[0], None)], state, until_step=[opt])
            stepped = False
        elif action == "step":
            opt.zero_grad()
            net(torch.randn(5, 8)).pow(2).sum().backward()
            opt.step()
            stepped = True
        elif action == "change a parameter":
            with torch.no_grad():
                net.weight.mul_(1.5)
        else:
            next(iter(opt.state.values()))["exp_avg"].add_(1.0)
            if pending is not None and not stepped:
                pending = (*pending[:2], True)
    check_pending()
    writer.close()
    assert len(opt._optimizer_step_pre_hooks) == 0


class _Net(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(16, 3, generator=torch.Generator().manual_seed(0))), batch_size=4)


def test_fit_waits_for_its_last_write_and_raises_a_failed_one(tmp_path):
    (tmp_path / "file").write_text("")

    class Request(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            target = tmp_path / ("file/bad.ckpt" if trainer.global_step == 4 else f"s{trainer.global_step}.ckpt")
            trainer.request_checkpoint(target, async_save=True)

    trainer = Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False, callbacks=[Request()]
    )
    with pytest.raises(AsyncWriteError, match=r"file/bad\.ckpt"):
        trainer.fit(_Net(), _data())  # the last write fails after the last step: raised by the teardown
    assert [verify_checkpoint(tmp_path / f"s{step}.ckpt") for step in (1, 2, 3)] == [[], [], []]


class _TwoAdams(TrainingModule):
    """Manual optimization with two Adam optimizers, stepped one after the other inside training_step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(3, 2), nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers()
        for opt in (opt_a, opt_b):
            loss = self.b(self.a(batch[0])).pow(2).mean()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    def configure_optimizers(self):
        return torch.optim.Adam(self.a.parameters(), lr=0.1), torch.optim.Adam(self.b.parameters(), lr=0.1)


def test_a_trainer_s_asynchronous_saves_defer_its_optimizers_state_and_hold_the_synchronous_bytes(tmp_path):
    """The Trainer hands its optimizers to the writer: each of their manual steps waits for the copy of their state,
    and the checkpoints hold the bytes a synchronous run writes; fit removes the step pre-hooks when it returns."""

    hooked = []  # per batch, the step pre-hooks on each optimizer as the batch starts

    def fit(async_save: bool) -> tuple[Path, _TwoAdams]:
        out = tmp_path / ("async" if async_save else "sync")

        class Request(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                hooked.append([len(opt.optimizer._optimizer_step_pre_hooks) for opt in module.optimizers()])

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                trainer.request_checkpoint(out / f"s{trainer.global_step}.ckpt", async_save=async_save)

        module = _TwoAdams()
        Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                callbacks=[Request()], default_root_dir=tmp_path).fit(module, _data())
        return out, module

    synced, _ = fit(False)
    out, module = fit(True)
    assert hooked == [[0, 0]] * 4 + [[0, 0]] + [[1, 1]] * 3  # hooked from the first asynchronous save on
    assert [len(opt.optimizer._optimizer_step_pre_hooks) for opt in module.optimizers()] == [0, 0]
    names = sorted(p.name for p in synced.iterdir())
    assert len(names) == 4 and sorted(p.name for p in out.iterdir()) == names
    for name in names:
        for file in ("state.json", "tensors.pt"):
            assert (out / name / file).read_bytes() == (synced / name / file).read_bytes(), (name, file)


def test_async_save_is_refused_under_ddp_and_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"async_save=1\) must be True or False"):
        ModelCheckpoint(async_save=1)
    trainer = Trainer(
        strategy="ddp",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(async_save=True)],
    )
    try:
        with pytest.raises(ConfigError, match=r"one process only.*async_save=False under strategy='ddp'"):
            trainer.fit(_Net(), _data())
        with pytest.raises(ConfigError, match=r"request_checkpoint\(async_save=True\) under strategy='ddp'"):
            trainer.request_checkpoint(tmp_path / "now.ckpt", async_save=True)
    finally:
        trainer.strategy.teardown()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_host_copy_is_pinned_reused_and_holds_the_same_tensors(tmp_path):
    net = nn.Linear(64, 64).cuda()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(8, 64, device="cuda")).sum().backward()
    opt.step()
    state = {"module": net.state_dict(), "optimizer": opt.state_dict()}
    writer = AsyncCheckpointWriter()
    writer.save([(tmp_path / "a.ckpt", None)], state)
    buffers = list(writer._copier._buffers)
    assert buffers and all(buffer.is_pinned() for buffer in buffers)
    writer.save([(tmp_path / "b.ckpt", None)], state)  # the same sizes: the same buffers
    assert all(x is y for x, y in zip(buffers, writer._copier._buffers))
    writer.wait()
    save_checkpoint_dir(tmp_path / "sync.ckpt", state)
    expected, _ = load_checkpoint_dir(tmp_path / "sync.ckpt", map_location="cpu")
    for name in ("a.ckpt", "b.ckpt"):
        got, _ = load_checkpoint_dir(tmp_path / name, map_location="cpu")
        for key, tensor in expected["module"].items():
            assert torch.equal(got["module"][key], tensor), (name, key)
        assert (tmp_path / name / "state.json").read_bytes() == (tmp_path / "sync.ckpt" / "state.json").read_bytes()
