"""Checkpoint cost against torch.save/torch.load of the same tensors, and what an asynchronous save blocks.

    python benchmarks/checkpoint.py            # ~25M float32 parameters + Adam state (~290 MiB)
    python benchmarks/checkpoint.py --quick    # ~1M parameters

Every round times, one after another on the same tensors (interleaved, so a
machine that gets busier slows all of them alike):

* ``torch.save`` of the flat ``{name: tensor}`` dict, and the same + fsync;
* ``save_checkpoint_dir`` (ours, synchronous: encode, write, checksum,
  fsync, rename, manifest commit), replacing the checkpoint of the round
  before -- so, as in a run's periodic saves, over the tensors file that
  one retired (``checkpoint/_spare.py``; the uncounted first round writes
  a new file);
* an asynchronous save (``AsyncCheckpointWriter.save(..., until_step=[the
  Adam])``, as the Trainer makes it) followed by what training does next,
  one training step (forward, backward, ``opt.step()``): **blocked** is the
  time ``save`` took (encode, the copy of the parameters to host memory)
  plus the time that ``opt.step()`` waited in its pre-hook for the
  background copy of the optimizer state; also the step's whole time, next
  to a step without a save (``training step``: what the background copy and
  write cost a step that runs beside them), and the time until the write
  was committed.  The write is waited for before the round goes on, so
  every round starts with no write in flight, as in a run whose saves are
  further apart than one write takes;
* ``torch.load(weights_only=True)`` and ``load_checkpoint_dir`` (verify + load),
  each after ``malloc_trim(0)`` so both start from the same heap (see
  ``_malloc_trim``).

Each round starts the saves, and the loads, at another one of them, so no
variant always follows the same other.  A first round warms the page cache
and the writer's host buffers and is not counted.  Prints min and median per row, then the ratios of the medians,
last, in three lines: save (ours / torch.save), load (ours / torch.load) and
async blocking (training blocked by an asynchronous save / a synchronous save).
``torch.save`` writes without fsync, so the save ratio includes our
durability; the ``torch.save + fsync`` row compares like with like.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from statemachine_trainer.checkpoint import (
    DEFAULT_HASH,
    HASHES,
    AsyncCheckpointWriter,
    load_checkpoint_dir,
    save_checkpoint_dir,
)
from statemachine_trainer.checkpoint._hashing import hash_bytes


class Training:
    """An MLP trained with Adam on one batch: its state as a run's checkpoint holds it, and one training step."""

    def __init__(self, width: int, layers: int) -> None:
        self.net = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
        self.opt = torch.optim.Adam(self.net.parameters())
        self.x = torch.randn(32, width)
        self.entered = self.waited = 0.0
        register_optimizer_step_pre_hook(self._entering)  # runs before every per-optimizer hook
        self.after_hooks = False
        self.step()

    @property
    def state(self) -> dict[str, object]:
        """A module state_dict and an Adam state_dict (the live tensors, as ``Trainer.capture_state`` gives them)."""
        return {"module": self.net.state_dict(), "optimizers": [self.opt.state_dict()], "global_step": 1}

    def step(self) -> float:
        """Forward, backward, ``opt.step()``; the seconds that step waited in the optimizer's pre-hooks (for an
        asynchronous save's deferred copy, once :meth:`time_pre_hooks` has run)."""
        self.waited = 0.0
        self.opt.zero_grad(set_to_none=True)
        self.net(self.x).pow(2).mean().backward()
        self.opt.step()
        return self.waited

    def time_pre_hooks(self) -> None:
        """Time the optimizer's own step pre-hooks (the writer's, registered at its first save) from now on."""
        if not self.after_hooks:
            self.opt.register_step_pre_hook(self._entered)
            self.after_hooks = True

    def _entering(self, optimizer: object, args: object, kwargs: object) -> None:
        self.entered = time.perf_counter()

    def _entered(self, optimizer: object, args: object, kwargs: object) -> None:
        self.waited = time.perf_counter() - self.entered


def elapsed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes; its result (a loaded state) is freed after the clock stops, not inside it."""
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    del result
    return seconds


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is none.

    About three quarters of a 288 MiB load is first-touch page faults, and
    whether the allocator hands back memory a previous load freed (no faults)
    is luck: one ``torch.load`` can take 45 ms or 190 ms.  Trimming before
    every timed load starts both loaders from the same allocator state.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return lambda: None
    return lambda: libc.malloc_trim(0)


trim_heap = _malloc_trim()


#: The rows, in the order they are printed.
ROWS = (
    "torch.save",
    "torch.save + fsync",
    "ours save (sync)",
    "ours async save: blocked at the save",
    "ours async save: waited at the next step",
    "ours async save: blocked",
    "ours async save: until committed",
    "training step",
    "training step after async save",
    "torch.load",
    "ours load (verify + load)",
)


class Rounds:
    """The timings of each row, one value per counted round."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {name: [] for name in ROWS}

    def add(self, name: str, seconds: float, counted: bool) -> None:
        if counted:
            self.times[name].append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def print(self) -> None:
        for name, values in self.times.items():
            print(f"{name:42s} min {min(values) * 1e3:8.1f} ms   median {statistics.median(values) * 1e3:8.1f} ms")


def one_round(
    root: Path,
    training: Training,
    flat: dict[str, torch.Tensor],
    writer: AsyncCheckpointWriter,
    rounds: Rounds,
    index: int,
) -> None:
    """Every save, then both loads; round ``index`` starts each group at another member (no fixed order)."""
    state = training.state

    def torch_save_fsync() -> None:
        with open(root / "plain.pt", "wb") as f:
            torch.save(flat, f)
            f.flush()
            os.fsync(f.fileno())

    def async_save() -> None:
        committed: list[float] = []
        start = time.perf_counter()
        writer.save([(root / "async.ckpt", lambda path: committed.append(time.perf_counter()))], state, {"step": 1},
                    until_step=[training.opt])
        at_save = time.perf_counter() - start
        training.time_pre_hooks()
        waited = training.step()  # what training does next; its opt.step() waits for the optimizer state's copy
        step = time.perf_counter() - start - at_save
        writer.wait()  # not counted as blocked: the next round starts with no write in flight
        rounds.add("ours async save: blocked at the save", at_save, counted)
        rounds.add("ours async save: waited at the next step", waited, counted)
        rounds.add("ours async save: blocked", at_save + waited, counted)
        rounds.add("ours async save: until committed", committed[0] - start, counted)
        rounds.add("training step after async save", step, counted)

    counted = index > 0
    saves = [
        lambda: rounds.add("torch.save", elapsed(lambda: torch.save(flat, root / "plain.pt")), counted),
        lambda: rounds.add("torch.save + fsync", elapsed(torch_save_fsync), counted),
        lambda: rounds.add(
            "ours save (sync)", elapsed(lambda: save_checkpoint_dir(root / "sync.ckpt", state, {"step": 1})), counted
        ),
        async_save,
        lambda: rounds.add("training step", elapsed(training.step), counted),
    ]
    def timed_load(name: str, load: Callable[[], object]) -> None:
        trim_heap()
        rounds.add(name, elapsed(load), counted)

    loads = [
        lambda: timed_load("torch.load", lambda: torch.load(root / "plain.pt", weights_only=True)),
        lambda: timed_load("ours load (verify + load)", lambda: load_checkpoint_dir(root / "sync.ckpt")),
    ]
    for group in (saves, loads):
        for k in range(len(group)):
            group[(index + k) % len(group)]()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1M parameters, fewer rounds")
    parser.add_argument("--rounds", type=int, default=None, help="counted rounds (default 5)")
    args = parser.parse_args()
    width, layers = (512, 4) if args.quick else (1024, 24)
    rounds_wanted = args.rounds or 5
    torch.set_num_threads(1)
    training = Training(width, layers)
    state = training.state
    flat = {
        f"t{i}": t
        for i, t in enumerate(
            [*state["module"].values(), *(v for s in state["optimizers"][0]["state"].values() for v in s.values())]
        )
    }
    n_params = sum(t.numel() for t in state["module"].values())
    n_bytes = sum(t.numel() * t.element_size() for t in flat.values())
    print(
        f"model: {n_params / 1e6:.1f}M parameters; tensors incl. Adam state: {n_bytes / 2**20:.0f} MiB; "
        f"{rounds_wanted} interleaved rounds after one warm-up; hash {DEFAULT_HASH}"
    )
    blob = torch.randn(n_bytes // 4).numpy().tobytes()
    for name in HASHES:
        best = min(elapsed(lambda name=name: hash_bytes(name, blob)) for _ in range(2))
        print(f"hash {name:8s} {n_bytes / best / 2**30:6.2f} GiB/s")
    blob = b""  # freed: the rounds below need the memory more

    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    rounds, writer = Rounds(), AsyncCheckpointWriter()
    try:
        for index in range(rounds_wanted + 1):
            one_round(root, training, flat, writer, rounds, index)
    finally:
        writer.wait()
        shutil.rmtree(root)
    rounds.print()
    beside = rounds.median("training step after async save") - rounds.median("training step")
    print(f"a training step beside an asynchronous save's background copy and write (median): {beside * 1e3:+.1f} ms")
    synced = rounds.median("torch.save + fsync")
    print(f"ours save / torch.save + fsync (median): {rounds.median('ours save (sync)') / synced:.2f}")
    print(f"ratio save (median): {rounds.median('ours save (sync)') / rounds.median('torch.save'):.2f}")
    print(f"ratio load (median): {rounds.median('ours load (verify + load)') / rounds.median('torch.load'):.2f}")
    print(
        f"ratio async blocking (median): "
        f"{rounds.median('ours async save: blocked') / rounds.median('ours save (sync)'):.3f}"
    )


if __name__ == "__main__":
    main()
