"""What the benchmarks share: the data (ddp.py, fsdp.py, data.py), the model, both clocked loops, torchrun jobs.

Both time a small MLP trained by a hand-written loop and by our Trainer, each
measurement its own ``torchrun`` job whose ranks write their numbers to a
folder (their stdout lines could interleave).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

#: Steps before the clocks start (imports, first allocations, the process group's first collectives).
WARMUP = 20


class OwnDataset:
    """A user's dataset class over some tensors: the same items, by a ``__getitem__`` of its own.

    A ``ResumableLoader`` cannot know that it draws nothing, so it seeds the
    global generators for every fetch -- what exact data costs a dataset that
    may augment -- where a ``TensorDataset``'s fetch is not seeded at all
    (``statemachine_trainer/data/_seeding.py``).
    """

    def __init__(self, tensors: Any) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index: int) -> Any:
        return self.tensors[index]


#: ``--dataset`` choices: the data behind a Dataset class of our own (seeded per fetch), or the TensorDataset itself.
DATASETS = ("own", "tensors")


def synthetic_data(steps: int, world_size: int, dataset: str = "tensors") -> Any:
    """Enough 64-feature samples for ``steps`` batches of 32 per rank after the warm-up; labels from feature 0.

    ``dataset="own"``: served through :class:`OwnDataset`, else as the ``TensorDataset``.
    """
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    n = 32 * world_size * (steps + WARMUP)
    x = torch.randn(n, 64, generator=g)
    tensors = TensorDataset(x, (x[:, 0] > 0).long())
    return OwnDataset(tensors) if dataset == "own" else tensors


def mlp() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))


def loop_clocked(model: Any, loader: Any, steps: int) -> tuple[float, float]:
    """The hand-written baseline: Adam, cross-entropy, zero_grad/backward/step per batch; (steps/s, CPU s/step)
    after the warm-up, as :func:`fit_clocked` measures ours."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = cpu = 0.0
    for i, (x, y) in enumerate(loader):
        if i == WARMUP:
            start, cpu = time.perf_counter(), time.process_time()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start), (time.process_time() - cpu) / steps


def fit_clocked(steps: int, **flags: Any) -> tuple[float, float]:
    """Our Trainer (``flags``: strategy, devices...) on :func:`mlp`; (steps/s, CPU s/step) after the warm-up."""
    import torch
    from torch.utils.data import DataLoader

    from statemachine_trainer import Callback, Trainer, TrainingModule

    class Module(TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Clock(Callback):
        start = end = cpu = cpu_end = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == WARMUP:
                self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.end, self.cpu_end = time.perf_counter(), time.process_time()  # the last one counts

    clock = Clock()
    loader = flags.pop("loader", None) or DataLoader(synthetic_data(steps, int(os.environ["WORLD_SIZE"])),
                                                     batch_size=32, shuffle=True)
    trainer = Trainer(devices=int(os.environ["LOCAL_WORLD_SIZE"]), accelerator="cpu", max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=[clock], **flags)
    trainer.fit(Module(), loader)
    return steps / (clock.end - clock.start), (clock.cpu_end - clock.cpu) / steps


def write_result(out: str, rate: float, cpu: float) -> None:
    """This rank's numbers, as ``out``/RANK.json."""
    with open(os.path.join(out, f"{os.environ['RANK']}.json"), "w") as file:
        json.dump({"steps_per_s": rate, "cpu_s_per_step": cpu}, file)


def torchrun_ranks(script: str, args: list[str], nproc: int, label: str, timeout: float = 600) -> list[Any]:
    """Run ``script args --out DIR`` under torchrun with ``nproc`` processes; what each rank wrote to
    ``DIR``/RANK.json, by rank.  A failed job stops the benchmark, showing its output's end."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   script, *args, "--out", out]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
        results = []
        for rank in range(nproc):
            with contextlib.suppress(FileNotFoundError), open(os.path.join(out, f"{rank}.json")) as file:
                results.append(json.load(file))
    if done.returncode != 0 or len(results) != nproc:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise SystemExit(f"the {label} job ({nproc} process(es)) exited {done.returncode} with {len(results)} "
                         f"results; its output ends:\n{tail}")
    return results


def torchrun_job(script: str, args: list[str], nproc: int, label: str) -> tuple[float, float]:
    """One measurement as its own torchrun job: (rank 0's steps/s, CPU s/step averaged over the ranks)."""
    results = torchrun_ranks(script, args, nproc, label)
    return results[0]["steps_per_s"], statistics.fmean(result["cpu_s_per_step"] for result in results)


def _second_level_cache() -> str | None:
    """This machine's L2 as valgrind's ``--LL`` (size,ways,line): the level a step's working set spills from."""
    index = "/sys/devices/system/cpu/cpu0/cache/index2/"
    try:
        with open(index + "size") as size, open(index + "ways_of_associativity") as ways, \
                open(index + "coherency_line_size") as line:
            kib = int(size.read().strip().rstrip("K"))
            return f"{kib * 1024},{int(ways.read())},{int(line.read())}"
    except (OSError, ValueError):
        return None


def valgrind_env() -> dict[str, str]:
    """This environment for a process counted under valgrind: fixed hash seeds (the same dict layouts in every
    run) and one BLAS/OpenMP thread (an idle OpenBLAS worker spins under valgrind and would count as work)."""
    return {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


def cachegrind_per_step(command: list[str], steps: int, simulate_caches: bool = True) -> dict[str, float]:
    """Machine events per step of ``command + ["--steps", N]`` under cachegrind (cache and branch simulation).

    The command runs for epochs of ``steps`` and ``3 * steps`` steps, each in a process of its own, and the
    difference over ``2 * steps`` is one step: setup and teardown cancel.  Deterministic where timings are not:
    hash seeds are fixed, and BLAS and OpenMP pools get one thread (an idle OpenBLAS worker spins under
    valgrind and would count as work).  Events: instructions (``Ir``), L1 instruction/data misses, misses of
    the last level simulated (this machine's L2, when sysfs names it), conditional and indirect branches and
    their mispredictions (``Bcm``, ``Bim``).  ``simulate_caches=False``: instructions only, several times faster.
    """
    import shutil

    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind on PATH.")
    env = valgrind_env()
    level = _second_level_cache()
    with tempfile.TemporaryDirectory(prefix="cachegrind-") as tmp:
        outs = [os.path.join(tmp, f"{n}.out") for n in (steps, 3 * steps)]
        valgrind = (["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes",
                     *([f"--LL={level}"] if level else [])] if simulate_caches else
                    ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--branch-sim=no"])
        runs = []
        for out, n in zip(outs, (steps, 3 * steps), strict=True):  # side by side: one core each
            with open(out + ".log", "w") as log:  # a file, not a pipe: nothing blocks on a full pipe
                runs.append(subprocess.Popen([*valgrind, f"--cachegrind-out-file={out}", *command, "--steps", str(n)],
                                             env=env, stdout=subprocess.DEVNULL, stderr=log))
        for out, run in zip(outs, runs, strict=True):
            if run.wait():
                with open(out + ".log") as log:
                    raise SystemExit(f"{' '.join(command)} under cachegrind exited {run.returncode}:\n"
                                     f"{log.read()[-2000:]}")
        totals = [_cachegrind_summary(out) for out in outs]
    return {event: (totals[1][event] - totals[0][event]) / (2 * steps) for event in totals[0]}


def _cachegrind_summary(path: str) -> dict[str, int]:
    """A cachegrind output file's totals, by event name."""
    with open(path) as file:
        lines = file.read().splitlines()
    events = next(line.split()[1:] for line in lines if line.startswith("events:"))
    summary = next(line.split()[1:] for line in lines if line.startswith("summary:"))
    return dict(zip(events, map(int, summary), strict=True))


#: cachegrind's events that :func:`print_events` shows, and what it calls them.
EVENTS = {"Ir": "instructions", "I1mr": "L1 instruction misses", "ILmr": "last-level instruction misses",
          "D1mr": "L1 data read misses", "D1mw": "L1 data write misses", "DLmr": "last-level data read misses",
          "DLmw": "last-level data write misses", "Bcm": "conditional branch mispredictions",
          "Bim": "indirect branch mispredictions"}


def print_events(labels: tuple[str, str], counts: tuple[dict[str, float], dict[str, float]]) -> None:
    """Two :func:`cachegrind_per_step` results side by side: each event, the difference, the ratio."""
    (left_label, right_label), (left, right) = labels, counts
    print(f"{'event':>34} {left_label:>13} {right_label:>12} {'difference':>13} {'ratio':>6}")
    for event, name in EVENTS.items():
        if event in left:
            ratio = right[event] / left[event] if left[event] else float("nan")
            print(f"{name:>34} {left[event]:>13,.0f} {right[event]:>12,.0f} {right[event] - left[event]:>+13,.0f} "
                  f"{ratio:>6.3f}")
