"""Elastic resume (README "Elastic resume"): a DDP checkpoint resumed at another world size with a fixed global batch.

The reference is one uninterrupted 2-process run of ``tests/_elastic_script.py`` (global batch 16, per-rank batch
4, a checkpoint after every optimizer step, 6 steps per epoch, 2 epochs).  Its mid-epoch checkpoint after step 3
is resumed at 1 process (and 4, slow) and must end within the tolerance of the uninterrupted run, having trained
every later step on the same samples with the same dropout masks; resumed at 2 it ends bit-identical.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from statemachine_trainer import Trainer
from statemachine_trainer._optim import ConfigError

SCRIPT = Path(__file__).parent / "_elastic_script.py"
#: The largest |difference| of any weight from the uninterrupted run's after a resume at another world size
#: (measured: 3.0e-8 for 2 -> 1, 2 -> 4 and 2 -> 1 -> 2, 6.0e-8 for an uninterrupted 1-process run; float32, 12 Adam
#: steps): the gradient is the mean over the same samples, summed in another order.  README "Elastic resume" says so.
TOLERANCE = 1e-6


def _run(cwd: Path, devices: int, *args: str) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(SCRIPT), "--devices", str(devices), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240, check=False)


def _trained(cwd: Path, devices: int, *args: str) -> Path:
    done = _run(cwd, devices, *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return cwd


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run."""
    return _trained(tmp_path_factory.mktemp("reference"), 2)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "weights.pt", weights_only=True)


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def _steps(run: Path, first: int) -> set[str]:
    """Every micro-batch trained from optimizer step ``first`` on, over all ranks: 'step samples dropout-digest'."""
    lines = set()
    for path in run.glob("steps-rank-*.txt"):
        lines |= {line for line in path.read_text().splitlines() if int(line.split()[0]) >= first}
    return lines


def _assert_continues(reference: Path, resumed: Path, first: int, exact: bool) -> None:
    assert _steps(resumed, first) == _steps(reference, first)  # same samples and dropout masks, step by step
    assert len(_steps(reference, first)) == (12 - first) * 4  # 4 micro-batches of 4 per step of 16
    if exact:
        assert all(torch.equal(x, y) for x, y in zip(_weights(reference).values(), _weights(resumed).values()))
    else:
        assert _max_difference(reference, resumed) <= TOLERANCE
    ref_loss = [float(line.split()[1]) for line in (reference / "epoch_loss.txt").read_text().splitlines()]
    loss = [float(line.split()[1]) for line in (resumed / "epoch_loss.txt").read_text().splitlines()]
    assert loss == pytest.approx(ref_loss[-len(loss):], rel=1e-5)  # the epoch mean (sync_dist) merged correctly


def _in_process(cwd: Path, *args: str) -> Path:
    """The script in this process, under strategy="auto": one process, single-file checkpoints."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from _elastic_script import main
    finally:
        sys.path.remove(str(SCRIPT.parent))
    cwd.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        main(["--strategy", "auto", "--devices", "1", *args])
    return cwd


@pytest.fixture(scope="module")
def in_one_process(reference, tmp_path_factory) -> Path:
    """The reference's checkpoint after step 3 resumed in this process without DDP (single-file checkpoints)."""
    return _in_process(tmp_path_factory.mktemp("one"), "--resume", str(reference / "checkpoints" / "step=3.ckpt"))


def test_a_two_process_checkpoint_resumes_in_one_process(reference, in_one_process):
    """2 -> 1 under strategy="auto": the per-rank parts re-derived into a single process's state."""
    _assert_continues(reference, in_one_process, 3, exact=False)


def test_a_one_process_checkpoint_resumes_at_two_processes(reference, in_one_process, tmp_path):
    """1 -> 2 (a detour through one process, back at two): a single-file checkpoint becomes two ranks' parts."""
    resumed = _trained(tmp_path, 2, "--resume", str(in_one_process / "checkpoints" / "step=8.ckpt"))
    _assert_continues(reference, resumed, 8, exact=False)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_ddp_process(reference, tmp_path):
    """2 -> 1 under strategy="ddp" with devices=1 (per-rank parts written at world size 1), then back at 2."""
    one = _trained(tmp_path / "one", 1, "--resume", str(reference / "checkpoints" / "step=3.ckpt"))
    _assert_continues(reference, one, 3, exact=False)
    back = _trained(tmp_path / "back", 2, "--resume", str(one / "checkpoints" / "step=8.ckpt"))
    _assert_continues(reference, back, 8, exact=False)


def test_the_same_checkpoint_resumed_at_two_processes_is_bit_identical(reference, tmp_path):
    resumed = _trained(tmp_path, 2, "--resume", str(reference / "checkpoints" / "step=3.ckpt"))
    _assert_continues(reference, resumed, 3, exact=True)


def _detour(cwd: Path, checkpoint: Path, *strategy: str) -> Path:
    """``checkpoint`` resumed at one process and preempted before its first batch: step 3 written at world size 1."""
    done = _run(cwd, 1, *strategy, "--resume", str(checkpoint), "--signal-at-batch", "0")
    assert done.returncode == 75, done.stderr[-3000:]
    (written,) = (cwd / "checkpoints").glob("*.ckpt")
    assert written.name == "preempted-epoch=0-step=3.ckpt"  # no step taken at one process
    return written


def test_back_at_two_processes_after_a_detour_at_one_that_took_no_step_is_bit_identical(reference, tmp_path):
    """2 -> 1 -> 2 through one process's single-file checkpoint: the same reduction order again, the same bits."""
    one = _detour(tmp_path / "one", reference / "checkpoints" / "step=3.ckpt", "--strategy", "auto")
    back = _trained(tmp_path / "back", 2, "--resume", str(one))
    _assert_continues(reference, back, 3, exact=True)


def test_validate_loads_the_weights_of_a_checkpoint_of_another_world_size(reference, tmp_path):
    _in_process(tmp_path, "--validate", str(reference / "checkpoints" / "step=3.ckpt"))
    assert float((tmp_path / "validated.txt").read_text()) > 0


def test_without_a_global_batch_another_world_size_is_refused_naming_both(reference, tmp_path):
    from statemachine_trainer.checkpoint import WorldSizeError

    with pytest.raises(WorldSizeError, match=r"written at world size 2, but this run has world size 1\. (?s:.*)"
                                             r"Trainer\(global_batch_size=G\)"):
        _in_process(tmp_path, "--accumulate", "4", "--resume", str(reference / "checkpoints" / "step=3.ckpt"))


def _preempted(tmp_path: Path) -> Path:
    """A 2-process run whose rank 0 gets SIGUSR1 after its 5th batch, inside step 2's accumulation window."""
    done = _run(tmp_path, 2, "--signal-at-batch", "5")
    assert done.returncode == 75, done.stderr[-3000:]
    (checkpoint,) = (tmp_path / "checkpoints").glob("preempted-*.ckpt")
    return checkpoint


def test_a_preemption_under_a_global_batch_waits_for_a_step_boundary(tmp_path):
    from statemachine_trainer.checkpoint._resize import load_all_parts

    _, parts, _ = load_all_parts(_preempted(tmp_path))
    positions = {part["data"]["train"]["position"] for part in parts}
    assert len(positions) == 1 and positions.pop() % 2 == 0  # a = 16 // (4 * 2) batches per step
    assert all(not part["grads"] for part in parts)


@pytest.mark.slow
def test_a_preempted_two_process_run_resumes_in_one_process(reference, tmp_path):
    checkpoint = _preempted(tmp_path / "preempted")
    resumed = _trained(tmp_path / "resumed", 1, "--resume", str(checkpoint))
    step = int(checkpoint.name.split("step=")[1].split(".")[0])
    _assert_continues(reference, resumed, step, exact=False)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_at_four_processes(reference, tmp_path):
    resumed = _trained(tmp_path, 4, "--resume", str(reference / "checkpoints" / "step=3.ckpt"))
    _assert_continues(reference, resumed, 3, exact=False)


@pytest.mark.slow
def test_uninterrupted_runs_at_one_and_two_processes_agree(reference, tmp_path):
    one = _trained(tmp_path, 1)
    _assert_continues(reference, one, 0, exact=False)


@pytest.mark.slow
def test_killed_and_resumed_at_the_same_world_size_is_bit_identical(reference, tmp_path):
    killed = _run(tmp_path, 2, "--kill-after-step", "4")
    assert killed.returncode != 0
    resumed = _trained(tmp_path, 2, "--resume", str(tmp_path / "checkpoints" / "step=4.ckpt"))
    _assert_continues(reference, resumed, 0, exact=True)


# -- the flag, in one process ------------------------------------------------------------------------
def test_global_batch_size_refuses_the_flags_it_would_override():
    for flags in ({"accumulate_grad_batches": 2}, {"limit_train_batches": 3}, {"overfit_batches": 2},
                  {"resumable_data": False}):
        with pytest.raises(ConfigError, match=r"global_batch_size=16\) fixes the samples .*" + next(iter(flags))):
            Trainer(global_batch_size=16, **flags)


def test_the_accumulation_is_derived_at_fit_start_or_refused_naming_g_b_w(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from _elastic_script import Classifier, Points
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from torch.utils.data import DataLoader

    def trainer(g: int) -> Trainer:
        return Trainer(global_batch_size=g, max_epochs=1, logger=False, enable_progress_bar=False,
                       enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path, seed=5)

    fit = trainer(16)
    fit.fit(Classifier(), DataLoader(Points(104), batch_size=4, shuffle=True))
    assert fit.run.accumulate_grad_batches == 4 and fit.global_step == 104 // 16
    with pytest.raises(ConfigError, match=r"global_batch_size=18 .*batch_size=4 at world size 1"):
        trainer(18).fit(Classifier(), DataLoader(Points(104), batch_size=4))


# -- re-deriving the per-rank parts (in process, from the components' own state) ------------------------
def _results_part(values: list[float], sync_dist: bool = True, reduce_fx: str = "mean") -> dict:
    from statemachine_trainer._results import Results

    results = Results()
    for value in values:
        results.log("loss", torch.tensor(value), on_step=False, on_epoch=True, batch_size=2, sync_dist=sync_dist,
                    reduce_fx=reduce_fx)
    return results.state_dict()


def _part(results: dict, metrics: dict | None = None, grads: dict | None = None) -> dict:
    state = {"epoch": 0, "position": 4, "seed": 0, "global_batch_size": 16, "batch_size": 4, "world_size": 2}
    return {"rng": {}, "loggers": {}, "grads": grads or {}, "data": {"train": state, "validate": {"epoch": 0}},
            "results": results, "metrics": metrics or {}}


@pytest.mark.parametrize(("reduce_fx", "expected"), [("mean", 2.5), ("sum", 10.0), ("max", 4.0), ("min", 1.0)])
def test_epoch_accumulators_merge_into_rank_zero_and_reduce_to_the_same_value(reduce_fx, expected):
    from statemachine_trainer._elastic import merge_parts
    from statemachine_trainer._results import Results

    parts = [_part(_results_part([1.0, 2.0], reduce_fx=reduce_fx)), _part(_results_part([3.0, 4.0],
                                                                                         reduce_fx=reduce_fx))]
    merged = [merge_parts(parts, rank, 3, torch.nn.Module(), Path("ckpt")) for rank in range(3)]
    assert all(m["data"] == {"train": parts[0]["data"]["train"]} for m in merged)  # evaluation loaders: afresh
    slots = [Results(), Results(), Results()]
    for results, m in zip(slots, merged):
        results.load_state_dict(m["results"])

    # What sync_dist's all-reduce computes over the 3 new ranks: rank 0 holds the 2 old ranks' data, the others
    # the identity of the reduction.
    totals = torch.stack([r._unique[0].total for r in slots])
    weights = sum(r._unique[0].weight for r in slots)
    reduced = {"mean": totals.sum() / weights, "sum": totals.sum(), "max": totals.max(), "min": totals.min()}
    assert reduced[reduce_fx].item() == pytest.approx(expected)
    assert [r._unique[0].weight for r in slots] == [8, 0, 0]


def test_an_epoch_value_without_sync_dist_is_refused_by_name():
    from statemachine_trainer._elastic import merge_parts
    from statemachine_trainer.checkpoint import WorldSizeError

    parts = [_part(_results_part([1.0], sync_dist=False)), _part(_results_part([2.0], sync_dist=False))]
    with pytest.raises(WorldSizeError, match="'loss' was logged with on_epoch=True but without sync_dist"):
        merge_parts(parts, 0, 1, torch.nn.Module(), Path("ckpt"))


def test_partial_gradients_are_refused():
    from statemachine_trainer._elastic import merge_parts
    from statemachine_trainer.checkpoint import WorldSizeError

    parts = [_part(_results_part([]), grads={"w": torch.ones(2)}), _part(_results_part([]))]
    with pytest.raises(WorldSizeError, match="inside a gradient-accumulation window"):
        merge_parts(parts, 0, 1, torch.nn.Module(), Path("ckpt"))


def test_torchmetrics_states_merge_by_their_reduction():
    """sum (BinaryAccuracy), cat (CatMetric), max (MaxMetric) into rank 0; mean-reduced states are refused."""
    from torchmetrics import CatMetric, MaxMetric, Metric
    from torchmetrics.classification import BinaryAccuracy

    from statemachine_trainer._elastic import merge_parts
    from statemachine_trainer.checkpoint import WorldSizeError

    def module() -> torch.nn.Module:
        holder = torch.nn.Module()
        holder.acc, holder.cat, holder.max = BinaryAccuracy(), CatMetric(), MaxMetric()
        return holder

    data = [(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1])), (torch.tensor([0, 0]), torch.tensor([0, 1]))]
    ranks = [module(), module()]
    for holder, (preds, target) in zip(ranks, data):
        holder.acc.update(preds, target)
        holder.cat.update(preds.float())
        holder.max.update(preds.float().sum())
    parts = [_part(_results_part([]), {name: {"state": dict(m.metric_state), "update_count": m.update_count}
                                        for name, m in holder.named_modules() if isinstance(m, Metric)})
             for holder in ranks]
    live = module()
    zero, one = (merge_parts(parts, rank, 2, live, Path("ckpt"))["metrics"] for rank in range(2))
    whole = module()
    whole.acc.update(torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data]))
    assert {k: v.item() for k, v in zero["acc"]["state"].items()} == {
        k: v.item() for k, v in whole.acc.metric_state.items()}
    assert torch.equal(torch.cat(zero["cat"]["state"]["value"]), torch.tensor([1.0, 0, 1, 0, 0]))
    assert zero["max"]["state"]["max_value"].item() == 2.0 and zero["acc"]["update_count"] == 2
    assert one["cat"]["state"]["value"] == [] and one["acc"]["state"]["tp"].item() == 0 and one["acc"][
        "update_count"] == 0
    assert one["max"]["state"]["max_value"].item() == float("-inf")

    class MeanState(Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("level", torch.tensor(0.0), dist_reduce_fx="mean")

        def update(self, x: torch.Tensor) -> None:
            self.level += x

        def compute(self) -> torch.Tensor:
            return self.level

    holder = torch.nn.Module()
    holder.level = MeanState()
    holder.level.update(torch.tensor(1.0))
    parts = [_part(_results_part([]), {"level": {"state": dict(holder.level.metric_state), "update_count": 1}})] * 2
    with pytest.raises(WorldSizeError, match="'level' has accumulated values and is reduced across ranks by "):
        merge_parts(parts, 0, 1, holder, Path("ckpt"))


# -- FSDP: DCP reshards the module and optimizer state; the rest is re-derived as under DDP ----------------------
@pytest.fixture(scope="module")
def fsdp_reference(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run under strategy="fsdp" (each Linear a unit)."""
    return _trained(tmp_path_factory.mktemp("fsdp-reference"), 2, "--strategy", "fsdp")


@pytest.fixture(scope="module")
def fsdp_at_one(fsdp_reference, tmp_path_factory) -> Path:
    """Its sharded checkpoint after step 3 resumed by one FSDP process (a mesh of one: DCP reads every slice)."""
    return _trained(tmp_path_factory.mktemp("fsdp-one"), 1, "--strategy", "fsdp", "--resume",
                    str(fsdp_reference / "checkpoints" / "step=3.ckpt"))


def test_fsdp_back_at_two_processes_after_a_detour_at_one_that_took_no_step_is_bit_identical(fsdp_reference,
                                                                                            tmp_path):
    """2 -> 1 -> 2 under fsdp: DCP reshards the module and optimizer state to one process's shards and back."""
    one = _detour(tmp_path / "one", fsdp_reference / "checkpoints" / "step=3.ckpt", "--strategy", "fsdp")
    back = _trained(tmp_path / "back", 2, "--strategy", "fsdp", "--resume", str(one))
    _assert_continues(fsdp_reference, back, 3, exact=True)


def test_fsdp_matches_ddp_within_the_tolerance(reference, fsdp_reference):
    _assert_continues(reference, fsdp_reference, 0, exact=False)


def test_a_sharded_two_process_checkpoint_resumes_at_one_process(fsdp_reference, fsdp_at_one):
    """2 -> 1: the 2 ranks' slices of every parameter and Adam state resharded by DCP onto one rank."""
    _assert_continues(fsdp_reference, fsdp_at_one, 3, exact=False)


def test_a_sharded_one_process_checkpoint_resumes_at_two_processes(fsdp_reference, fsdp_at_one, tmp_path):
    """1 -> 2: a world-of-one FSDP checkpoint (still DCP shards) split over two ranks."""
    resumed = _trained(tmp_path, 2, "--strategy", "fsdp", "--resume",
                       str(fsdp_at_one / "checkpoints" / "step=8.ckpt"))
    _assert_continues(fsdp_reference, resumed, 8, exact=False)


@pytest.mark.slow
def test_a_sharded_two_process_checkpoint_resumes_at_four_processes(fsdp_reference, tmp_path):
    resumed = _trained(tmp_path, 4, "--strategy", "fsdp", "--resume",
                       str(fsdp_reference / "checkpoints" / "step=3.ckpt"))
    _assert_continues(fsdp_reference, resumed, 3, exact=False)


@pytest.mark.slow
def test_a_sharded_checkpoint_resumed_at_two_processes_is_bit_identical(fsdp_reference, tmp_path):
    resumed = _trained(tmp_path, 2, "--strategy", "fsdp", "--resume",
                       str(fsdp_reference / "checkpoints" / "step=3.ckpt"))
    _assert_continues(fsdp_reference, resumed, 3, exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_digits_recipe_resumes_at_four_and_at_one_process(tmp_path, strategy):
    """README's recipe: examples/digits.py at 2 processes with --global-batch-size 256, its step-12 checkpoint
    resumed at 4 and at 1; the same val_acc, the weights within the tolerance."""
    from statemachine_trainer.checkpoint import load_module_state

    digits = str(Path(__file__).parents[1] / "examples" / "digits.py")
    common = ["--strategy", strategy, "--global-batch-size", "256", "--epochs", "3"]
    runs = {"two": ["--devices", "2", "--checkpoint-every", "2"],
            "four": ["--devices", "4", "--resume", "two/checkpoints/epoch=2-step=12.ckpt"],
            "one": ["--devices", "1", "--resume", "two/checkpoints/epoch=2-step=12.ckpt"]}
    accuracy = {}
    for name, args in runs.items():
        done = subprocess.run([sys.executable, digits, *common, "--root", name, *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        accuracy[name] = done.stdout.splitlines()[-1]
    assert accuracy["four"] == accuracy["one"] == accuracy["two"] == "val_acc=0.8083"
    whole = load_module_state(tmp_path / "two" / "checkpoints" / "last.ckpt")
    for name in ("four", "one"):
        other = load_module_state(tmp_path / name / "checkpoints" / "last.ckpt")
        assert max((whole[k] - other[k]).abs().max().item() for k in whole) <= TOLERANCE
