"""Both ranks of a real FSDP2 run writing sharded checkpoints; launched by tests/test_checkpoint_shards.py.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_shards_worker.py OUT

Each rank shards a small model with ``fully_shard`` (each Linear, then the
root), takes Adam steps on its own data, and writes ``OUT/step=2`` and
``OUT/step=3`` with ``save_checkpoint_parts`` -- the module's and the
optimizer's DTensors go to DCP shards, the rest as ever.  Rank 0 also saves
the whole (gathered) weights and optimizer state of step 2 to
``OUT/full-2.pt`` with plain ``torch.save``, the reference for the tests.
Then every rank builds a fresh, differently initialized sharded model and
loads ``step=2`` into it through ``sharded_templates``, and writes to
``OUT/rank-<r>.json`` whether its slices equal the ones it saved.  Last,
rank 1 SIGKILLs itself while DCP writes its shards of ``OUT/step=4``: the
run ends failed, by design, and the test checks that nothing was committed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from statemachine_trainer._sharded_state import sharded_templates
from statemachine_trainer.checkpoint import load_checkpoint_parts, save_checkpoint_parts
from statemachine_trainer.distributed import DistributedEnv, join_process_group, leave_process_group


def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, n: int) -> None:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(100 * n + rank))
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"module": model.state_dict(), "optimizers": [optimizer.state_dict()]}


def whole(tree: dict) -> dict:
    """Every DTensor of ``tree`` gathered whole (a collective), plain tensors as they are."""
    if isinstance(tree, dict):
        return {k: whole(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [whole(v) for v in tree]
    return tree.full_tensor() if hasattr(tree, "full_tensor") else tree


def local(tree: dict) -> list[torch.Tensor]:
    if isinstance(tree, dict):
        return [t for k in sorted(tree, key=str) for t in local(tree[k])]
    if isinstance(tree, list):
        return [t for v in tree for t in local(v)]
    return [tree.to_local() if hasattr(tree, "to_local") else tree] if isinstance(tree, torch.Tensor) else []


def main(out: Path) -> None:
    env = DistributedEnv.from_environ()
    join_process_group(env, "cpu")
    rank = env.rank
    model, optimizer = build(0)
    for n in (1, 2):
        step(model, optimizer, rank, n)
    saved = state(model, optimizer)
    save_checkpoint_parts(out / "step=2", saved, {"note": f"rank {rank}"}, {"step": 2})
    reference = whole(saved)
    if rank == 0:
        torch.save(reference, out / "full-2.pt")
    before = [t.clone() for t in local(saved)]
    step(model, optimizer, rank, 3)
    save_checkpoint_parts(out / "step=3", state(model, optimizer), {"note": f"rank {rank}"}, {"step": 3})

    fresh, fresh_optimizer = build(1)
    # no optimizers: as a resume reads before configure_optimizers (the states take their parameters' split)
    replicated, own, _ = load_checkpoint_parts(out / "step=2", template=sharded_templates(fresh))
    fresh.load_state_dict(replicated["module"])
    fresh_optimizer.load_state_dict(replicated["optimizers"][0])
    after = local(state(fresh, fresh_optimizer))
    same = len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))
    sharded = all(hasattr(t, "to_local") for t in replicated["module"].values())
    # with the optimizers built, each state takes the split of the parameter it belongs to
    again, _, _ = load_checkpoint_parts(out / "step=2", template=sharded_templates(fresh, [fresh_optimizer]))
    fresh_optimizer.load_state_dict(again["optimizers"][0])
    same = same and all(torch.equal(a, b) for a, b in zip(before, local(state(fresh, fresh_optimizer))))
    damaged = load_damaged(out, rank)
    (out / f"rank-{rank}.json").write_text(json.dumps({"same": same, "sharded": sharded, "own": own,
                                                       "damaged": damaged}))
    dist.barrier()
    if rank == 1:
        kill_while_writing_shards()
    try:
        save_checkpoint_parts(out / "step=4", state(model, optimizer), {"note": f"rank {rank}"}, {"step": 4})
    finally:
        del model, optimizer, fresh, fresh_optimizer, saved, replicated, again, reference, before, after
        leave_process_group()


def load_damaged(out: Path, rank: int) -> str:
    """Both ranks load a copy of step=2 whose rank-0 shard file has a flipped byte: what each one raised.

    The ranks split checking the shard files (rank 0 checks this one), so rank 1 refuses through the agreement.
    """
    from statemachine_trainer.checkpoint import CheckpointError

    if rank == 0:
        shutil.copytree(out / "step=2", out / "damaged")
        with open(out / "damaged" / "shards" / "__0_0.distcp", "r+b") as file:
            file.seek(100)
            byte = file.read(1)
            file.seek(100)
            file.write(bytes([byte[0] ^ 1]))
    dist.barrier()
    try:
        load_checkpoint_parts(out / "damaged")
    except CheckpointError as exc:
        return str(exc)
    return "loaded"


def kill_while_writing_shards() -> None:
    """SIGKILL this process when DCP starts writing its shard file (the JSON parts are written by then)."""
    from torch.distributed.checkpoint import FileSystemWriter

    def write_data(self, plan, planner):
        os.kill(os.getpid(), signal.SIGKILL)

    FileSystemWriter.write_data = write_data


if __name__ == "__main__":
    main(Path(sys.argv[1]))
