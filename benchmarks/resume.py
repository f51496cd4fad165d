"""Does resuming cost more deep into an epoch?  Time from ``fit(ckpt_path=...)`` to the first resumed step.

Run:  python benchmarks/resume.py [--batches N] [--repeats R] [--quick]

The promise (DESIGN.md, "Resume is exact ... costs O(1) in the position inside
the epoch"): a ``ResumableLoader`` jumps to its position instead of replaying
the batches before it, so resuming at batch 10 000 or at the last batches of a
long epoch takes as long as resuming at batch 10.  The last lines are the
ratios against position 10 (target ~1).

What runs
---------
One epoch of ``--batches`` batches (default 20 000; batch size 1 over a
generated ``TensorDataset``, shuffled, through
``ResumableLoader(DataLoader(...))`` with its default ``rngs``) trains a tiny
linear model once, and requests a checkpoint after batch 10, after batch
``N/2`` and 10 batches before the end; each is written at the boundary after
that batch, so its data position is 10, ``N/2`` or ``N - 10``.  Then, for each
repeat and each checkpoint (in an order rotated per repeat, one untimed
warm-up each first; median and min over repeats), a fresh module, loader and Trainer run
``fit(ckpt_path=...)``; the clock starts just before the call and stops in
the first ``on_train_batch_start`` after the resume, which then ends the fit
(by raising, caught here).  So the time holds the Trainer's setup, reading and
verifying the checkpoint, restoring every part, the loader's jump and the
first batch's fetch: everything a resumed run waits for before it trains.
The epoch's permutation is computed on the first fetch at any position (one
``randperm`` of the epoch), so it is in every measurement alike.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader

torch.set_num_threads(1)


class Tiny(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def make_loader(batches: int) -> ResumableLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(batches, 4, generator=g), torch.randint(0, 2, (batches,), generator=g))
    return ResumableLoader(DataLoader(data, batch_size=1, shuffle=True), seed=0)


def make_trainer(callbacks: list[Callback]) -> Trainer:
    return Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                   enable_model_summary=False, callbacks=callbacks)


class CheckpointAfter(Callback):
    """Requests a checkpoint after each batch named in ``paths`` (written at the next boundary)."""

    def __init__(self, paths: dict[int, Path]) -> None:
        self.paths = paths

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        path = self.paths.get(batch_idx + 1)
        if path is not None:
            trainer.request_checkpoint(path)


class _FirstStep(Exception):
    pass


class StopAtFirstStep(Callback):
    """Stamps the clock at the first training batch after the resume, then ends the fit."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.batch_idx: int | None = None

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self.at, self.batch_idx = time.perf_counter(), batch_idx
        raise _FirstStep


def time_resume(path: Path, batches: int, expected_batch: int) -> float:
    stop = StopAtFirstStep()
    trainer = make_trainer([stop])
    module, loader = Tiny(), make_loader(batches)
    gc.collect()  # a collection of the previous run's garbage would land in this one's time
    start = time.perf_counter()
    with contextlib.suppress(_FirstStep):
        trainer.fit(module, loader, ckpt_path=path)
    if stop.at is None or stop.batch_idx != expected_batch:
        raise AssertionError(f"{path.name}: the first resumed step was batch {stop.batch_idx}, not {expected_batch}")
    return stop.at - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20_000, help="batches in the epoch (default 20000)")
    parser.add_argument("--repeats", type=int, default=15, help="timed resumes per position, interleaved (default 15)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2000 batches, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.repeats = 2000, 2
    if args.batches < 40 or args.repeats < 1:
        parser.error("--batches must be >= 40 and --repeats >= 1")
    positions = [10, args.batches // 2, args.batches - 10]
    print(f"resume benchmark: one epoch of {args.batches} batches, checkpoints at positions {positions}, "
          f"{args.repeats} interleaved repeats, torch {torch.__version__}")
    times: dict[int, list[float]] = {p: [] for p in positions}
    with tempfile.TemporaryDirectory(prefix="resume-bench-") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        paths = {p: Path(tmp) / f"at-{p}.ckpt" for p in positions}
        start = time.perf_counter()
        make_trainer([CheckpointAfter(paths)]).fit(Tiny(), make_loader(args.batches))
        training_s = time.perf_counter() - start
        for p in positions:
            time_resume(paths[p], args.batches, p)  # warm-up
        for r in range(args.repeats):
            k = r % len(positions)
            for p in positions[k:] + positions[:k]:
                times[p].append(time_resume(paths[p], args.batches, p))
    print(f"(training the epoch that wrote the checkpoints took {training_s:.1f} s)\n")
    print(f"{'position':>10}{'median ms':>12}{'min ms':>10}")
    for p in positions:
        print(f"{p:>10}{statistics.median(times[p]) * 1e3:>12.2f}{min(times[p]) * 1e3:>10.2f}")
    print()
    base_med, base_min = statistics.median(times[positions[0]]), min(times[positions[0]])
    for p in positions[1:]:
        print(f"ratio resume at {p} / at {positions[0]}: median {statistics.median(times[p]) / base_med:.3f}, "
              f"min {min(times[p]) / base_min:.3f} (target ~1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
