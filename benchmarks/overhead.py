"""What does the Trainer add to one training step, next to a plain loop, Lightning and Ignite?

Run:  python benchmarks/overhead.py [--steps N] [--repeats R] [--quick]
      python benchmarks/overhead.py --count-calls [--steps N]
      python benchmarks/overhead.py --instructions [--loaders] [--steps N]   # needs valgrind
      python benchmarks/overhead.py --scalar [--steps N] [--repeats R]
      python benchmarks/overhead.py --scalar --instructions [--steps N]   # needs valgrind
      python benchmarks/overhead.py --caches [--steps N]   # needs valgrind

The design's performance target (DESIGN.md, "Performance targets"): on a tiny
model on CPU, the runtime's per-step overhead over a plain PyTorch loop must be
a small fraction of Lightning's (<= 0.2x) and below Ignite's, measured side by
side in one run; in absolute terms <= 25 us/step, with the default callbacks
(progress bar off) and one value logged per step.

What runs
---------
Every variant trains the same model on the same data for one epoch of
``--steps`` batches (default 2000):

* a 64 -> 64 -> 10 MLP (Linear, ReLU, Linear), cross-entropy, SGD (lr 0.05);
* a shuffled ``DataLoader`` (batch 32, ``num_workers=0``, the default
  collate) over a generated ``TensorDataset`` of ``steps * 32`` samples, so
  one epoch is ``steps`` steps;
* ``torch.set_num_threads(1)``.

Variants:

``plain``
    ``for x, y in loader: loss = F.cross_entropy(model(x), y); loss.backward();
    opt.step(); opt.zero_grad(set_to_none=True); last = loss.detach()`` -- the
    same work as the Trainer's step, in the Trainer's order, keeping the
    logged value as a detached tensor (what ``self.log`` stores).
``ours``
    ``Trainer(max_epochs=1, enable_progress_bar=False, logger=False).fit`` of a
    ``TrainingModule`` whose ``training_step`` calls ``self.log("loss", loss)``;
    every other flag at its default (so ``ModelCheckpoint`` is there).
``ours-as-given``
    ``ours`` with ``resumable_data=False``: the DataLoader iterated as given,
    so ``ours`` minus this is what exact data (the default) costs per step.
    A ``TensorDataset`` with the default collate provably draws nothing, so
    exact data seeds no generator for it (``data/_seeding``).
``ours-seeded``
    ``ours`` with a ``collate_fn`` of one's own (the default collate behind
    a function): the loader cannot know it draws nothing, so every batch's
    fetch and the training stream after it are seeded -- what a dataset with
    random augmentations pays.
``ours+csv``
    the same with the default logger (``logger=True``: a ``CSVLogger``, written
    every ``log_every_n_steps=50`` steps).
``lightning`` / ``lightning+csv`` (when ``lightning`` is importable)
    ``L.Trainer(max_epochs=1, enable_progress_bar=False,
    enable_model_summary=False, logger=False | CSVLogger)`` with a
    ``LightningModule`` doing the same ``self.log("loss", loss)``; checkpointing
    left at its default (a ``ModelCheckpoint`` saving at epoch end).
``ignite`` (when ``ignite`` is importable)
    ``create_supervised_trainer(model, opt, loss_fn, output_transform=...)``
    whose output is the detached loss (Ignite's default ``loss.item()`` would
    add a host sync the other variants do not pay).

How it is measured
------------------
* All variants run in one process, interleaved: each repeat runs every
  variant once, in an order rotated per repeat, so drift of the machine hits
  all of them alike.  One untimed warm-up run per variant comes first.
* A forward pre-hook on the model records ``time.perf_counter()`` (wall) and
  ``time.process_time()`` (this process's CPU time) as each step's forward
  begins -- the same instrumentation for every variant, and outside the data
  path, so the loader keeps the default collate (a ``collate_fn`` of one's
  own would make exact data seed every fetch: ``ours-seeded``).
  **steady us/step** is the mean step time between the forward after the
  first 10% of the epoch and the last forward, so it excludes each
  framework's start-up and end-of-fit work; the overheads and verdicts use it.
  **p50 step** is the median single-step interval (blind to rare costs, such
  as a log flush every 50 steps, so it is shown for insight only).
* **fit us/step** is the time of the whole ``fit`` / ``run`` call (the
  trainer is built outside the timed region) divided by the steps, and
  **fixed ms** is what that adds up to beyond ``steps x steady``: setup,
  the first batches, the epoch-end checkpoint, logger flushes, teardown.
* Two tables: wall clock, and process CPU time.  On a shared machine (other
  processes competing for the cores), CPU time is the steadier of the two;
  ``--clock`` picks which one the verdict lines use (default: wall).
* The table shows the min and the median over repeats; overheads are taken as
  variant - plain on the mins and on the medians.  The garbage collector stays
  on (as in real use); ``gc.collect()`` runs between measurements.
* Each run is checked afterwards: exactly ``steps`` optimizer steps, and
  ``steps`` forwards.

The checkpoint: the default ``ModelCheckpoint`` saves at epoch end (if the
installed version saves at all: the script reports whether a checkpoint file
appeared), and a ``Trainer.save_checkpoint`` of this model is timed separately
and reported in ms and in us per step of one epoch.

``--count-calls`` measures no time: it counts the Python function calls and
bytecode instructions (``sys.settrace`` "call" and "opcode" events, so
deterministic and immune to a busy machine) that ``plain`` and ``ours``
execute per step -- the difference between an epoch of ``2N`` and one of
``N`` steps, divided by ``N``, so setup and teardown cancel -- and prints the
framework's share (ours - plain) with the functions it is spent in, most
bytecodes first.  It is the profile to read when the overhead moves.

``--instructions`` (needs ``valgrind``) counts machine instructions instead:
``plain``, ``ours-as-given``, ``ours`` and ``ours-seeded`` each run in a process of its own
under callgrind for an epoch of ``N`` and of ``3N`` steps (``--steps``,
default here 100), and the difference over ``2N`` is the instructions per
step -- the C work too (torch's dispatcher, the generators' seeding), which
``--count-calls`` does not see.  It takes a few minutes and barely moves with
the machine's load (totals within 1% from run to run, where timings move by
10-20%), and names the C entry points of the per-batch seeding that exact
data pays for when it seeds (``ours-seeded``).  ``--loaders`` adds the plain loop over a ``DataLoader`` and
over ``ResumableLoader`` of it, for a ``TensorDataset`` (whose fetch is not
seeded) and for the same tensors behind a ``Dataset`` class of one's own.

``--scalar`` runs ``plain`` and ``ours`` alone on a one-parameter model fed
one batch from a list, so a step's torch work is a few us and what remains is
the framework's own cost per step, measured with far less noise.  With
``--instructions`` it counts the two runs' machine instructions per step
under cachegrind instead (epochs of ``N`` and ``3N`` steps, default
``N = 2000``: the later part of an epoch, after Python has specialized what
it can; about 3 minutes), which no neighbour on the machine moves.

``--caches`` (needs ``valgrind``; about 10 minutes) runs ``plain`` and ``ours``
under cachegrind with its cache and branch simulation (the last level
simulated is this machine's L2), epochs of ``N`` and ``3N`` steps (default
``N = 100``), and prints per step: instructions, L1 and L2 misses for
instructions and data, and branch mispredictions, each side by side with
the difference.  Our instructions cost more next to the MLP's torch work
than alone (``--scalar``); these are the reasons, counted.

The last lines are the verdicts::

    our overhead / Lightning overhead = X (target <= 0.2)
    our overhead vs Ignite overhead = Y (target < 1)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

torch.set_num_threads(1)

BATCH = 32
LR = 0.05
TARGET_US = 25.0
TARGET_VS_LIGHTNING = 0.2
TARGET_VS_IGNITE = 1.0


# -- shared pieces --------------------------------------------------------------------------
def make_model(seed: int, stamps: list[tuple[float, float]] | None = None) -> nn.Module:
    """The MLP; with ``stamps``, each forward first appends (perf_counter, process_time) to it."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    if stamps is not None:
        wall, cpu, append = time.perf_counter, time.process_time, stamps.append
        model.register_forward_pre_hook(lambda module, args: append((wall(), cpu())))
    return model


class Data:
    """The generated data set, and a fresh, seeded DataLoader over it per run."""

    def __init__(self, steps: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        n = steps * BATCH
        self.dataset = TensorDataset(torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g))
        self.steps = steps

    def loader(self, seed: int, collate_fn: Callable[[list[Any]], Any] | None = None) -> DataLoader:
        return DataLoader(self.dataset, batch_size=BATCH, shuffle=True, num_workers=0, collate_fn=collate_fn,
                          generator=torch.Generator().manual_seed(seed))


def own_collate(samples: list[Any]) -> Any:
    """The default collate behind a function of one's own: the loader cannot know it draws nothing (mixup might)."""
    return default_collate(samples)


@dataclass
class Run:
    total: tuple[float, float]  # (wall, cpu) seconds of the timed fit/run call
    stamps: list[tuple[float, float]]  # (perf_counter, process_time) as each step's forward begins
    steps_done: int  # optimizer steps the framework says it took


@dataclass
class Variant:
    label: str
    run: Callable[[Data, int, Path], Run]  # (data, seed, scratch dir) -> Run
    note: str = ""
    # per clock ("wall", "cpu"): one value per repeat
    steady: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "cpu": []})  # s/step
    p50: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "cpu": []})  # median step, s
    whole: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "cpu": []})  # s/step, whole call
    fixed: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "cpu": []})  # s beyond steps x steady


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


def steady_stats(stamps: list[float]) -> tuple[float, float]:
    """(mean, median) seconds per step over the last 90% of the epoch's batch fetches (one clock)."""
    first = max(1, len(stamps) // 10)
    window = stamps[first:]
    if len(window) < 2:
        raise RuntimeError(f"too few batches ({len(stamps)}) to measure a steady step; use more --steps")
    intervals = [b - a for a, b in itertools.pairwise(window)]
    return (window[-1] - window[0]) / (len(window) - 1), statistics.median(intervals)


@contextlib.contextmanager
def quiet() -> Any:
    """Silence framework chatter (warnings, info logs, prints) while a variant runs."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "ignite")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


# -- the variants -----------------------------------------------------------------------------
def plain_loop(model: nn.Module, loader: Any) -> int:
    """The hand-written loop over ``loader``, in the Trainer's order; the steps taken."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    steps = 0
    last = None
    model.train()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = loss.detach()  # what self.log keeps
        steps += 1
    assert last is not None
    return steps


def plain_variant() -> Variant:
    def run(data: Data, seed: int, scratch: Path) -> Run:
        stamps: list[tuple[float, float]] = []
        loader = data.loader(seed)
        model = make_model(seed, stamps)
        start = now()
        steps = plain_loop(model, loader)
        return Run(since(start), stamps, steps)

    return Variant("plain", run)


def our_variants() -> tuple[list[Variant], Callable[[Path], float]]:
    from statemachine_trainer.module import TrainingModule
    from statemachine_trainer.trainer import Trainer

    class MLP(TrainingModule):
        def __init__(self, seed: int, stamps: list[tuple[float, float]] | None = None) -> None:
            super().__init__()
            self.net = make_model(seed, stamps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=LR)

    def make(logger: bool, resumable_data: bool = True, collate_fn: Any = None) -> Callable[[Data, int, Path], Run]:
        def run(data: Data, seed: int, scratch: Path) -> Run:
            stamps: list[tuple[float, float]] = []
            loader = data.loader(seed, collate_fn)
            module = MLP(seed, stamps)
            trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=logger, default_root_dir=scratch,
                              resumable_data=resumable_data)
            with quiet():
                start = now()
                trainer.fit(module, loader)
                total = since(start)
            if logger and data.steps >= trainer.log_every_n_steps and not list(scratch.rglob("metrics.csv")):
                raise AssertionError("ours+csv: the CSV logger wrote no metrics.csv")
            return Run(total, stamps, trainer.global_step)

        return run

    def save_checkpoint_seconds(scratch: Path) -> float:
        """Best of 5: Trainer.save_checkpoint of this model after a short fit."""
        data = Data(20)
        module = MLP(0)
        trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, default_root_dir=scratch)
        with quiet():
            trainer.fit(module, data.loader(0))
        best = float("inf")
        for i in range(5):
            start = time.perf_counter()
            trainer.save_checkpoint(scratch / f"timed-{i}.ckpt")
            best = min(best, time.perf_counter() - start)
        return best

    return ([Variant("ours", make(False), "logger=False"), Variant("ours+csv", make(True), "default CSVLogger"),
             Variant("ours-as-given", make(False, resumable_data=False), "logger=False, resumable_data=False"),
             Variant("ours-seeded", make(False, collate_fn=own_collate), "logger=False, a collate_fn of one's own")],
            save_checkpoint_seconds)


def lightning_variants() -> list[Variant]:
    try:
        import lightning as L
        from lightning.pytorch.loggers import CSVLogger
    except ImportError as exc:
        try:
            import pytorch_lightning as L  # type: ignore[no-redef]
            from pytorch_lightning.loggers import CSVLogger  # type: ignore[no-redef]
        except ImportError:
            print(f"note: Lightning is not importable ({exc}); skipping the Lightning variants.")
            return []

    class LitMLP(L.LightningModule):
        def __init__(self, seed: int, stamps: list[tuple[float, float]]) -> None:
            super().__init__()
            self.net = make_model(seed, stamps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=LR)

    def make(csv: bool) -> Callable[[Data, int, Path], Run]:
        def run(data: Data, seed: int, scratch: Path) -> Run:
            stamps: list[tuple[float, float]] = []
            loader = data.loader(seed)
            module = LitMLP(seed, stamps)
            with quiet():
                trainer = L.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                                    logger=CSVLogger(scratch) if csv else False, accelerator="cpu", devices=1,
                                    default_root_dir=scratch)
                start = now()
                trainer.fit(module, loader)
                total = since(start)
            return Run(total, stamps, trainer.global_step)

        return run

    return [Variant("lightning", make(False), "logger=False"),
            Variant("lightning+csv", make(True), "CSVLogger")]


def ignite_variants() -> list[Variant]:
    try:
        from ignite.engine import create_supervised_trainer
    except ImportError as exc:
        print(f"note: Ignite is not importable ({exc}); skipping the Ignite variant.")
        return []

    def run(data: Data, seed: int, scratch: Path) -> Run:
        stamps: list[tuple[float, float]] = []
        loader = data.loader(seed)
        model = make_model(seed, stamps)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        engine = create_supervised_trainer(model, opt, F.cross_entropy,
                                           output_transform=lambda x, y, y_pred, loss: loss.detach())
        with quiet():
            start = now()
            engine.run(loader, max_epochs=1)
            total = since(start)
        return Run(total, stamps, engine.state.iteration)

    return [Variant("ignite", run, "create_supervised_trainer")]


# -- measuring ----------------------------------------------------------------------------------
def measure_once(variant: Variant, data: Data, seed: int, root: Path, record: bool) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=f"{variant.label}-", dir=root))
    gc.collect()
    run = variant.run(data, seed, scratch)
    if run.steps_done != data.steps or len(run.stamps) != data.steps:
        raise AssertionError(f"{variant.label}: {run.steps_done} optimizer steps and {len(run.stamps)} forwards "
                             f"for an epoch of {data.steps}")
    if record:
        for k, clock in enumerate(CLOCKS):
            mean, p50 = steady_stats([stamp[k] for stamp in run.stamps])
            variant.steady[clock].append(mean)
            variant.p50[clock].append(p50)
            variant.whole[clock].append(run.total[k] / data.steps)
            variant.fixed[clock].append(run.total[k] - data.steps * mean)


CLOCKS = ("wall", "cpu")


# -- counting calls -------------------------------------------------------------------------------
Counts = dict[tuple[str, int, str], list[float]]  # function -> [calls, bytecode instructions]


def count_calls(variant: Variant, steps: int, root: Path) -> Counts:
    """Python function calls and bytecode instructions executed in one run of ``variant``, per function."""
    counts: Counts = {}

    def trace(frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        entry = counts.get(key)
        if entry is None:
            entry = counts[key] = [0, 0]
        if event == "call":
            frame.f_trace_opcodes, frame.f_trace_lines = True, False
            entry[0] += 1
        elif event == "opcode":
            entry[1] += 1
        return trace

    scratch = Path(tempfile.mkdtemp(prefix=f"{variant.label}-", dir=root))
    data = Data(steps)
    gc.collect()
    sys.settrace(trace)
    try:
        run = variant.run(data, 0, scratch)
    finally:
        sys.settrace(None)
    if run.steps_done != steps:
        raise AssertionError(f"{variant.label}: {run.steps_done} optimizer steps for an epoch of {steps}")
    return counts


def counts_per_step(variant: Variant, steps: int, root: Path) -> Counts:
    """Per step of each function: (an epoch of 2 x steps) - (an epoch of steps), over steps."""
    count_calls(variant, steps, root)  # warm-up: first-use work (imports, caches) is not per step
    short, long = count_calls(variant, steps, root), count_calls(variant, 2 * steps, root)
    zero = [0, 0]
    return {key: [(b - a) / steps for a, b in zip(short.get(key, zero), long.get(key, zero))]
            for key in short.keys() | long.keys()}


def report_calls(steps: int, top: int = 100) -> None:
    plain = plain_variant()
    ours = our_variants()[0][0]
    with tempfile.TemporaryDirectory(prefix="overhead-calls-") as tmp, quiet():
        base = counts_per_step(plain, steps, Path(tmp))
        mine = counts_per_step(ours, steps, Path(tmp))
    zero = [0.0, 0.0]
    extra = {key: [m - b for m, b in zip(mine.get(key, zero), base.get(key, zero))]
             for key in mine.keys() | base.keys()}
    shown = sorted(((n, key) for key, n in extra.items() if abs(n[0]) >= 0.5 or abs(n[1]) >= 5),
                   key=lambda item: (-item[0][1], item[1]))
    print(f"Python calls and bytecode instructions per step, counted over epochs of {steps} and {2 * steps} steps "
          "(deterministic):")
    print(f"{'calls/step':>10}{'bytecodes':>11}  function (ours - plain)")
    for (calls, ops), (filename, line, name) in shown[:top]:
        print(f"{calls:>10.2f}{ops:>11.1f}  {_short_path(filename)}:{line} {name}")
    if len(shown) > top:
        print(f"{'':>21}  ... {len(shown) - top} more")
    print()
    for label, counts in (("plain", base), ("ours", mine)):
        print(f"{label}: {sum(c[0] for c in counts.values()):.2f} Python calls/step, "
              f"{sum(c[1] for c in counts.values()):.1f} bytecode instructions/step")
    print(f"our bytecode instructions per step over the plain loop = {sum(c[1] for c in extra.values()):.1f}")
    print(f"our calls per step over the plain loop = {sum(c[0] for c in extra.values()):.2f}")


# -- counting machine instructions (valgrind) ---------------------------------------------------
#: The C functions whose inclusive cost is what exact data's per-batch seeding pays (callgrind's names).
SEEDING = {
    "random.seed (Python's generator)": "random_seed",
    "numpy.random.seed": "__pyx_pw_5numpy_6random_6mtrand_1seed",
    "torch generator get_state": "THPGenerator_getState(_object*, _object*)",
    "torch generator set_state": "THPGenerator_setState(_object*, _object*)",
    "torch generator manual_seed": "THPGenerator_manualSeed(_object*, _object*)",
}
INSTRUCTION_VARIANTS = ("plain", "ours-as-given", "ours", "ours-seeded")
#: ``--loaders``: the plain loop over the DataLoader as given and over ResumableLoader(it), for a TensorDataset (whose
#: fetch is not seeded) and for the same tensors behind a Dataset class of one's own (seeded per fetch).
LOADER_VARIANTS = ("loop", "loop+resumable", "loop-own", "loop-own+resumable")


def run_loop(label: str, steps: int) -> None:
    """One of LOADER_VARIANTS: the plain loop's step over a DataLoader with the default collate."""
    from _jobs import OwnDataset  # this directory

    from statemachine_trainer.data import ResumableLoader

    dataset: Any = Data(steps).dataset
    if label.startswith("loop-own"):
        dataset = OwnDataset(dataset)
    loader: Any = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    if label.endswith("+resumable"):
        loader = ResumableLoader(loader)
    done = plain_loop(make_model(0), loader)
    if done != steps:
        raise AssertionError(f"{label}: {done} steps for an epoch of {steps}")


def run_one(label: str, steps: int) -> None:
    """One run of one variant (what ``--instructions`` runs under valgrind)."""
    if label in LOADER_VARIANTS:
        run_loop(label, steps)
        return
    ours = {v.label: v for v in our_variants()[0]}
    variant = plain_variant() if label == "plain" else ours[label]
    with tempfile.TemporaryDirectory(prefix="overhead-one-") as tmp, quiet():
        run = variant.run(Data(steps), 0, Path(tmp))
    if run.steps_done != steps:
        raise AssertionError(f"{label}: {run.steps_done} optimizer steps for an epoch of {steps}")


def callgrind(label: str, steps: int, out: Path) -> tuple[int, dict[str, int]]:
    """(instructions, inclusive instructions of each SEEDING function) of one ``run_one`` under callgrind."""
    import subprocess

    from _jobs import valgrind_env  # this directory

    env = valgrind_env()
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
               "--run-one", label, "--steps", str(steps)]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    total = next(int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("summary:"))
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                               check=True, capture_output=True, text=True).stdout
    seeding = {}
    for name, symbol in SEEDING.items():
        costs = [int(line.split()[0].replace(",", "")) for line in annotated.splitlines()
                 if line.split(" [")[0].endswith(":" + symbol)]
        seeding[name] = max(costs, default=0)
    return total, seeding


def report_instructions(steps: int, loaders: bool) -> None:
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("--instructions needs valgrind (callgrind and callgrind_annotate) on PATH.")
    labels = INSTRUCTION_VARIANTS + (LOADER_VARIANTS if loaders else ())
    jobs = [(label, n) for label in labels for n in (steps, 3 * steps)]
    with tempfile.TemporaryDirectory(prefix="overhead-callgrind-") as tmp, \
            ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        counted = dict(zip(jobs, pool.map(lambda job: callgrind(*job, Path(tmp) / f"{job[0]}.{job[1]}"), jobs)))
    per_step = {label: (counted[label, 3 * steps][0] - counted[label, steps][0]) / (2 * steps) for label in labels}
    print(f"Machine instructions per step (callgrind), epochs of {steps} and {3 * steps} steps, one process each:")
    for label in INSTRUCTION_VARIANTS:
        over = per_step[label] - per_step["plain"]
        print(f"  {label:<14}{per_step[label]:>12,.0f}" + (f"   +{over:,.0f} over plain" if label != "plain" else ""))
    print("Per step in the per-batch seeding's C entry points (inclusive), ours-seeded - ours-as-given:")
    for name in SEEDING:
        extra = {label: counted[label, 3 * steps][1][name] - counted[label, steps][1][name]
                 for label in ("ours-seeded", "ours-as-given")}
        print(f"  {name:<36}{(extra['ours-seeded'] - extra['ours-as-given']) / (2 * steps):>10,.0f}")
    print(f"exact data (ours - ours-as-given) = {per_step['ours'] - per_step['ours-as-given']:,.0f} instructions/step; "
          f"seeded (ours-seeded - ours-as-given) = {per_step['ours-seeded'] - per_step['ours-as-given']:,.0f}")
    if loaders:
        print("ResumableLoader - DataLoader in the plain loop (default collate), instructions/step: "
              f"TensorDataset (fetch not seeded) {per_step['loop+resumable'] - per_step['loop']:+,.0f}, a Dataset "
              f"class of one's own (seeded) {per_step['loop-own+resumable'] - per_step['loop-own']:+,.0f}")
    print(f"our instructions per step over the plain loop = {per_step['ours'] - per_step['plain']:,.0f} "
          f"(as given: {per_step['ours-as-given'] - per_step['plain']:,.0f})")


def report_caches(steps: int) -> None:
    """``plain`` and ``ours`` under cachegrind with its cache and branch simulation: what a step costs beyond
    its instructions.  Our Python runs fewer instructions per microsecond next to the MLP's torch work than
    alone (``--scalar``): its code and objects take cache lines from the step, and the interpreter's
    branches mispredict; this counts both, per step."""
    from _jobs import cachegrind_per_step, print_events  # this directory

    labels = ("plain", "ours")
    # One variant after the other: each runs its two epochs side by side, one core each.
    plain, ours = (cachegrind_per_step([sys.executable, __file__, "--run-one", label], steps) for label in labels)
    print(f"per step, from epochs of {steps} and {3 * steps} steps under cachegrind (last level: this machine's L2):")
    print_events(labels, (plain, ours))


# -- the framework alone: a one-parameter model --------------------------------------------------
SCALAR_VARIANTS = ("scalar-plain", "scalar-ours")


def scalar_runs(steps: int) -> dict[str, Callable[[list[tuple[float, float]], Path], int]]:
    """``plain`` and ``ours`` on a one-parameter model fed one batch from a list: label -> run(stamps, scratch).

    The torch work of a step (a multiply, its backward, SGD on one number,
    zero_grad) is a few us, the same in both, so the difference is the
    framework's own per-step cost with far less noise than next to a 400 us
    step.  Each run stamps (wall, CPU) as each batch is handed out and
    returns the optimizer steps taken.
    """
    from statemachine_trainer.module import TrainingModule
    from statemachine_trainer.trainer import Trainer

    batch = (torch.ones(1), torch.ones(1))

    class Batches:
        """``steps`` copies of one batch, stamped as each is handed out (len() so the epoch has a length)."""

        def __init__(self, stamps: list[tuple[float, float]]) -> None:
            self.stamps = stamps

        def __len__(self) -> int:
            return steps

        def __iter__(self) -> Any:
            append = self.stamps.append
            for _ in range(steps):
                append(now())
                yield batch

    class Scalar(TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, _ = batch
            loss = (self.w * x).sum()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=LR)

    def plain(stamps: list[tuple[float, float]], scratch: Path) -> int:
        w = nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([w], lr=LR)
        done = 0
        for x, _ in Batches(stamps):
            loss = (w * x).sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            last = loss.detach()
            done += 1
        assert last is not None
        return done

    def ours(stamps: list[tuple[float, float]], scratch: Path) -> int:
        trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, default_root_dir=scratch)
        with quiet():
            trainer.fit(Scalar(), Batches(stamps))
        return trainer.global_step

    return {"plain": plain, "ours": ours}


def report_scalar(steps: int, repeats: int) -> None:
    """The two :func:`scalar_runs`, interleaved; steady per-step CPU and wall time, as in the main measurement."""
    runs = scalar_runs(steps)
    steady: dict[str, dict[str, list[float]]] = {label: {clock: [] for clock in CLOCKS} for label in runs}
    with tempfile.TemporaryDirectory(prefix="overhead-scalar-") as tmp:
        for r in range(repeats + 1):  # the first round warms up
            for label in list(runs)[r % 2:] + list(runs)[:r % 2]:
                stamps: list[tuple[float, float]] = []
                gc.collect()
                if runs[label](stamps, Path(tempfile.mkdtemp(dir=tmp))) != steps:
                    raise AssertionError(f"scalar {label}: not {steps} optimizer steps")
                if r:
                    for k, clock in enumerate(CLOCKS):
                        steady[label][clock].append(steady_stats([stamp[k] for stamp in stamps])[0])
    print(f"one-parameter model, {steps} steps per run, {repeats} interleaved repeat(s); steady us/step:")
    for clock in CLOCKS:
        p, o = steady["plain"][clock], steady["ours"][clock]
        print(f"[{clock}] plain {us(statistics.median(p)):.1f}, ours {us(statistics.median(o)):.1f}: "
              f"framework {us(statistics.median(o) - statistics.median(p)):.1f} us/step "
              f"(median; min-based {us(min(o) - min(p)):.1f})")


def run_scalar_one(label: str, steps: int) -> None:
    """One fit of ``scalar-plain`` or ``scalar-ours`` (what ``--scalar --instructions`` runs under valgrind)."""
    with tempfile.TemporaryDirectory(prefix="overhead-scalar-one-") as tmp:
        done = scalar_runs(steps)[label.removeprefix("scalar-")]([], Path(tmp))
    if done != steps:
        raise AssertionError(f"{label}: {done} optimizer steps for an epoch of {steps}")


def report_scalar_instructions(steps: int) -> None:
    """Machine instructions per step of the two scalar runs, in the steady state, under cachegrind.

    Each runs one epoch of ``steps`` and one of ``3 * steps`` steps in a process of its own; the difference
    over ``2 * steps`` is one step of the later part of an epoch, where Python 3.11 has specialized (cached)
    what it can: its specializer retries a missed bytecode only after up to thousands of runs, so a short
    epoch would count the warm-up too.
    """
    from concurrent.futures import ThreadPoolExecutor

    from _jobs import cachegrind_per_step  # this directory

    with ThreadPoolExecutor(len(SCALAR_VARIANTS)) as pool:
        counted = dict(zip(SCALAR_VARIANTS, pool.map(
            lambda label: cachegrind_per_step([sys.executable, __file__, "--run-one", label], steps,
                                              simulate_caches=False), SCALAR_VARIANTS)))
    plain, ours = counted["scalar-plain"]["Ir"], counted["scalar-ours"]["Ir"]
    print(f"one-parameter model, machine instructions per step (cachegrind), epochs of {steps} and {3 * steps}:")
    print(f"  plain {plain:,.0f}, ours {ours:,.0f}")
    print(f"framework instructions per step (ours - plain) = {ours - plain:,.0f}")


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "statemachine_trainer/", "benchmarks/"):
        if marker in filename:
            return (marker if marker != "site-packages/" else "") + filename.split(marker, 1)[1]
    return filename


def checkpoint_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.ckpt") if not p.name.startswith("timed-"))


def us(seconds: float) -> float:
    return seconds * 1e6


def pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def report(variants: list[Variant], clock: str) -> dict[str, tuple[float, float]]:
    """Print one clock's table; return each variant's (min-based, median-based) overhead in seconds/step."""
    plain = variants[0]
    base_min, base_med = min(plain.steady[clock]), statistics.median(plain.steady[clock])
    title = {"wall": "wall clock (time.perf_counter)",
             "cpu": "process CPU time (time.process_time: ignores time the OS gave to other processes)"}[clock]
    print(f"-- {title}")
    header = (f"{'variant':<15}{'steady min':>11}{'median':>9}{'p50 step':>10}{'overhead min':>14}{'median':>9}"
              f"{'x plain':>9}{'fit us/step':>13}{'fixed ms':>10}  notes")
    print(header)
    print("-" * len(header))
    over: dict[str, tuple[float, float]] = {}
    for v in variants:
        lo, med = min(v.steady[clock]), statistics.median(v.steady[clock])
        over[v.label] = (lo - base_min, med - base_med)
        print(f"{v.label:<15}{us(lo):>11.1f}{us(med):>9.1f}{us(statistics.median(v.p50[clock])):>10.1f}"
              f"{us(lo - base_min):>14.1f}{us(med - base_med):>9.1f}{med / base_med:>9.3f}"
              f"{us(statistics.median(v.whole[clock])):>13.1f}{statistics.median(v.fixed[clock]) * 1e3:>10.1f}"
              f"  {v.note}")
    print()
    return over


def verdicts(over: dict[str, tuple[float, float]], clock: str) -> None:
    ours = over["ours"][1]
    print(f"[{clock}] our overhead = {us(ours):.1f} us/step (median; min-based {us(over['ours'][0]):.1f}); "
          f"with the CSV logger {us(over['ours+csv'][1]):.1f} (target <= {TARGET_US:g})")
    print(f"[{clock}] our overhead with resumable_data=False (the DataLoader iterated as given, no exact data) "
          f"{us(over['ours-as-given'][1]):.1f} us/step (min-based {us(over['ours-as-given'][0]):.1f})")
    print(f"[{clock}] our overhead with a collate_fn of one's own (exact data seeds every batch) "
          f"{us(over['ours-seeded'][1]):.1f} us/step (min-based {us(over['ours-seeded'][0]):.1f})")
    if "lightning" in over:
        print(f"[{clock}] Lightning overhead = {us(over['lightning'][1]):.1f} us/step (logger=False), "
              f"{us(over['lightning+csv'][1]):.1f} (CSVLogger); ours+csv / lightning+csv = "
              f"{over['ours+csv'][1] / over['lightning+csv'][1]:.3f}")
    if "ignite" in over:
        print(f"[{clock}] Ignite overhead = {us(over['ignite'][1]):.1f} us/step")

    def ratio(label: str, name: str) -> str:
        if label not in over:
            return f"n/a ({name} not importable)"
        return f"{ours / over[label][1]:.3f}"

    print(f"our overhead / Lightning overhead = {ratio('lightning', 'Lightning')} (target <= {TARGET_VS_LIGHTNING:g})")
    print(f"our overhead vs Ignite overhead = {ratio('ignite', 'Ignite')} (target < {TARGET_VS_IGNITE:g})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (one epoch) per run (default 2000; with --instructions 100, "
                             "with --scalar --instructions 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant, interleaved (default 5)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 200 steps, 1 repeat")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="the clock the verdict lines use (default wall; both tables are printed)")
    parser.add_argument("--scalar", action="store_true",
                        help="plain and ours only, on a one-parameter model: the framework's own us/step")
    parser.add_argument("--count-calls", action="store_true",
                        help="time nothing: count the Python calls and bytecodes per step of plain and ours (deterministic)")
    parser.add_argument("--instructions", action="store_true",
                        help="time nothing: count machine instructions per step under valgrind (a few minutes)")
    parser.add_argument("--caches", action="store_true",
                        help="time nothing: plain and ours under cachegrind with cache and branch simulation, per "
                             "step: instructions, cache misses, branch mispredictions (~10 minutes)")
    parser.add_argument("--loaders", action="store_true",
                        help="with --instructions: also the plain loop over DataLoader vs ResumableLoader, for a "
                             "TensorDataset and for a Dataset class of one's own (twice as long)")
    parser.add_argument("--run-one", choices=INSTRUCTION_VARIANTS + LOADER_VARIANTS + SCALAR_VARIANTS,
                        help=argparse.SUPPRESS)  # --instructions' job
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 100 if (args.instructions or args.caches) and not args.scalar else 2000
    if args.run_one:
        (run_scalar_one if args.run_one in SCALAR_VARIANTS else run_one)(args.run_one, args.steps)
        return 0
    if args.instructions and args.scalar:
        report_scalar_instructions(args.steps)
        return 0
    if args.instructions:
        report_instructions(args.steps, args.loaders)
        return 0
    if args.caches:
        report_caches(args.steps)
        return 0
    if args.quick:
        args.steps, args.repeats = 200, 1
    if args.steps < 20 or args.repeats < 1:
        parser.error("--steps must be >= 20 and --repeats >= 1")
    if args.count_calls:
        report_calls(args.steps)
        return 0
    if args.scalar:
        report_scalar(args.steps, args.repeats)
        return 0

    print(f"overhead benchmark: {platform.python_implementation()} {platform.python_version()} on "
          f"{platform.system()} {platform.machine()} ({os.cpu_count()} CPUs), torch {torch.__version__} "
          f"({torch.get_num_threads()} thread), lightning {pkg_version('lightning')}, "
          f"pytorch-ignite {pkg_version('pytorch-ignite')}")
    load_before = os.getloadavg()
    plain = plain_variant()
    ours, save_checkpoint_seconds = our_variants()
    variants = [plain, *ours, *lightning_variants(), *ignite_variants()]
    data = Data(args.steps)
    warm = Data(max(20, min(200, args.steps // 10)))

    with tempfile.TemporaryDirectory(prefix="overhead-bench-") as tmp:
        root = Path(tmp)
        (root / "warmup").mkdir()
        for variant in variants:  # warm-up: imports, lazy initialisation, allocator
            measure_once(variant, warm, 1, root / "warmup", record=False)
        for r in range(args.repeats):
            (root / f"r{r}").mkdir()
            k = r % len(variants)
            for variant in variants[k:] + variants[:k]:
                measure_once(variant, data, 1000 + r, root / f"r{r}", record=True)
        # every timed run has its own scratch folder r<N>/<label>-<random>
        wrote = {p.relative_to(root).parts[1].rsplit("-", 1)[0] for p in checkpoint_files(root)
                 if p.relative_to(root).parts[0] != "warmup"}
        save_s = save_checkpoint_seconds(root / "ckpt")
    load_after = os.getloadavg()

    print(f"{args.steps} steps per run (one epoch, batch {BATCH}), {args.repeats} interleaved repeat(s) per variant; "
          "steady = mean step over the last 90% of the epoch; overhead = variant - plain; times in us "
          "unless marked; fixed ms = whole fit - steps x steady (setup, epoch end, teardown)")
    print(f"1-minute load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          "(above ~1 on this machine, other processes were competing for the CPU)")
    print()
    overs = {clock: report(variants, clock) for clock in CLOCKS}
    for v in variants:
        if v.label not in ("plain", "ignite"):
            print(f"{v.label}: the default ModelCheckpoint {'wrote a' if v.label in wrote else 'wrote NO'} "
                  "checkpoint file at epoch end")
    print(f"ours: Trainer.save_checkpoint of this model takes {save_s * 1e3:.2f} ms "
          f"= {us(save_s) / args.steps:.2f} us/step amortised over a {args.steps}-step epoch (one save per epoch)")
    other = "cpu" if args.clock == "wall" else "wall"
    for clock in (other, args.clock):  # the chosen clock's verdicts come last
        verdicts(overs[clock], clock)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
