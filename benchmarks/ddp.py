"""Steps/s of the Trainer under strategy="ddp" vs a hand-written PyTorch DDP loop, 1 and 2 processes (CPU, gloo).

    python benchmarks/ddp.py [--steps 400] [--repeats 3] [--dataset own|tensors]

Each measurement is its own ``torchrun`` job on this machine.  The jobs of a
repeat run one after the other, in the opposite order on every other repeat,
``--repeats`` times; each number is the median over the repeats.  Both sides
train the same MLP on the same synthetic data with the same DistributedSampler
order rule, batch 32 per process, Adam, no logging or checkpoints; the clocks
start after a warm-up of 20 steps and stop after the last.  The data is
served through a ``Dataset`` class of the benchmark's own (``--dataset own``,
the default: what exact data costs a user's dataset, seeded per fetch), or as
the ``TensorDataset`` itself (``--dataset tensors``: its fetch draws nothing,
so only the training stream is seeded).

Two clocks: rank 0's wall steps/s, and the CPU time per step of each rank's
process (all its threads: DDP's reducer and gloo work there too), averaged
over the ranks.  On a shared machine the CPU clock moves much less with the
neighbours' load than the wall clock, so its ratio is the one to trust there.

Two controls separate what DDP costs from what our loop costs anyway:
``plain-single`` is the plain loop without DDP or a process group, and
``ours-auto`` is our Trainer with ``strategy="auto"`` (one process), given
the ``ResumableLoader`` that ``strategy="ddp"`` makes of the same
``DataLoader``.  The ratios are printed last; above 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics

from _jobs import DATASETS, fit_clocked, loop_clocked, mlp, synthetic_data, torchrun_job, write_result  # this dir

#: Which data every variant of this job reads (``--dataset``; set in each worker from its arguments).
DATASET = "own"


def plain(steps: int, ddp: bool = True) -> tuple[float, float]:
    """A hand-written DDP loop, as the PyTorch tutorial writes it; ``ddp=False``: the same loop, one process."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    if ddp:
        # Not in the tutorial, but without it the job aborts now and then at exit (SIGABRT: a gloo thread alive into
        # interpreter finalization; statemachine_trainer/distributed/_group.py has the story).  Outside the clocks.
        import torch.distributed._shard  # noqa: F401 - imported for its side effect (see above)

        dist.init_process_group("gloo")
        data = synthetic_data(steps, dist.get_world_size(), DATASET)
        loader = DataLoader(data, batch_size=32, sampler=DistributedSampler(data, shuffle=True, seed=0))
        model = DistributedDataParallel(mlp())
    else:
        loader = DataLoader(synthetic_data(steps, 1, DATASET), batch_size=32, shuffle=True)
        model = mlp()
    rate, cpu = loop_clocked(model, loader, steps)
    if ddp:
        del model  # nothing may hold DDP (and so the group) when the group goes: same story
        gc.collect()
        dist.destroy_process_group()
    return rate, cpu


def ours(steps: int, strategy: str = "ddp") -> tuple[float, float]:
    from torch.utils.data import DataLoader

    from statemachine_trainer.data import ResumableLoader

    loader = DataLoader(synthetic_data(steps, int(os.environ["WORLD_SIZE"]), DATASET), batch_size=32, shuffle=True)
    if strategy == "auto":  # the loader "ddp" makes of it (this rank's part of a seeded order), so that the
        loader = ResumableLoader(loader)  # control ours ddp/ours auto compares the strategies, not the loaders
    return fit_clocked(steps, strategy=strategy, loader=loader)


#: name -> (what runs in each worker, process counts it is measured at)
VARIANTS = {
    "plain-single": (lambda steps: plain(steps, ddp=False), (1,)),
    "ours-auto": (lambda steps: ours(steps, "auto"), (1,)),
    "plain": (plain, (1, 2)),
    "ours": (ours, (1, 2)),
}


def worker(variant: str, steps: int, out: str, dataset: str) -> None:
    """Run ``variant`` in this rank; write its numbers to ``out``/RANK.json (ranks' stdout lines can interleave)."""
    import torch

    global DATASET
    DATASET = dataset
    torch.set_num_threads(1)
    write_result(out, *VARIANTS[variant][0](steps))


def measure(variant: str, nproc: int, steps: int, dataset: str) -> tuple[float, float]:
    """(rank 0's steps/s, CPU seconds per step averaged over the ranks) of one torchrun job."""
    return torchrun_job(__file__, ["--worker", variant, "--steps", str(steps), "--dataset", dataset], nproc, variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=tuple(VARIANTS))
    parser.add_argument("--out", help="(for --worker) the folder each rank writes its numbers to")
    parser.add_argument("--dataset", choices=DATASETS, default="own",
                        help="own: the tensors behind a Dataset class of ours, seeded per fetch (default); tensors: "
                             "the TensorDataset itself, whose fetch draws nothing and is not seeded")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.out, args.dataset)
        return
    print(f"dataset: {args.dataset}")
    jobs = [(variant, nproc) for variant, (_, counts) in VARIANTS.items() for nproc in counts]
    rates: dict[tuple[str, int], list[float]] = {}
    cpus: dict[tuple[str, int], list[float]] = {}
    for repeat in range(args.repeats):
        for variant, nproc in jobs if repeat % 2 == 0 else reversed(jobs):
            rate, cpu = measure(variant, nproc, args.steps, args.dataset)
            rates.setdefault((variant, nproc), []).append(rate)
            cpus.setdefault((variant, nproc), []).append(cpu)
    rate = {job: statistics.median(values) for job, values in rates.items()}
    cpu = {job: statistics.median(values) for job, values in cpus.items()}
    print(f"{'variant':>13} {'processes':>9} {'CPU us/step':>12} {'steps/s':>8}")
    for job in jobs:
        print(f"{job[0]:>13} {job[1]:>9} {cpu[job] * 1e6:>12.0f} {rate[job]:>8.1f}")
    print("ratios (speed of the first over the second; CPU: by CPU time per step, wall: by steps/s):")
    for first, second, label in ((("ours", 1), ("plain", 1), "ours/plain DDP, 1 process"),
                                 (("ours", 2), ("plain", 2), "ours/plain DDP, 2 processes"),
                                 (("ours-auto", 1), ("plain-single", 1), "control: ours-auto/plain-single"),
                                 (("ours", 1), ("ours-auto", 1), "control: ours ddp/ours auto, 1 process"),
                                 (("plain", 1), ("plain-single", 1), "control: plain ddp/plain single")):
        print(f"  {label:<40} CPU {cpu[second] / cpu[first]:5.2f}   wall {rate[first] / rate[second]:5.2f}")


if __name__ == "__main__":
    main()
