"""What does exact data cost per step?  A plain loop, the Trainer on a DataLoader (as given, and made resumable by
default), the Trainer on a ResumableLoader.

Run:  python benchmarks/data.py [--steps N] [--repeats R] [--workers 0 2] [--dataset own|tensors]
                                [--clock wall|cpu] [--quick]

The target (issue 13, item 1; DESIGN.md "Performance targets"): a
``ResumableLoader`` with its default ``rngs`` (per-batch seeding of torch's,
Python's and NumPy's global RNGs, what exact mid-epoch resume with random
augmentations needs) adds <= 25 us per step over a plain ``DataLoader``, in
the main process, with ``num_workers`` 0 and > 0; and the Trainer on it stays
within 7% of a plain loop.

What runs
---------
The tiny model of ``benchmarks/overhead.py``: a 64 -> 64 -> 10 MLP,
cross-entropy, SGD, batch 32, one torch thread, one epoch of ``--steps``
batches over generated data, shuffled.  ``--dataset own`` (the default) serves
it through a ``Dataset`` class of the benchmark's own, as a user's dataset is:
the loader cannot know that its ``__getitem__`` draws nothing, so it seeds the
generators for every fetch -- what exact data costs a dataset that may
augment.  ``--dataset tensors`` serves the ``TensorDataset`` itself, whose
fetch provably draws nothing, so nothing is seeded and no key is computed
(``data/_seeding.py``).  For each ``num_workers`` in ``--workers`` (default 0
and 2):

``iterate``          only ``for batch in loader`` over a shuffled ``DataLoader`` (``iterate+resumable``: over
                     ``ResumableLoader(that DataLoader)``): loading's own cost, without a model's noise;
``iterate+seedings`` / ``plain+seedings`` (workers 0 only) the same over the ``DataLoader`` as given, each batch
                     with just the seedings ``ResumableLoader`` does around a main-process fetch it cannot know
                     draws nothing (``SeedingsOnly``): what they cost apart from the rest of the loader, beside
                     the loop alone and inside a training step;
``plain``            the hand-written loop over a shuffled ``DataLoader``;
``plain+resumable``  the same loop over ``ResumableLoader(that DataLoader)`` (the loader's own cost, no Trainer);
``trainer``          ``Trainer(max_epochs=1, enable_progress_bar=False, logger=False, resumable_data=False).fit``
                     on the ``DataLoader`` as given, ``self.log("loss", loss)`` every step, ModelCheckpoint at its
                     default;
``trainer+default``  the same fit on the plain ``DataLoader`` with ``resumable_data`` at its default (True): the
                     Trainer reads it through a ``ResumableLoader`` it builds (exact by default, ``data/_auto.py``);
``trainer+resumable`` the same fit on ``ResumableLoader(that DataLoader)``, default ``rngs``.

How it is measured
------------------
Each step stamps ``time.perf_counter()`` and ``time.process_time()`` as it
starts (the loops at the top of their body, the Trainer in
``training_step``), so the stamps are taken in the main process whatever the
workers do.  **us/step** is the mean interval over the last 90% of the epoch
(start-up, worker launch and the first batches excluded).  All variants run in
one process, interleaved: every repeat runs each variant once, in an order
rotated per repeat, after one untimed warm-up run each; the table shows the
median over repeats, and the ratios are medians' ratios.  ``cpu`` is this
process's CPU time (the main process's cost, blind to other processes and to
workers); ``wall`` includes them.  The ratios of ``--clock`` come last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import torch
import torch.nn.functional as F
from _jobs import DATASETS, OwnDataset  # this directory
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)

BATCH = 32
LR = 0.05
CLOCKS = ("wall", "cpu")
TARGET_US = 25.0
TARGET_RATIO = 1.07


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def make_dataset(steps: int, kind: str) -> Any:
    g = torch.Generator().manual_seed(0)
    n = steps * BATCH
    tensors = TensorDataset(torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g))
    return tensors if kind == "tensors" else OwnDataset(tensors)


class SeedingsOnly:
    """A DataLoader as given, each batch with exactly the seedings ``ResumableLoader`` does per main-process batch
    of a dataset it cannot know draws nothing: torch's state saved, every generator seeded, torch's put back,
    Python's and NumPy's seeded for the training stream.  Their cost apart from the rest of the loader."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        from statemachine_trainer.data._seeding import ALL_RNGS, seeder, training_key

        seed_fetch, seed_training = seeder(ALL_RNGS), seeder(("random", "numpy"))
        get_state, set_state = torch.default_generator.get_state, torch.default_generator.set_state
        key = 0x9E3779B97F4A7C15  # any 64-bit key; one more per batch
        for batch in self.loader:
            state = get_state()
            seed_fetch(key)
            set_state(state)
            seed_training(training_key(key))
            key += 1
            yield batch


def make_loader(dataset: Any, workers: int, seed: int, resumable: bool | str) -> Any:
    """The shuffled DataLoader; ``resumable``: through ResumableLoader (True), or with its seedings only
    (``"seedings"``)."""
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    if resumable == "seedings":
        return SeedingsOnly(loader)
    if not resumable:
        return loader
    from statemachine_trainer.data import ResumableLoader

    return ResumableLoader(loader)  # the default rngs: torch, random, numpy


Stamps = list[tuple[float, float]]


def plain_run(loader: Any, seed: int, stamps: Stamps, scratch: Path) -> int:
    wall, cpu, append = time.perf_counter, time.process_time, stamps.append
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    steps = 0
    model.train()
    for x, y in loader:
        append((wall(), cpu()))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = loss.detach()  # noqa: F841 -- what self.log keeps
        steps += 1
    return steps


def iterate_run(loader: Any, seed: int, stamps: Stamps, scratch: Path) -> int:
    """Only the loop over the loader: what loading itself costs the main process, without a model's noise."""
    wall, cpu, append = time.perf_counter, time.process_time, stamps.append
    steps = 0
    for _batch in loader:
        append((wall(), cpu()))
        steps += 1
    return steps


def trainer_run(loader: Any, seed: int, stamps: Stamps, scratch: Path, **flags: Any) -> int:
    from statemachine_trainer import Trainer, TrainingModule

    wall, cpu, append = time.perf_counter, time.process_time, stamps.append

    class MLP(TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model(seed)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            append((wall(), cpu()))
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=LR)

    trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_model_summary=False,
                      default_root_dir=scratch, **flags)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        trainer.fit(MLP(), loader)
    return trainer.global_step


def trainer_as_given(loader: Any, seed: int, stamps: Stamps, scratch: Path) -> int:
    """The Trainer iterating the DataLoader as given (the opt-out): the baseline the default is compared with."""
    return trainer_run(loader, seed, stamps, scratch, resumable_data=False)


VARIANTS: dict[str, tuple[Callable[[Any, int, Stamps, Path], int], bool | str]] = {
    "iterate": (iterate_run, False),
    "iterate+resumable": (iterate_run, True),
    "iterate+seedings": (iterate_run, "seedings"),
    "plain": (plain_run, False),
    "plain+resumable": (plain_run, True),
    "plain+seedings": (plain_run, "seedings"),
    "trainer": (trainer_as_given, False),
    "trainer+default": (trainer_run, False),
    "trainer+resumable": (trainer_run, True),
}


def steady(stamps: list[float]) -> float:
    """Mean seconds per step over the last 90% of the epoch."""
    window = stamps[max(1, len(stamps) // 10):]
    return (window[-1] - window[0]) / (len(window) - 1)


def measure(name: str, workers: int, dataset: Any, seed: int, root: Path) -> tuple[float, float]:
    run, resumable = VARIANTS[name]
    stamps: Stamps = []
    gc.collect()
    with TemporaryDirectory(dir=root) as scratch:
        steps = run(make_loader(dataset, workers, seed, resumable), seed, stamps, Path(scratch))
    expected = len(dataset) // BATCH
    if steps != expected or len(stamps) != expected:
        raise AssertionError(f"{name}/{workers}: {steps} steps and {len(stamps)} stamps for {expected} batches")
    return steady([s[0] for s in stamps]), steady([s[1] for s in stamps])


def report(times: dict[tuple[str, int], list[tuple[float, float]]], cases: list[tuple[str, int]],
           workers: list[int], last: str) -> None:
    """The table (median and min over repeats, both clocks), then the differences and ratios, ``last``'s last."""
    def stat(case: tuple[str, int], clock: int, how: Any) -> float:
        return how(t[clock] for t in times[case]) * 1e6

    print(f"\n{'variant':<20}{'workers':>8}{'wall median':>13}{'min':>9}{'cpu median':>12}{'min':>9}   (us/step)")
    for case in cases:
        print(f"{case[0]:<20}{case[1]:>8}{stat(case, 0, statistics.median):>13.1f}{stat(case, 0, min):>9.1f}"
              f"{stat(case, 1, statistics.median):>12.1f}{stat(case, 1, min):>9.1f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    for clock in sorted(CLOCKS, key=lambda c: c == last):  # the chosen clock's lines come last
        i = CLOCKS.index(clock)
        if 0 in workers:
            def apart(a: str, b: str, i: int = i) -> str:
                """a - b: median of paired differences (of mins)."""
                median = statistics.median(x[i] - y[i] for x, y in zip(times[(a, 0)], times[(b, 0)])) * 1e6
                return f"{median:+.1f} ({stat((a, 0), i, min) - stat((b, 0), i, min):+.1f})"

            print(f"[{clock}] workers=0: the loader's seedings alone, without ResumableLoader, us/step (median of "
                  f"paired differences; of mins): beside the loop over the loader {apart('iterate+seedings', 'iterate')}"
                  f", inside the plain loop's step {apart('plain+seedings', 'plain')}")
        for w in workers:
            def paired(a: str, b: str, w: int = w, i: int = i) -> float:
                """Median over repeats of a - b, each repeat's two runs measured under the same load."""
                return statistics.median(x[i] - y[i] for x, y in zip(times[(a, w)], times[(b, w)])) * 1e6

            print(f"[{clock}] workers={w}: ResumableLoader - DataLoader, us/step (median of paired differences; of "
                  f"mins): trainer {paired('trainer+resumable', 'trainer'):+.1f} "
                  f"({stat(('trainer+resumable', w), i, min) - stat(('trainer', w), i, min):+.1f}), trainer with "
                  f"resumable_data default {paired('trainer+default', 'trainer'):+.1f} "
                  f"({stat(('trainer+default', w), i, min) - stat(('trainer', w), i, min):+.1f}), plain loop "
                  f"{paired('plain+resumable', 'plain'):+.1f} "
                  f"({stat(('plain+resumable', w), i, min) - stat(('plain', w), i, min):+.1f}), loader alone "
                  f"{paired('iterate+resumable', 'iterate'):+.1f} "
                  f"({stat(('iterate+resumable', w), i, min) - stat(('iterate', w), i, min):+.1f}) "
                  f"(target <= {TARGET_US:g})")
        for w in workers:
            def ratio(name: str, how: Any, w: int = w, i: int = i) -> float:
                return stat((name, w), i, how) / stat(("plain", w), i, how)

            print(f"[{clock}] workers={w}: ratio to plain (median; min): trainer {ratio('trainer', statistics.median):.3f}"
                  f" ({ratio('trainer', min):.3f}), trainer+default {ratio('trainer+default', statistics.median):.3f}"
                  f" ({ratio('trainer+default', min):.3f}), trainer+resumable {ratio('trainer+resumable', statistics.median):.3f}"
                  f" ({ratio('trainer+resumable', min):.3f}), plain+resumable "
                  f"{ratio('plain+resumable', statistics.median):.3f} ({ratio('plain+resumable', min):.3f}) "
                  f"(target <= {TARGET_RATIO:g})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps (one epoch) per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant, interleaved (default 5)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers values (default 0 2)")
    parser.add_argument("--dataset", choices=DATASETS, default="own",
                        help="own: a Dataset class of ours over the tensors, seeded per fetch (default); tensors: "
                             "the TensorDataset itself, whose fetch draws nothing and is not seeded")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="the clock of the last ratio lines")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 200 steps, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 200, 1
    if args.steps < 20 or args.repeats < 1:
        parser.error("--steps must be >= 20 and --repeats >= 1")
    print(f"data benchmark: {platform.python_implementation()} {platform.python_version()}, torch {torch.__version__} "
          f"(1 thread), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.steps} steps x "
          f"{args.repeats} interleaved repeats; dataset: {args.dataset}")
    # The seedings alone are a main-process fetch's (with workers the loader seeds the training stream alone).
    cases = [(name, w) for w in args.workers for name in VARIANTS if w == 0 or "seedings" not in name]
    times: dict[tuple[str, int], list[tuple[float, float]]] = {case: [] for case in cases}
    dataset, warm = make_dataset(args.steps, args.dataset), make_dataset(max(20, args.steps // 10), args.dataset)
    with TemporaryDirectory(prefix="data-bench-") as tmp:
        for name, w in cases:
            measure(name, w, warm, 1, Path(tmp))
        for r in range(args.repeats):
            k = r % len(cases)
            for name, w in cases[k:] + cases[:k]:
                times[(name, w)].append(measure(name, w, dataset, 1000 + r, Path(tmp)))
    report(times, cases, args.workers, args.clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
