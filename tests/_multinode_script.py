"""A DDP run over two "nodes" for tests/test_multinode.py: one process per node, torchrun's c10d rendezvous.

Started once per node, in the same directory (the shared filesystem)::

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint localhost:PORT --rdzv-id ID \\
        tests/_multinode_script.py [--resume latest] [--kill-rank R --kill-step S]
        [--signal-rank R --signal-step S [--signal-agent]]

The run is tests/_ddp_script.py's (shuffled data with an augmentation drawn in a
dataloader worker, dropout, accumulation over 2 batches, validation twice per
epoch with ``sync_dist``, ReduceLROnPlateau, a checkpoint after every optimizer
step, ``final.ckpt`` at the end) with ``Trainer(strategy="ddp", num_nodes=2,
devices=1)``.  Each rank also writes ``seen-rank<R>.json``: what the launcher
set and what the Trainer read from it; each ``prepare_data`` call appends its
node (GROUP_RANK) and global rank to ``prepared.txt``.

``--kill-rank R --kill-step S``: global rank R sends itself SIGKILL at the start
of the first batch after optimizer step S (its checkpoint is on disk), and
``--signal-rank R --signal-step S`` sends itself SIGUSR1 there instead (a
preemption request that only this node received); with ``--signal-agent`` it
sends it to its node's torchrun, as SLURM's ``--signal`` would (torchrun
forwards it to the node's workers when started with ``--signals-to-handle
...,SIGUSR1``).  A rank that stops with ``SystemExit`` writes its exit code to
``exit-rank<R>.txt``: the other node's torchrun reports its worker's 75 only if
it notices that exit before the rendezvous store goes away with the signalled
agent, when that agent hosted it.
"""

import argparse
import json
import os
import signal

import torch
from _ddp_script import Classifier, Slow  # this script's directory is on sys.path
from _kill_classifier import NoisyPoints
from torch.utils.data import DataLoader

from statemachine_trainer import Callback, Trainer
from statemachine_trainer.callbacks import ModelCheckpoint


class Prepares(Classifier):
    def prepare_data(self) -> None:
        """Once per node (Lightning's default ``prepare_data_per_node=True``): local rank 0 of each node."""
        with open("prepared.txt", "a") as log:  # O_APPEND: both nodes' lines land whole in the shared file
            log.write(f"node {os.environ['GROUP_RANK']} rank {os.environ['RANK']}\n")


class Seen(Callback):
    """Writes what this rank's launcher said and what the Trainer made of it, once training starts."""

    def on_train_start(self, trainer, module):
        seen = {name: os.environ.get(name) for name in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE",
                                                         "LOCAL_WORLD_SIZE")}
        seen |= {"global_rank": trainer.global_rank, "local_rank": trainer.local_rank,
                 "node_rank": trainer.node_rank, "world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
                 "num_devices": trainer.num_devices, "is_global_zero": trainer.is_global_zero}
        with open(f"seen-rank{trainer.global_rank}.json", "w") as out:
            json.dump(seen, out)


class SignalAt(Callback):
    """Rank ``rank`` sends ``signum`` at the first batch start after optimizer step ``step``: to itself, or to its
    node's torchrun agent (its parent), which forwards it to the node's workers if told to handle it."""

    def __init__(self, rank: int, step: int, signum: int, to_agent: bool = False) -> None:
        self.rank, self.step, self.signum, self.to_agent, self.sent = rank, step, signum, to_agent, False

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getppid() if self.to_agent else os.getpid(), self.signum)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resume", default=None)
    parser.add_argument("--num-nodes", type=int, default=2)
    parser.add_argument("--kill-rank", type=int)
    parser.add_argument("--kill-step", type=int)
    parser.add_argument("--signal-rank", type=int)
    parser.add_argument("--signal-step", type=int)
    parser.add_argument("--signal-agent", action="store_true", help="send the signal to this node's torchrun")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = DataLoader(NoisyPoints(200, seed=1), batch_size=8, shuffle=True, num_workers=1)
    val = DataLoader(NoisyPoints(64, seed=2), batch_size=16)
    # Slow: batches of 50 ms, so the preemption vote holds a ballot every 4 batches, and a signal is acted on
    # well before the run ends (fast batches space ballots up to 64 batches apart: longer than this run).
    callbacks = [ModelCheckpoint(dirpath="checkpoints", every_n_train_steps=1, save_top_k=3), Seen(), Slow()]
    if args.kill_step is not None:
        callbacks.append(SignalAt(args.kill_rank, args.kill_step, signal.SIGKILL))
    if args.signal_step is not None:
        callbacks.append(SignalAt(args.signal_rank, args.signal_step, signal.SIGUSR1, args.signal_agent))
    trainer = Trainer(strategy="ddp", num_nodes=args.num_nodes, devices=1, accelerator="cpu", max_epochs=2, seed=5,
                      accumulate_grad_batches=2, val_check_interval=0.5, num_sanity_val_steps=0,
                      enable_progress_bar=False, default_root_dir=".", log_every_n_steps=2, callbacks=callbacks)
    trainer.fit(Prepares(), train, val, ckpt_path=args.resume)
    trainer.save_checkpoint("final.ckpt")


if __name__ == "__main__":
    try:
        main()
    except SystemExit as stopped:  # a preemption: recorded here, as torchrun's own report of it may be lost
        with open(f"exit-rank{os.environ['RANK']}.txt", "w") as out:
            out.write(str(stopped.code))
        raise
