"""Lightning 2's Trainer flags: what each one does, checked against Lightning's documented behaviour."""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from datetime import timedelta

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, ConfigError, Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint, ModelSummary, ProgressBar, Timer
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.machine import IllegalTriggerError
from statemachine_trainer.machine._dispatch import ENGINES
from statemachine_trainer.profilers import SimpleProfiler
from statemachine_trainer.testing import assert_resume_exact
from statemachine_trainer.testing.strategies import TRIGGERS, scripts, valid_tables

from .test_dispatch import OutOfBudget, Owner


def quiet(**flags) -> Trainer:
    return Trainer(**{"enable_progress_bar": False, "enable_checkpointing": False, "logger": False,
                      "enable_model_summary": False, **flags})


def numbered(n: int = 16, batch_size: int = 2, shuffle: bool = False) -> DataLoader:
    """Sample i is (i,): a batch says which samples it holds."""
    data = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return DataLoader(TensorDataset(data), batch_size=batch_size, shuffle=shuffle)


class Net(TrainingModule):
    """Records the samples of every training and validation batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.seen: dict[str, list[list[int]]] = {"train": [], "val": []}
        self.epochs: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0].flatten().int().tolist())
        self.epochs.append(self.trainer.current_epoch)
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0].flatten().int().tolist())
        self.log("val_loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


# -- enable_model_summary / ModelSummary ------------------------------------------------------------
class Layered(Net):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def test_the_model_summary_is_on_by_default_and_counts_what_torch_counts(caplog):
    trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    (summary,) = [cb for cb in trainer.callbacks if isinstance(cb, ModelSummary)]
    module = Layered()
    with caplog.at_level(logging.INFO, logger="statemachine_trainer"):
        trainer.fit(module, numbered())
    data = summary.summary
    assert data["total"] == sum(p.numel() for p in module.parameters())
    assert data["trainable"] == sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert data["non_trainable"] == module.frozen.weight.numel() + module.frozen.bias.numel()
    assert data["size_mb"] == pytest.approx(data["total"] * 4 / 1e6)
    assert [(row["name"], row["type"]) for row in data["rows"]] == [
        ("layer", "Linear"), ("body", "Sequential"), ("frozen", "Linear")]  # max_depth=1: top-level layers only
    assert [row["params"] for row in data["rows"]] == [2, 16 + 16 + 9, 72]
    text = caplog.text
    assert "Total params" in text and "Non-trainable params" in text and "| body   | Sequential | 41 " in text


def test_max_depth_and_turning_the_summary_off():
    module = Layered()
    deep = ModelSummary(max_depth=2)
    quiet(max_epochs=1, callbacks=[deep], enable_model_summary=True).fit(module, numbered())
    assert "body.1" in [row["name"] for row in deep.summary["rows"]]
    assert not any(isinstance(cb, ModelSummary) for cb in quiet().callbacks)
    given = Trainer(callbacks=[deep], logger=False)  # the user's summary is kept, none is added
    assert [cb for cb in given.callbacks if isinstance(cb, ModelSummary)] == [deep]
    with pytest.raises(ConfigError, match="max_depth"):
        ModelSummary(max_depth="1")


# -- max_time / Timer -----------------------------------------------------------------------------
class Slow(Net):
    def training_step(self, batch, batch_idx):
        time.sleep(0.02)
        return super().training_step(batch, batch_idx)


def test_max_time_stops_at_a_batch_boundary_and_says_why():
    trainer = quiet(max_epochs=100, max_time={"seconds": 0.3})
    module = Slow()
    trainer.fit(module, numbered(16))
    steps = trainer.global_step
    assert 0 < steps < 100 * 8  # stopped long before max_epochs
    assert "max_time=0:00:00.300000 reached" in trainer.fit_loop.stop_reason()
    timer = trainer.callback(Timer)
    assert timer.time_elapsed() >= 0.3
    assert steps == len(module.seen["train"])  # every started batch finished: a batch boundary


@pytest.mark.parametrize("given, seconds", [
    ("00:12:00:00", 12 * 3600), ("01:00:00:05", 86405), (timedelta(minutes=3), 180), ({"hours": 1}, 3600)])
def test_max_time_takes_lightnings_forms(given, seconds):
    assert Trainer(max_time=given, logger=False).max_time == seconds


@pytest.mark.parametrize("given", ["12:00", "1:2:3:4", {"hour": 1}, 5])
def test_a_bad_max_time_names_the_forms(given):
    with pytest.raises(ConfigError, match="max_time"):
        Trainer(max_time=given)


def test_elapsed_time_is_saved_and_a_resumed_run_continues_counting(tmp_path):
    trainer = quiet(max_epochs=1, max_time="00:01:00:00")
    trainer.fit(Net(), numbered())
    path = trainer.save_checkpoint(tmp_path / "one.ckpt")
    saved = trainer.capture_state()["callbacks"]["Timer"]["time_elapsed"]
    assert saved > 0
    timer = Timer(duration={"seconds": saved + 3600})
    resumed = quiet(max_epochs=2, callbacks=[timer])
    resumed.fit(Net(), numbered(), ckpt_path=path)
    assert timer.time_elapsed() >= saved  # counts on from the checkpoint's time, not from zero

    spent = Timer(duration={"seconds": 1})
    spent.load_state_dict({"time_elapsed": 5.0})  # a job whose budget was used up before the resume
    module = Net()
    stopped = quiet(max_epochs=3, callbacks=[spent])
    stopped.fit(module, numbered())
    assert module.seen["train"] == []  # checked at fit start, as Lightning's Timer does: nothing trains
    assert stopped.fit_loop.stop_reason().startswith("max_time=0:00:01 reached")


def test_a_timer_added_at_resume_counts_from_the_resume(tmp_path):
    from statemachine_trainer.testing import interrupt_at

    path = tmp_path / "mid.ckpt"
    quiet(max_epochs=1, callbacks=[interrupt_at("on_train_batch_end", 2, path)]).fit(
        Net(), ResumableLoader(numbered()))
    resumed = quiet(max_epochs=100, max_time={"seconds": 0.3})  # the checkpoint holds no Timer state
    resumed.fit(Slow(), ResumableLoader(numbered()), ckpt_path=path)
    assert resumed.current_epoch < 99 and "max_time" in resumed.fit_loop.stop_reason()


# -- overfit_batches --------------------------------------------------------------------------------
def test_overfit_batches_uses_the_same_first_batches_every_epoch_unshuffled():
    module = Net()
    with pytest.warns(UserWarning, match="shuffling") as warned:
        quiet(max_epochs=3, overfit_batches=2, num_sanity_val_steps=0).fit(
            module, numbered(16, shuffle=True), numbered(8, shuffle=True))
    messages = " ".join(str(w.message) for w in warned)
    assert "off the train dataloader shuffling" in messages and "off the val dataloader shuffling" in messages
    assert module.seen["train"] == [[0, 1], [2, 3]] * 3
    assert module.seen["val"] == [[0, 1], [2, 3]] * 3  # the val loader's own first batches (Lightning 2)


def test_overfit_batches_as_a_fraction_and_over_the_limits():
    module = Net()
    quiet(max_epochs=1, overfit_batches=0.25, limit_train_batches=6, num_sanity_val_steps=0).fit(
        module, numbered(16), numbered(16))
    assert module.seen["train"] == [[0, 1], [2, 3]]  # 0.25 of 8 batches; overfit_batches wins over the limit
    assert len(module.seen["val"]) == 2
    resumable = Net()
    with pytest.warns(UserWarning, match="shuffling"):
        quiet(max_epochs=2, overfit_batches=1).fit(resumable, ResumableLoader(numbered(16, shuffle=True)))
    assert resumable.seen["train"] == [[0, 1], [0, 1]]
    with pytest.raises(ConfigError, match="overfit_batches"):
        Trainer(overfit_batches=-1)


# -- reload_dataloaders_every_n_epochs ------------------------------------------------------------
class Reloading(Net):
    """Each epoch's data depends on the epoch at which train_dataloader() was called."""

    def __init__(self) -> None:
        super().__init__()
        self.requested: dict[str, list[int]] = {"train": [], "val": []}

    def epoch(self) -> int:
        try:
            return self.trainer.current_epoch
        except RuntimeError:  # fit() asks for the loaders before it attaches the trainer
            return 0

    def train_dataloader(self):
        epoch = self.epoch()
        self.requested["train"].append(epoch)
        data = torch.arange(8, dtype=torch.float32).unsqueeze(1) + 100 * epoch
        return ResumableLoader(DataLoader(TensorDataset(data), batch_size=2, shuffle=True))

    def val_dataloader(self):
        self.requested["val"].append(self.epoch())
        return numbered(4)


@pytest.mark.parametrize("every, expected", [(0, [0]), (1, [0, 1, 2, 3]), (2, [0, 2])])
def test_dataloaders_are_requested_again_every_n_epochs(every, expected):
    module = Reloading()
    quiet(max_epochs=4, reload_dataloaders_every_n_epochs=every, num_sanity_val_steps=0, seed=0).fit(module)
    assert module.requested == {"train": expected, "val": expected}
    for epoch in range(4):  # each epoch trains on the data its reload epoch built
        built = max(e for e in expected if e <= epoch)
        samples = [x for b, e in zip(module.seen["train"], module.epochs, strict=True) if e == epoch for x in b]
        assert sorted(samples) == [100 * built + i for i in range(8)]


def test_loaders_passed_to_fit_are_not_reloaded():
    module = Reloading()
    quiet(max_epochs=3, reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0).fit(module, numbered(8))
    assert module.requested["train"] == []
    assert module.requested["val"] == [0, 1, 2]  # not given to fit: it comes from val_dataloader()


@pytest.mark.parametrize("hook, call", [("on_train_batch_end", 6), ("on_train_epoch_end", 1)])
def test_resume_stays_exact_with_reloaded_dataloaders(hook, call, tmp_path):
    assert_resume_exact(
        Reloading,
        lambda callbacks: quiet(max_epochs=3, reload_dataloaders_every_n_epochs=1, seed=5, callbacks=callbacks),
        lambda: (), hook, call, workdir=tmp_path)


# -- detect_anomaly, inference_mode, benchmark ----------------------------------------------------
class Modes(Net):
    def __init__(self) -> None:
        super().__init__()
        self.modes: dict[str, tuple[bool, ...]] = {}

    def training_step(self, batch, batch_idx):
        self.modes["train"] = (torch.is_anomaly_enabled(), torch.is_grad_enabled())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.modes["val"] = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        return super().validation_step(batch, batch_idx)


def test_detect_anomaly_holds_during_fit_only():
    module = Modes()
    quiet(max_epochs=1, detect_anomaly=True).fit(module, numbered(4))
    assert module.modes["train"] == (True, True)
    assert not torch.is_anomaly_enabled()
    quiet(max_epochs=1).fit(module, numbered(4))
    assert module.modes["train"] == (False, True)


def test_detect_anomaly_names_the_backward_that_made_a_nan():
    class NaNGrad(Net):
        def training_step(self, batch, batch_idx):
            return torch.sqrt(self.layer.weight * 0).sum()  # d sqrt(x)/dx at 0 is inf; times 0 gives nan

    with pytest.raises(RuntimeError, match="returned nan values"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that anomaly detection is slow
        quiet(max_epochs=1, detect_anomaly=True).fit(NaNGrad(), numbered(4))
    assert not torch.is_anomaly_enabled()


@pytest.mark.parametrize("inference_mode", [True, False])
def test_evaluation_runs_under_inference_mode_or_no_grad(inference_mode):
    module = Modes()
    quiet(max_epochs=1, inference_mode=inference_mode).fit(module, numbered(4), numbered(4))
    assert module.modes["val"] == (inference_mode, False)
    quiet(inference_mode=inference_mode).validate(module, numbered(4))
    assert module.modes["val"] == (inference_mode, False)


@pytest.fixture
def cudnn_benchmark():
    before = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = before


@pytest.mark.usefixtures("cudnn_benchmark")
def test_benchmark_sets_cudnn_and_deterministic_turns_it_off():
    Trainer(benchmark=True, logger=False)
    assert torch.backends.cudnn.benchmark is True
    Trainer(deterministic=True, logger=False)  # Lightning: benchmark defaults to False under deterministic
    assert torch.backends.cudnn.benchmark is False
    torch.backends.cudnn.benchmark = True
    Trainer(logger=False)  # benchmark=None leaves the session's setting
    assert torch.backends.cudnn.benchmark is True
    with pytest.warns(UserWarning, match="ignores torch.backends.cudnn.deterministic"):
        Trainer(benchmark=True, deterministic=True, logger=False)


# -- num_nodes, use_distributed_sampler, sync_batchnorm -----------------------------------------------
def test_num_nodes_needs_ddp_and_a_matching_launcher(monkeypatch):
    with pytest.raises(ConfigError, match="num_nodes=2 needs strategy='ddp'"):
        Trainer(num_nodes=2)
    with pytest.raises(ConfigError, match="torchrun --nnodes=2"):
        Trainer(num_nodes=2, strategy="ddp", devices=2, accelerator="cpu", logger=False).fit(Net(), numbered())
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    trainer = Trainer(num_nodes=2, strategy="ddp", devices=2, accelerator="cpu", logger=False)
    with pytest.raises(ConfigError, match="world of 4 processes, but the launcher reports WORLD_SIZE=2"):
        trainer.fit(Net(), numbered())


def test_use_distributed_sampler_decides_whether_ddp_shards_the_loader():
    from statemachine_trainer._strategy_flag import make_strategy

    loader = numbered(16)
    sharding = make_strategy("ddp", 2, "cpu")
    sharding.rank, sharding.world_size = 1, 2
    shard = sharding.shard(loader)
    assert isinstance(shard, ResumableLoader) and len(shard) == 4  # rank 1's half of 8 batches
    as_given = make_strategy("ddp", 2, "cpu", use_distributed_sampler=False)
    as_given.rank, as_given.world_size = 1, 2
    assert as_given.shard(loader) is loader


def test_sync_batchnorm_needs_cuda_under_ddp_and_is_a_no_op_in_one_process():
    with pytest.raises(ConfigError, match="sync_batchnorm=True needs CUDA"):
        Trainer(strategy="ddp", devices=2, accelerator="cpu", sync_batchnorm=True)
    plain = Layered()
    quiet(max_epochs=1, sync_batchnorm=True).fit(plain, numbered(8))  # one process: nothing to synchronize
    assert type(plain.body[1]) is nn.BatchNorm1d


# -- profiler ----------------------------------------------------------------------------------------
def test_the_simple_profiler_times_every_hook_the_dispatcher_fires(caplog):
    trainer = quiet(max_epochs=2, profiler="simple")
    with caplog.at_level(logging.INFO, logger="statemachine_trainer"):
        trainer.fit(Net(), numbered(8), numbered(4))
    profiler = trainer.profiler
    assert isinstance(profiler, SimpleProfiler)
    calls = {action: len(durations) for action, durations in profiler.recorded_durations.items()}
    assert calls["OptimizerLoop.training_step"] == 8 == trainer.global_step
    assert calls["OptimizerLoop.optimizer_step"] == 8
    assert calls["TrainingEpochLoop.advance"] == 8
    assert calls["FitLoop.advance"] == 2
    assert calls["FitLoop.on_fit_start"] == 1
    assert calls["EvaluationLoop.advance"] == 2 * 2 + 2  # two batches per epoch, plus the sanity check's two
    report = {row[0]: row for row in profiler.report()}
    assert report["FitLoop.advance"][3] >= report["TrainingEpochLoop.advance"][3]  # an epoch holds its batches
    assert "FIT Profiler Report" in caplog.text and "OptimizerLoop.training_step" in caplog.text


def test_the_profiler_writes_its_report_to_a_file_and_costs_nothing_when_off(tmp_path):
    trainer = quiet(max_epochs=1, profiler=SimpleProfiler(dirpath=tmp_path, filename="perf"))
    trainer.fit(Net(), numbered(4))
    text = (tmp_path / "fit-perf.txt").read_text()
    assert "Num calls" in text and "FitLoop.advance" in text
    # After the run the rows are bound to the loops' own methods again; a trainer without a profiler never wraps.
    plain = quiet(max_epochs=1)
    plain.fit(Net(), numbered(4))
    for trained in (trainer, plain):
        for _, loop in trained.fit_loop.walk():
            for bound in loop._machine.rows:
                assert all(getattr(fn, "__self__", None) is loop for fn, *_ in bound.steps)


def test_without_a_profiler_user_profile_blocks_still_run():
    class Profiled(Net):
        def training_step(self, batch, batch_idx):
            with self.trainer.profiler.profile("my_block"):  # Lightning code does this unconditionally
                return super().training_step(batch, batch_idx)

    module = Profiled()
    trainer = quiet(max_epochs=1)
    trainer.fit(module, numbered(4))
    assert len(module.seen["train"]) == 2 and trainer.profiler.summary() == ""
    simple = quiet(max_epochs=1, profiler="simple")
    simple.fit(Profiled(), numbered(4))
    assert len(simple.profiler.recorded_durations["my_block"]) == 2


def test_profiler_values_are_checked():
    with pytest.raises(ConfigError, match="profiler='advanced' is not available"):
        Trainer(profiler="advanced")
    with pytest.raises(ConfigError, match="profiler=3"):
        Trainer(profiler=3)


# -- barebones ----------------------------------------------------------------------------------------
def test_barebones_turns_off_everything_that_costs_speed():
    trainer = Trainer(barebones=True, max_epochs=1)
    assert trainer.callbacks == [] and trainer.loggers == []
    assert trainer.num_sanity_val_steps == 0 and not trainer.profiler.enabled
    module = Net()
    trainer.fit(module, numbered(4), numbered(4))
    assert module.seen["val"] == [[0, 1], [2, 3]]  # validation still runs; only the sanity check is off
    with_callbacks = Trainer(barebones=True, callbacks=[Timer()], logger=False, enable_checkpointing=False)
    assert [type(cb) for cb in with_callbacks.callbacks] == [Timer]


@pytest.mark.parametrize("flag", [{"enable_checkpointing": True}, {"logger": True}, {"enable_progress_bar": True},
                                  {"enable_model_summary": True}, {"num_sanity_val_steps": 2},
                                  {"log_every_n_steps": 10}, {"fast_dev_run": True}, {"detect_anomaly": True},
                                  {"profiler": "simple"}])
def test_barebones_refuses_a_flag_that_turns_a_cost_back_on(flag):
    (name,) = flag
    with pytest.raises(ConfigError, match=f"barebones=True, {name}="):
        Trainer(barebones=True, **flag)


def test_defaults_outside_barebones_are_lightnings():
    trainer = Trainer()
    kinds = {type(cb) for cb in trainer.callbacks}
    assert {ProgressBar, ModelSummary, ModelCheckpoint} <= kinds
    assert trainer.callbacks[-1].__class__ is ModelCheckpoint  # still written last
    assert (trainer.num_sanity_val_steps, trainer.log_every_n_steps, trainer.inference_mode) == (2, 50, True)
    assert len(trainer.loggers) == 1


class StopsAtFitStart(Callback):
    def on_fit_start(self, trainer, module):
        trainer.should_stop = True


def test_stop_reason_without_a_timer_is_the_generic_one():
    trainer = quiet(max_epochs=3, callbacks=[StopsAtFitStart()])
    trainer.fit(Net(), numbered(4))
    assert trainer.fit_loop.stop_reason() == "should_stop was set (e.g. by EarlyStopping)"


def test_the_readme_lists_every_refused_flag():
    from pathlib import Path

    from statemachine_trainer._refused import FLAG_ADVICE

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Trainer flags")[1].split("\n## ")[0]
    assert [flag for flag in FLAG_ADVICE if f"`{flag}`" not in section] == []
    flags = inspect.signature(Trainer.__init__).parameters
    assert [f for f in flags if f not in ("self", "unknown") and f"`{f}`" not in section] == []


@pytest.mark.parametrize("use_sampler", [True, False])
def test_under_ddp_use_distributed_sampler_and_max_time(tmp_path, use_sampler):
    """True: each rank trains on its own half.  False: the loader as given, all of it on every rank; and the
    Timer's decision (rank 1 is slower) is the same on both ranks, so they stop at the same step."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, str(Path(__file__).parent / "_ddp_flags.py"), str(use_sampler)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (steps0, seen0, reason0), (steps1, seen1, reason1) = (
        (tmp_path / f"rank-{rank}.txt").read_text().splitlines() for rank in (0, 1))
    seen0, seen1 = [int(x) for x in seen0.split()], [int(x) for x in seen1.split()]
    if use_sampler:
        assert sorted(seen0 + seen1) == list(range(8)) and not set(seen0) & set(seen1)
    else:
        assert seen0 == seen1 and seen0[:8] == list(range(8))  # the whole loader, in its order, on each rank
        assert steps0 == steps1 and int(steps0) < 50 * 4  # stopped by max_time, together
        assert reason0.startswith("max_time=0:00:01 reached") and reason1.startswith("max_time=0:00:01 reached")


# -- the profiler's timing as the dispatcher binds it: same behaviour, one record per call ---------------
def _profiled_trace(engine, table, script, triggers, wrap):
    owner = Owner(script)
    owner.dispatcher = engine(table, owner, "random")
    if wrap is not None:
        owner.dispatcher.wrap_hooks(wrap)
    trace = []
    for trigger in triggers:
        try:
            trace.append(("ok", owner.dispatcher.fire(trigger), owner.dispatcher.state))
        except (IllegalTriggerError, OutOfBudget) as exc:
            trace.append((type(exc).__name__, owner.dispatcher.state))
    return trace, owner.calls


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(ENGINES)), valid_tables(), scripts(), st.lists(st.sampled_from(TRIGGERS), max_size=12))
def test_profiling_changes_no_hook_and_times_every_call(engine_name, table, script, triggers):
    engine = ENGINES[engine_name]
    profiler = SimpleProfiler()
    plain = _profiled_trace(engine, table, script, triggers, None)
    profiled = _profiled_trace(engine, table, script, triggers, profiler.wrap)
    assert profiled == plain  # same hooks, same order, same states and errors
    # A hook stopped by the budget raised before recording its call; its timing is still recorded (as it should:
    # it ran).  Compare counts on the runs without one.
    assume(not any(step[0] == "OutOfBudget" for step in plain[0]))
    counts = {action.split(".", 1)[1]: len(times) for action, times in profiler.recorded_durations.items()}
    hooks = plain[1]
    assert counts == {hook: hooks.count(hook) for hook in set(hooks)}  # one timing per call of each hook


@pytest.mark.parametrize("devices, count", [("auto", 1), (-1, 1), ("1", 1), (1, 1)])
def test_lightnings_devices_forms_are_understood(devices, count):
    assert Trainer(devices=devices, accelerator="cpu", logger=False).world_size == count


@pytest.mark.parametrize("devices", [[0, 1], "0,1", (1,)])
def test_a_device_list_points_to_cuda_visible_devices(devices):
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        Trainer(devices=devices, accelerator="cpu")
