"""Steps/s of the Trainer under strategy="fsdp" vs a hand-written FSDP2 loop, 2 processes (CPU, gloo).

    python benchmarks/fsdp.py [--steps 300] [--repeats 3]

Each measurement is its own ``torchrun`` job of 2 processes on this machine.
The jobs of a repeat run one after the other, in the opposite order on every
other repeat (interleaved), ``--repeats`` times; each number is the median
over the repeats.  Both sides train the same MLP, every ``nn.Linear`` its own
FSDP2 unit and the module the root (``FSDPStrategy(wrap={nn.Linear})``), on
the same synthetic data in the same DistributedSampler order, batch 32 per
process, Adam, no logging or checkpoints; the clocks start after a warm-up of
20 steps and stop after the last.

Two clocks, as in ``benchmarks/ddp.py``: rank 0's wall steps/s, and the CPU
time per step of each rank's process, averaged over the ranks (on a shared
machine the CPU clock moves less with the neighbours' load).  The ratio
ours/hand-written is printed last; above 1 means ours is faster (target:
>= 0.95).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WARMUP = 20


def _data(steps: int, world_size: int):
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    n = 32 * world_size * (steps + WARMUP)
    x = torch.randn(n, 64, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))


def plain(steps: int) -> tuple[float, float]:
    """A hand-written FSDP2 loop, as torch's FSDP2 tutorial writes it: each Linear a unit, then the root."""
    import torch
    import torch.distributed as dist
    import torch.distributed._shard  # outside the clocks: see benchmarks/ddp.py (the exit abort)
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.utils.data import DataLoader, DistributedSampler

    dist.init_process_group("gloo")
    data = _data(steps, dist.get_world_size())
    loader = DataLoader(data, batch_size=32, sampler=DistributedSampler(data, shuffle=True, seed=0))
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x)

    model = Model()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = cpu = None
    for i, (x, y) in enumerate(loader):
        if i == WARMUP:
            start, cpu = time.perf_counter(), time.process_time()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    rate, cpu = steps / (time.perf_counter() - start), (time.process_time() - cpu) / steps
    del model, opt, loss, mesh  # nothing may hold the group (DTensors, the mesh) when it goes
    gc.collect()
    dist.destroy_process_group()
    return rate, cpu


def ours(steps: int) -> tuple[float, float]:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from statemachine_trainer import Callback, Trainer, TrainingModule
    from statemachine_trainer.strategies import FSDPStrategy

    class Module(TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

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
    trainer = Trainer(strategy=FSDPStrategy(wrap={nn.Linear}), devices=int(os.environ["LOCAL_WORLD_SIZE"]),
                      accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[clock])
    trainer.fit(Module(), DataLoader(_data(steps, int(os.environ["WORLD_SIZE"])), batch_size=32, shuffle=True))
    return steps / (clock.end - clock.start), (clock.cpu_end - clock.cpu) / steps


VARIANTS = {"plain": plain, "ours": ours}
NPROC = 2


def worker(variant: str, steps: int, out: str) -> None:
    """Run ``variant`` in this rank; write its numbers to ``out``/RANK.json (ranks' stdout lines can interleave)."""
    import torch

    torch.set_num_threads(1)
    rate, cpu = VARIANTS[variant](steps)
    with open(os.path.join(out, f"{os.environ['RANK']}.json"), "w") as file:
        json.dump({"steps_per_s": rate, "cpu_s_per_step": cpu}, file)


def measure(variant: str, steps: int) -> tuple[float, float]:
    """(rank 0's steps/s, CPU seconds per step averaged over the ranks) of one torchrun job."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={NPROC}",
                   __file__, "--worker", variant, "--steps", str(steps), "--out", out]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
        results = []
        for rank in range(NPROC):
            with contextlib.suppress(FileNotFoundError), open(os.path.join(out, f"{rank}.json")) as file:
                results.append(json.load(file))
    if done.returncode != 0 or len(results) != NPROC:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise SystemExit(f"the {variant} job exited {done.returncode} with {len(results)} results; its output "
                         f"ends:\n{tail}")
    return results[0]["steps_per_s"], statistics.fmean(result["cpu_s_per_step"] for result in results)


def step_ratios(steps: int, repeats: int) -> list[str]:
    """The steps/s table and the ours/hand-written ratio lines (jobs interleaved, medians over the repeats)."""
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    for repeat in range(repeats):
        for variant in VARIANTS if repeat % 2 == 0 else reversed(VARIANTS):
            rate, cpu = measure(variant, steps)
            rates.setdefault(variant, []).append(rate)
            cpus.setdefault(variant, []).append(cpu)
    rate = {variant: statistics.median(values) for variant, values in rates.items()}
    cpu = {variant: statistics.median(values) for variant, values in cpus.items()}
    lines = [f"{'variant':>8} {'processes':>9} {'CPU us/step':>12} {'steps/s':>8}"]
    lines += [f"{variant:>8} {NPROC:>9} {cpu[variant] * 1e6:>12.0f} {rate[variant]:>8.1f}" for variant in VARIANTS]
    lines.append(f"steps/s ratio ours/hand-written FSDP2, {NPROC} processes (target >= 0.95): "
                 f"wall {rate['ours'] / rate['plain']:.2f}   CPU {cpu['plain'] / cpu['ours']:.2f}")
    return lines


def checkpoint_save_ratios(repeats: int) -> list[str]:
    """Issue 14 item 7's second ratio: our sharded checkpoint's save time vs ``dcp.save`` of the same state.

    Not measured yet: it lands with the sharded checkpoint format (item 2).  Until then it prints a line saying so.
    """
    return ["checkpoint save ratio ours/dcp.save: not measured (sharded checkpoints under fsdp not available yet)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=tuple(VARIANTS))
    parser.add_argument("--out", help="(for --worker) the folder each rank writes its numbers to")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.out)
        return
    print("\n".join([*step_ratios(args.steps, args.repeats), *checkpoint_save_ratios(args.repeats)]))


if __name__ == "__main__":
    main()
