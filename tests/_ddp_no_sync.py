"""Manual accumulation with ``no_backward_sync()`` under strategy="ddp" on 2 processes (tests/test_ddp.py).

Two fits of one module in one job: a step every 2nd batch, 8 batches a rank, the window's first backward
inside ``no_backward_sync()`` or not.  A DDP communication hook counts the buckets all-reduced.  After the
second fit the strategy is torn down and checked to have freed DDP.  Each rank writes
"all-reduces-without all-reduces-with weights-checksum ddp-freed" to rank-<r>.txt in the working directory.
"""

import gc
import weakref
from pathlib import Path

import torch
import torch.distributed
from _manual_accumulation import ManualAccumulation  # this script's directory is on sys.path
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Callback, Trainer


class CountAllReduces(Callback):
    """Registers a DDP communication hook that counts the buckets all-reduced, then all-reduces them as usual."""

    def __init__(self) -> None:
        self.count = 0

    def on_train_start(self, trainer, module):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.count = 0

        def counting(state, bucket):
            self.count += 1
            return allreduce_hook(state, bucket)

        trainer.strategy.ddp.register_comm_hook(None, counting)


counter = CountAllReduces()
trainer = Trainer(strategy="ddp", devices=2, accelerator="cpu", max_epochs=1, logger=False,
                  enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                  callbacks=[counter])
data = TensorDataset(torch.randn(64, 3, generator=torch.Generator().manual_seed(1)))  # 8 batches of 4 a rank
counts = []
for skip_sync in (False, True):
    module = ManualAccumulation()
    module.skip_sync = skip_sync
    trainer.fit(module, DataLoader(data, batch_size=4))
    counts.append(counter.count)
checksum = float(sum(p.detach().double().sum() for p in module.parameters()))
# Nothing of ours keeps DDP (and its reducer's hold on the group) alive after teardown: the step the Trainer
# calls reaches DDP through the strategy, and leaving the group collects what sits in cycles.
ddp = weakref.ref(trainer.strategy.ddp)
rank = trainer.strategy.rank
gc.disable()  # as at interpreter exit: no collection unless teardown asks for one
try:
    trainer.strategy.teardown()
finally:
    gc.enable()
freed = ddp() is None and not torch.distributed.is_initialized()
Path(f"rank-{rank}.txt").write_text(f"{counts[0]} {counts[1]} {checksum!r} {freed}\n")
