"""Steps/s of the Trainer under strategy="fsdp" vs a hand-written FSDP2 loop, 2 processes (CPU, gloo).

    python benchmarks/fsdp.py [--steps 300] [--repeats 3] [--save-repeats 5]

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

The checkpoint line times, in one more torchrun job, saving the module and
Adam state of a 25M-parameter MLP sharded over the 2 processes: our
``save_checkpoint_parts`` (DCP shards plus our manifest, checksums and
atomic commit) against ``dcp.save`` of the same state dict to a
``FileSystemWriter`` with ``sync_files=True``, alternating which goes first,
``--save-repeats`` times each; the ratio of the medians (target <= 1.2).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _jobs import fit_clocked, loop_clocked, mlp, synthetic_data, torchrun_job, write_result  # this directory


def plain(steps: int) -> tuple[float, float]:
    """A hand-written FSDP2 loop, as torch's FSDP2 tutorial writes it: each Linear a unit, then the root."""
    import torch
    import torch.distributed as dist
    import torch.distributed._shard  # noqa: F401 - outside the clocks: see benchmarks/ddp.py (the exit abort)
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.utils.data import DataLoader, DistributedSampler

    dist.init_process_group("gloo")
    data = synthetic_data(steps, dist.get_world_size())
    loader = DataLoader(data, batch_size=32, sampler=DistributedSampler(data, shuffle=True, seed=0))
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x)

    model = Model()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    rate, cpu = loop_clocked(model, loader, steps)
    del model, mesh  # nothing may hold the group (DTensors, the mesh) when it goes
    gc.collect()
    dist.destroy_process_group()
    return rate, cpu


def ours(steps: int) -> tuple[float, float]:
    from torch import nn

    from statemachine_trainer.strategies import FSDPStrategy

    return fit_clocked(steps, strategy=FSDPStrategy(wrap={nn.Linear}))


VARIANTS = {"plain": plain, "ours": ours}
NPROC = 2


def worker(variant: str, steps: int, out: str) -> None:
    """Run ``variant`` in this rank; write its numbers to ``out``/RANK.json (ranks' stdout lines can interleave)."""
    import torch

    torch.set_num_threads(1)
    write_result(out, *VARIANTS[variant](steps))


def measure(variant: str, steps: int) -> tuple[float, float]:
    """(rank 0's steps/s, CPU seconds per step averaged over the ranks) of one torchrun job."""
    return torchrun_job(__file__, ["--worker", variant, "--steps", str(steps)], NPROC, variant)


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


def save_times(root: str, repeats: int) -> None:
    """In each rank: time ``dcp.save`` and our ``save_checkpoint_parts`` of one sharded state, alternating; rank 0
    writes the times to ``root``/save.json."""
    import shutil
    from pathlib import Path

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    from statemachine_trainer.checkpoint import save_checkpoint_parts
    from statemachine_trainer.distributed import DistributedEnv, join_process_group, leave_process_group

    env = DistributedEnv.from_environ()
    join_process_group(env, "cpu")
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(24)])  # 25.2M parameters
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1024)).sum().backward()
    optimizer.step()
    state = {"module": model.state_dict(), "optimizers": [optimizer.state_dict()]}
    times: dict[str, list[float]] = {"dcp": [], "ours": []}
    for repeat in range(repeats):
        for kind in ("dcp", "ours") if repeat % 2 == 0 else ("ours", "dcp"):
            path = Path(root) / f"{kind}-{repeat}"
            dist.barrier()
            start = time.perf_counter()
            if kind == "dcp":
                dcp.save(state, storage_writer=dcp.FileSystemWriter(path, sync_files=True))
            else:
                save_checkpoint_parts(path, state, {}, {"step": repeat})
            dist.barrier()
            times[kind].append(time.perf_counter() - start)
            if env.rank == 0:
                shutil.rmtree(path)
    if env.rank == 0:
        Path(root, "save.json").write_text(json.dumps(times))
    del model, optimizer, state
    leave_process_group()


def checkpoint_save_ratios(repeats: int) -> list[str]:
    """Issue 14 item 7's second ratio: our sharded checkpoint's save time vs ``dcp.save`` of the same state."""
    with tempfile.TemporaryDirectory() as root:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={NPROC}",
                   __file__, "--save-worker", "--save-repeats", str(repeats), "--out", root]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
            raise SystemExit(f"the checkpoint job exited {done.returncode}; its output ends:\n{tail}")
        with open(os.path.join(root, "save.json")) as file:
            times = json.load(file)
    dcp_s, ours_s = statistics.median(times["dcp"]), statistics.median(times["ours"])
    return [(f"checkpoint save, 25.2M parameters + Adam sharded over {NPROC} processes: dcp.save "
             f"{dcp_s * 1e3:.0f} ms, ours {ours_s * 1e3:.0f} ms (medians of {repeats})"),
            f"checkpoint save ratio ours/dcp.save (target <= 1.2): {ours_s / dcp_s:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save-repeats", type=int, default=5)
    parser.add_argument("--worker", choices=tuple(VARIANTS))
    parser.add_argument("--save-worker", action="store_true", help="(internal) time the checkpoint saves")
    parser.add_argument("--out", help="(for --worker) the folder each rank writes its numbers to")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.out)
        return
    if args.save_worker:
        save_times(args.out, args.save_repeats)
        return
    print("\n".join([*step_ratios(args.steps, args.repeats), *checkpoint_save_ratios(args.save_repeats)]))


if __name__ == "__main__":
    main()
