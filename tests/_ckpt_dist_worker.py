"""Both ranks of a real multi-process checkpoint run, launched by tests/test_checkpoint_distributed.py via torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_ckpt_dist_worker.py OUT WS1 SINGLE

First each rank writes multi-part checkpoints under ``OUT/run`` and reads
them back, then tries what must be refused (a damaged part, the world-size-1
checkpoint ``WS1``, the single-process checkpoint ``SINGLE``), and writes what
it saw to ``OUT/rank-<r>.json``.  Last, under ``OUT/killed``, it commits one
checkpoint and SIGKILLs rank 1 while it writes its part of the next: the run
ends failed, by design, and the test checks what is left on disk.  One launch
does it all because starting torchrun costs ~10 s on a 2-core machine.

``states(step, rank)`` is imported by the test too, so both sides know what a
checkpoint must hold without passing tensors between processes.
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from statemachine_trainer.checkpoint import (
    CheckpointError,
    capture_rng,
    first_difference,
    load_checkpoint_parts,
    load_latest_parts,
    release_spares,
    save_checkpoint_parts,
)
from statemachine_trainer.state import SCHEMA_VERSION


def states(step: int, rank: int, big: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(replicated, rank-local)`` state of a small DDP-like run after ``step`` optimizer steps; deterministic."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    params = list(net.parameters())
    exp_avg = [torch.zeros_like(p) for p in params]
    lr = 0.01
    # Adam-shaped optimizer state built by hand: constructing a torch.optim optimizer imports torch._dynamo
    # (seconds per process on these machines), which would dominate this test's run time.
    for _ in range(step):
        net(torch.randn(5, 8)).square().mean().backward()
        with torch.no_grad():
            for p, m in zip(params, exp_avg):
                m.mul_(0.9).add_(p.grad, alpha=0.1)
                p.sub_(lr * m)
                p.grad = None
        lr *= 0.9
    replicated = {
        "module": dict(net.state_dict()),
        "optimizers": [{"state": {i: {"step": torch.tensor(float(step)), "exp_avg": m} for i, m in enumerate(exp_avg)},
                        "param_groups": [{"lr": lr, "betas": (0.9, 0.999), "params": list(range(len(params)))}]}],
        "schedulers": [{"step_size": 1, "gamma": 0.9, "last_epoch": step, "_last_lr": [lr]}],
        "loops": {"schema_version": SCHEMA_VERSION, "loops": {"fit_loop": {"position": {"state": "ADVANCE", "row": None,
                                                                           "hook": 0, "queue": []},
                                                              "progress": {"total": {"completed": step}}}}},
        "callbacks": {"EarlyStopping": {"best": 0.5, "wait": step}},
    }
    # Each rank draws from its own streams: what DistributedSampler offsets and per-rank dropout leave behind.
    random.seed(1000 * step + rank)
    np.random.seed(1000 * step + rank)
    torch.manual_seed(1000 * step + rank)
    torch.rand(rank + 1), random.random(), np.random.rand()
    local: dict[str, Any] = {"rng": capture_rng(), "loader": {"epoch": step // 3, "index": 7 * step + rank},
                             "grad_accum": torch.full((3,), float(rank + step))}
    if big:
        local["big"] = torch.full((big,), float(rank))
    return replicated, local


def _write(out: Path, rank: int, results: dict[str, Any]) -> None:
    (out / f"rank-{rank}.json").write_text(json.dumps(results, indent=1))


def _refusal(path: str) -> str:
    try:
        load_checkpoint_parts(path)
    except CheckpointError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "loaded"


def save(root: Path, out: Path, ws1: str, single: str) -> None:
    rank = dist.get_rank()
    results: dict[str, Any] = {"roundtrip": {}, "seconds": {}}
    for step in (1, 2, 3):
        replicated, local = states(step, rank)
        start = time.perf_counter()
        path = save_checkpoint_parts(root / f"step={step}", replicated, local, {"step": step}, keep_last=2)
        results["seconds"][step] = time.perf_counter() - start
        loaded_replicated, loaded_local, manifest = load_checkpoint_parts(path)
        results["roundtrip"][step] = [first_difference(replicated, loaded_replicated),
                                      first_difference(local, loaded_local), manifest["world_size"]]
    latest, loaded, skipped = load_latest_parts(root)
    assert loaded is not None
    results["latest"] = [str(latest), first_difference(states(3, rank)[1], loaded[1]), skipped]
    # Two checkpoints alike except for rank 1's loader position: `diff` must find it inside rank-1/.
    replicated, local = states(5, rank)
    save_checkpoint_parts(out / "diff-a", replicated, local, {"step": 5})
    local["loader"]["index"] += rank  # changes rank 1 only
    save_checkpoint_parts(out / "diff-b", replicated, local, {"step": 5})
    # One rank's state cannot be stored: every rank raises, and nothing reaches the disk.
    try:
        save_checkpoint_parts(out / "refused", replicated, {"fn": print} if rank == 1 else local, {"step": 6})
        results["refused"] = "saved"
    except CheckpointError as exc:
        results["refused"] = str(exc)
    # One rank's part damaged: every rank must refuse, not just rank 1 (rank 0 would wait for it forever).
    bad = save_checkpoint_parts(out / "bad", *states(9, rank), {"step": 9})
    dist.barrier()
    if rank == 0:
        data = bytearray((bad / "rank-1" / "tensors.pt").read_bytes())
        data[len(data) // 2] ^= 0x01
        (bad / "rank-1" / "tensors.pt").write_bytes(bytes(data))
    dist.barrier()
    results["bad"] = _refusal(str(bad))
    results["ws1"] = _refusal(ws1)
    results["single"] = _refusal(single)
    _write(out, rank, results)


def _kill_self_once_writing(root: Path) -> None:  # rank 1 only
    """SIGKILL this process as soon as its part of the step=2 save exists, i.e. while it is being written."""
    while not glob.glob(str(root / ".step=2.tmp-*" / "rank-1" / "tensors.pt")):
        time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGKILL)


def kill(root: Path) -> None:
    rank = dist.get_rank()
    save_checkpoint_parts(root / "step=1", *states(1, rank), {"step": 1})
    print(f"rank {rank}: step=1 committed", flush=True)
    if rank == 1:
        threading.Thread(target=_kill_self_once_writing, args=(root,), daemon=True).start()
    save_checkpoint_parts(root / "step=2", *states(2, rank, big=4_000_000), {"step": 2})
    print(f"rank {rank}: step=2 committed", flush=True)  # must never print on rank 1


def main() -> None:
    out, ws1, single = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo")
    save(out / "run", out, ws1, single)
    # The run's end, as fit ends: rank 0's spare tensors file (kept when keep_last pruned step=1) is deleted now.
    # Left to exit, it would stay behind whenever torchrun terminates rank 0 after kill() kills rank 1 (as a hidden
    # stray the next save there would delete), and the test lists this directory.
    release_spares()
    kill(out / "killed")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
