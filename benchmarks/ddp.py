"""Steps/s of the Trainer under strategy="ddp" vs a hand-written PyTorch DDP loop, 1 and 2 processes (CPU, gloo).

    python benchmarks/ddp.py [--steps 400] [--rounds 6] [--jobs 1] [--dataset own|tensors]
    python benchmarks/ddp.py --instructions [--steps 30]     # needs valgrind; ~8 minutes on 2 cores

How it is measured
------------------
Interleaved inside one ``torchrun`` job per process count: its processes join
one process group and then run every variant in turn, ``--rounds`` times, in
the opposite order on every other round (ABBA), so a neighbour's load, the
CPU placement of the ranks and the page cache hit both sides of a comparison
alike.  Each variant is one epoch of ``--steps`` steps after a warm-up of 20;
the clocks start after the warm-up and stop after the last step.  Each ratio
is taken per round (the two runs next to each other) and the median over the
rounds is printed, with the rounds' lowest and highest.  ``--jobs N`` repeats
the whole measurement in N fresh jobs (new processes, new group).

Both sides train the same MLP on the same synthetic data with the same
DistributedSampler order rule, batch 32 per process, Adam, no logging or
checkpoints.  The data is served through a ``Dataset`` class of the
benchmark's own (``--dataset own``, the default: what exact data costs a
user's dataset, seeded per fetch), or as the ``TensorDataset`` itself
(``--dataset tensors``: its fetch draws nothing, so nothing is seeded: what
our loop costs without exact data's seeding).

Two clocks: rank 0's wall steps/s, and the CPU time per step of each rank's
process (all its threads: DDP's reducer and gloo work there too), averaged
over the ranks.  On a shared machine the CPU clock moves much less with the
neighbours' load than the wall clock, so its ratio is the one to trust there.

Two controls separate what DDP costs from what our loop costs anyway (in the
1-process job): ``plain-single`` is the plain loop without DDP, and
``ours-auto`` is our Trainer with ``strategy="auto"``, given the
``ResumableLoader`` that ``strategy="ddp"`` makes of the same ``DataLoader``.
The ratios are printed last; above 1 means ours is faster.

``--instructions`` measures no time: it counts what one step of the
1-process pair (``plain-single`` and ``ours-auto``, no process group) costs
the machine, under valgrind's cachegrind (``_jobs.cachegrind_per_step``):
instructions, cache misses and branch mispredictions per step, the same in
every run.  Timings of this model on a shared 2-core VM move by 10-20% from
run to run, more than the few per cent the target is about; the counts show
what our loop and exact data add to the step's work, and where.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys

from _jobs import (  # this directory
    DATASETS,
    cachegrind_per_step,
    fit_clocked,
    loop_clocked,
    mlp,
    print_events,
    synthetic_data,
    torchrun_ranks,
)

#: Which data every variant of this job reads (``--dataset``; set in each worker from its arguments).
DATASET = "own"


def plain(steps: int, ddp: bool = True) -> tuple[float, float]:
    """A hand-written DDP loop, as the PyTorch tutorial writes it; ``ddp=False``: the same loop, one process."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    if ddp:
        data = synthetic_data(steps, dist.get_world_size(), DATASET)
        loader = DataLoader(data, batch_size=32, sampler=DistributedSampler(data, shuffle=True, seed=0))
        model = DistributedDataParallel(mlp())
    else:
        loader = DataLoader(synthetic_data(steps, 1, DATASET), batch_size=32, shuffle=True)
        model = mlp()
    try:
        return loop_clocked(model, loader, steps)
    finally:
        del model  # nothing may hold DDP (and so the group) when the group goes at the job's end
        gc.collect()


def ours(steps: int, strategy: str = "ddp") -> tuple[float, float]:
    from torch.utils.data import DataLoader

    from statemachine_trainer.data import ResumableLoader

    loader = DataLoader(synthetic_data(steps, int(os.environ["WORLD_SIZE"]), DATASET), batch_size=32, shuffle=True)
    if strategy == "auto":  # the loader "ddp" makes of it (this rank's part of a seeded order), so that the
        loader = ResumableLoader(loader)  # control ours ddp/ours auto compares the strategies, not the loaders
    return fit_clocked(steps, strategy=strategy, loader=loader)


#: name -> what runs in each worker
VARIANTS = {
    "plain-single": lambda steps: plain(steps, ddp=False),
    "ours-auto": lambda steps: ours(steps, "auto"),
    "plain": plain,
    "ours": ours,
}
#: process count -> the variants its job interleaves
JOBS = {1: ("plain-single", "ours-auto", "plain", "ours"), 2: ("plain", "ours")}


def worker(variants: list[str], steps: int, rounds: int, out: str, dataset: str) -> None:
    """Join the group once, run ``variants`` ``rounds`` times (ABBA); write this rank's numbers to ``out``/RANK.json."""
    import torch
    import torch.distributed as dist

    global DATASET
    DATASET = dataset
    torch.set_num_threads(1)
    # Not in the tutorial, but without it the job aborts now and then at exit (SIGABRT: a gloo thread alive into
    # interpreter finalization; statemachine_trainer/distributed/_group.py has the story).  Before the group.
    import torch.distributed._shard  # imported for its side effect (see above)

    dist.init_process_group("gloo")  # the Trainer joins this group (idempotent) and leaves it at exit
    numbers: dict[str, list[list[float]]] = {variant: [] for variant in variants}
    for round_ in range(rounds):
        for variant in variants if round_ % 2 == 0 else reversed(variants):
            gc.collect()
            numbers[variant].append(list(VARIANTS[variant](steps)))
    with open(os.path.join(out, f"{os.environ['RANK']}.json"), "w") as file:
        json.dump(numbers, file)
    gc.collect()
    dist.destroy_process_group()


def job(nproc: int, steps: int, rounds: int, dataset: str) -> dict[str, list[tuple[float, float]]]:
    """One torchrun job of ``nproc`` processes: variant -> per round (rank 0's steps/s, CPU s/step over the ranks)."""
    variants = JOBS[nproc]
    ranks = torchrun_ranks(__file__, ["--worker", ",".join(variants), "--steps", str(steps), "--rounds", str(rounds),
                                      "--dataset", dataset], nproc, f"{nproc}-process", timeout=3600)
    return {variant: [(ranks[0][variant][r][0], statistics.fmean(rank[variant][r][1] for rank in ranks))
                      for r in range(rounds)] for variant in variants}


#: --instructions: the 1-process pair (no process group)
COUNTED = ("plain-single", "ours-auto")


def run_one(variant: str, steps: int, dataset: str) -> None:
    """One variant of COUNTED in this process, as --instructions runs it under valgrind."""
    import torch

    global DATASET
    DATASET = dataset
    os.environ.setdefault("WORLD_SIZE", "1")  # what synthetic_data and the Trainer read, as torchrun sets them
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    torch.set_num_threads(1)
    VARIANTS[variant](steps)


def report_instructions(steps: int, dataset: str) -> None:
    counts = {variant: cachegrind_per_step([sys.executable, __file__, "--run-one", variant, "--dataset", dataset],
                                           steps) for variant in COUNTED}
    plain_, ours_ = (counts[variant] for variant in COUNTED)
    print(f"dataset: {dataset}; per step, from epochs of {steps} and {3 * steps} steps under cachegrind:")
    print_events(COUNTED, (plain_, ours_))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per run (after 20 warm-up steps; default 400, with --instructions 30)")
    parser.add_argument("--rounds", type=int, default=6, help="runs of every variant per job, interleaved ABBA")
    parser.add_argument("--jobs", type=int, default=1, help="fresh torchrun jobs per process count (default 1)")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions, cache misses and branch mispredictions per step of the 1-process "
                             "pair under valgrind instead of timing (default --steps 30)")
    parser.add_argument("--run-one", choices=COUNTED, help="(internal) one variant in this process, untimed")
    parser.add_argument("--worker", help="(internal) the comma-separated variants this job's ranks run")
    parser.add_argument("--out", help="(internal) the folder each rank writes its numbers to")
    parser.add_argument("--dataset", choices=DATASETS, default="own",
                        help="own: the tensors behind a Dataset class of ours, seeded per fetch (default); tensors: "
                             "the TensorDataset itself, whose fetch draws nothing and is not seeded")
    args = parser.parse_args()
    if args.run_one:
        run_one(args.run_one, args.steps, args.dataset)
        return
    if args.instructions:
        report_instructions(args.steps or 30, args.dataset)
        return
    args.steps = args.steps or 400
    if args.worker:
        worker(args.worker.split(","), args.steps, args.rounds, args.out, args.dataset)
        return
    print(f"dataset: {args.dataset}; {args.steps} steps per run, {args.rounds} rounds per job, {args.jobs} job(s) "
          "per process count")
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}  # (variant, nproc) -> every round of every job
    for _ in range(args.jobs):
        for nproc in JOBS:
            for variant, rounds in job(nproc, args.steps, args.rounds, args.dataset).items():
                runs.setdefault((variant, nproc), []).extend(rounds)
    print(f"{'variant':>13} {'processes':>9} {'CPU us/step':>12} {'steps/s':>8}   (medians over rounds)")
    for (variant, nproc), rounds in runs.items():
        print(f"{variant:>13} {nproc:>9} {statistics.median(c for _, c in rounds) * 1e6:>12.0f} "
              f"{statistics.median(r for r, _ in rounds):>8.1f}")
    print("ratios (speed of the first over the second, per round next to each other: median [lowest, highest]; "
          "CPU: by CPU time per step, wall: by steps/s):")
    for first, second, label in ((("ours", 1), ("plain", 1), "ours/plain DDP, 1 process"),
                                 (("ours", 2), ("plain", 2), "ours/plain DDP, 2 processes"),
                                 (("ours-auto", 1), ("plain-single", 1), "control: ours-auto/plain-single"),
                                 (("ours", 1), ("ours-auto", 1), "control: ours ddp/ours auto, 1 process"),
                                 (("plain", 1), ("plain-single", 1), "control: plain ddp/plain single")):
        pairs = list(zip(runs[first], runs[second], strict=True))
        cpu = [b[1] / a[1] for a, b in pairs]
        wall = [a[0] / b[0] for a, b in pairs]
        print(f"  {label:<40} CPU {statistics.median(cpu):5.2f} [{min(cpu):.2f}, {max(cpu):.2f}]   "
              f"wall {statistics.median(wall):5.2f} [{min(wall):.2f}, {max(wall):.2f}]")


if __name__ == "__main__":
    main()
