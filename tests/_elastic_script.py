"""A DDP run with a fixed global batch, for tests/test_elastic.py: resumable at another world size.

    python tests/_elastic_script.py --devices W [--resume CKPT] [--kill-after-step K] [--signal-at-batch B]

Global batch 16, per-rank batch 4 (accumulation 4 / 2 / 1 at 1 / 2 / 4 processes), dropout, Adam, a per-step
LR schedule, a value logged with on_epoch=True and sync_dist=True, validation at each epoch end.  Writes, in the
current directory: checkpoints/ (one per optimizer step), steps-rank-R.txt (per optimizer step the sample indices
that rank trained on and a digest of its dropout masks), and on rank 0 weights.pt and epoch_loss.txt at the end.
"""

import argparse
import os
import signal
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statemachine_trainer import Callback, Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.strategies import FSDPStrategy


class Points(Dataset):
    """Sample i: fixed features, a label, its index, and a random augmentation drawn while it is fetched."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 6, generator=g), torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(6), self.y[i], i


class Classifier(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        hidden = self.net[1](self.net[0](x))
        dropped = self.net[2](hidden)
        mask = (dropped != 0).flatten().tolist()
        digest = sum((i + 1) * int(m) for i, m in enumerate(mask))
        self.seen.append(f"{self.trainer.global_step} {' '.join(map(str, index.tolist()))} {digest}")
        loss = nn.functional.cross_entropy(self.net[3](dropped), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 3, 0.7),
                                                   "interval": "step"}}


class Record(Callback):
    def __init__(self, kill_after: int | None, signal_at: int | None) -> None:
        self.kill_after, self.signal_at = kill_after, signal_at
        self.batches = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.batches += 1
        if self.signal_at is not None:
            time.sleep(0.1)  # ballots about every 2 batches: the preemption lands well before the fit ends
            if self.batches == self.signal_at and trainer.global_rank == 0:
                os.kill(os.getpid(), signal.SIGUSR1)  # inside an accumulation window: the checkpoint waits

    def on_train_start(self, trainer, module):
        if self.signal_at == 0 and trainer.global_rank == 0:  # a detour that takes no step: preempted at once
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        # A known position: the first batch after the checkpoint of step kill_after was written.
        if self.kill_after is not None and trainer.global_step == self.kill_after:
            self._flush(trainer, module)
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_end(self, trainer, module):
        if trainer.global_rank == 0:
            with open("epoch_loss.txt", "a") as f:
                f.write(f"{trainer.current_epoch} {trainer.callback_metrics['train_loss'].item():.9g}\n")

    def on_fit_end(self, trainer, module):
        self._flush(trainer, module)

    @staticmethod
    def _flush(trainer, module):
        with open(f"steps-rank-{trainer.global_rank}.txt", "a") as f:
            f.writelines(line + "\n" for line in module.seen)
        module.seen.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--strategy", default="ddp", help="'auto': one process, single-file checkpoints; 'fsdp'")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--kill-after-step", type=int, default=None)
    parser.add_argument("--signal-at-batch", type=int, default=None, help="rank 0 gets SIGUSR1 after this batch (0: at train start)")
    parser.add_argument("--validate", default=None, help="validate this checkpoint's weights instead of fitting")
    parser.add_argument("--accumulate", type=int, default=None, help="no global batch: accumulate_grad_batches")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train = DataLoader(Points(104), batch_size=4, shuffle=True)  # 6 steps of 16 per epoch, 8 samples left over
    val = DataLoader(Points(32), batch_size=8)
    checkpoints = ModelCheckpoint(dirpath="checkpoints", filename="{step}", every_n_train_steps=1, save_top_k=-1)
    batching = {"global_batch_size": 16} if args.accumulate is None else {"accumulate_grad_batches": args.accumulate}
    # The step calls the net's layers one by one, so under fsdp each Linear is a unit of its own (a unit's inner
    # layers called directly would see its parameters still sharded).
    strategy = FSDPStrategy(wrap={nn.Linear}) if args.strategy == "fsdp" else args.strategy
    trainer = Trainer(strategy=strategy, devices=args.devices, accelerator="cpu", max_epochs=2, seed=5,
                      **batching, num_sanity_val_steps=0, enable_progress_bar=False, logger=False,
                      enable_model_summary=False, default_root_dir=".",
                      callbacks=[checkpoints, Record(args.kill_after_step, args.signal_at_batch)])
    module = Classifier()
    if args.validate is not None:
        (metrics,) = trainer.validate(module, val, ckpt_path=args.validate)
        if trainer.global_rank == 0:
            with open("validated.txt", "w") as f:
                f.write(f"{metrics['val_loss']:.9g}")
        return
    trainer.fit(module, train, val, ckpt_path=args.resume)
    # Under fsdp the parameters are DTensor shards: gathered whole (a collective) before rank 0 saves them.
    weights = {name: value.full_tensor() if hasattr(value, "full_tensor") else value
               for name, value in module.state_dict().items()}
    if trainer.global_rank == 0:
        torch.save(weights, "weights.pt")


if __name__ == "__main__":
    main()
