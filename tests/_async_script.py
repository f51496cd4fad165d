"""A run that saves asynchronously; tests/test_async_checkpoint.py kills, signals and compares it.

    python tests/_async_script.py [--sync] [--resume latest] [--stall-at STEP [--stall-seconds S]]
    python tests/_async_script.py --exit-test GOOD BAD

Runs in its working directory: checkpoints every 3 optimizer steps under
``checkpoints/`` (all kept), ``final.ckpt`` at the end, and a line
``step N`` on stdout after every training batch.  Shuffled data, dropout and
Adam, so a resume is exact only if everything is restored.

``--stall-at STEP`` holds the background write of the step-STEP checkpoint
for ``--stall-seconds`` (default: until killed) just before its manifest is
committed -- its files are written then, in its hidden temp directory -- and
prints ``stalled`` when it gets there.  Training goes on meanwhile (until the
next save, which waits for it).  The write itself is the real one; only the
timing is the test's.

``--exit-test GOOD BAD`` starts two asynchronous writes, a large state to
``GOOD`` and one to ``BAD`` (which cannot be written), and returns at once:
the process must wait for both before exiting, and report the failed one.
"""

import argparse
import os
import sys
import threading
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.checkpoint import AsyncCheckpointWriter, _write
from statemachine_trainer.data import ResumableLoader


class Tied(TrainingModule):
    """Dropout, and an output layer tied to the input layer: two names for one storage in every checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encode = nn.Linear(8, 8)
        self.hidden = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 8))
        self.decode = nn.Linear(8, 8)
        self.decode.weight = self.encode.weight

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return (self.decode(self.hidden(self.encode(x))) - x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def say(line: str) -> None:
    """One line on stdout in one write(2) to the pipe: the writer thread's ``stalled`` and the training thread's
    ``step N`` never interleave (``print`` writes the text and the newline separately, so two threads printing at
    once could produce ``stalledstep 10`` and the test, waiting for the line ``stalled``, would wait forever)."""
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


class Progress(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        say(f"step {trainer.global_step}")


def stall_commit(step: int, seconds: float | None) -> None:
    """Hold the background commit of the step-``step`` checkpoint (the files are written by then)."""
    real = _write.commit

    def commit(tmp, path, *args, **kwargs):
        if threading.current_thread().name == "checkpoint-writer" and f"step={step}." in path.name:
            say("stalled")
            time.sleep(3600 if seconds is None else seconds)
        return real(tmp, path, *args, **kwargs)

    _write.commit = commit


def exit_test(good: str, bad: str) -> None:
    big = {"weights": torch.randn(16 * 2**20 // 4)}  # 16 MiB: still being written when the script returns
    first, second = AsyncCheckpointWriter(), AsyncCheckpointWriter()
    first.save([(good, None)], big, {"step": 1})
    say(f"in flight at exit: {first.in_flight}")
    second.save([(bad, None)], {"x": torch.zeros(3)}, {"step": 1})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--stall-at", type=int, default=None)
    parser.add_argument("--stall-seconds", type=float, default=None)
    parser.add_argument("--exit-test", nargs=2, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.exit_test:
        exit_test(*args.exit_test)
        return
    if args.stall_at is not None:
        stall_commit(args.stall_at, args.stall_seconds)
    data = TensorDataset(torch.randn(40, 8, generator=torch.Generator().manual_seed(1)))  # 10 batches an epoch
    loader = ResumableLoader(DataLoader(data, batch_size=4, shuffle=True), seed=2)
    saver = ModelCheckpoint(
        dirpath="checkpoints", every_n_train_steps=3, save_top_k=-1, save_last=True, async_save=not args.sync
    )
    trainer = Trainer(
        max_epochs=2,
        seed=3,
        enable_progress_bar=False,
        logger=False,
        enable_model_summary=False,
        callbacks=[saver, Progress()],
    )
    trainer.fit(Tied(), loader, ckpt_path=args.resume)
    trainer.save_checkpoint("final.ckpt")


if __name__ == "__main__":
    sys.exit(main())
