"""Checkpoint save/load cost against torch.save/torch.load of the same tensors, measured in one run.

    python benchmarks/checkpoint.py            # ~25M float32 parameters + Adam state (~300 MB)
    python benchmarks/checkpoint.py --quick    # ~1M parameters

Prints the hash speeds, then min and median of several repeats for each way of
saving, and the ratios.  ``torch.save`` writes without fsync, so the ratio
against it includes our durability (two fsyncs and a directory fsync); the
ratio against ``torch.save + fsync`` compares like with like.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from statemachine_trainer.checkpoint import DEFAULT_HASH, HASHES, load_checkpoint_dir, save_checkpoint_dir
from statemachine_trainer.checkpoint._hashing import hash_bytes


def model_state(width: int, layers: int) -> dict[str, object]:
    """A module state_dict and an Adam state_dict shaped like a real MLP's."""
    net = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.Adam(net.parameters())
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return {"module": net.state_dict(), "optimizers": [opt.state_dict()], "global_step": 1}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1M parameters, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    width, layers, repeats = (512, 4, 5) if args.quick else (1024, 24, 4)
    repeats = args.repeats or repeats
    torch.set_num_threads(1)
    state = model_state(width, layers)
    flat = {f"t{i}": t for i, t in enumerate(
        [*state["module"].values(), *(v for s in state["optimizers"][0]["state"].values() for v in s.values())])}
    n_params = sum(t.numel() for t in state["module"].values())
    n_bytes = sum(t.numel() * t.element_size() for t in flat.values())
    print(f"model: {n_params / 1e6:.1f}M parameters; tensors incl. Adam state: {n_bytes / 2**20:.0f} MiB; "
          f"{repeats} repeats")
    blob = torch.randn(n_bytes // 4).numpy().tobytes()
    for name in HASHES:
        best, _ = timed(lambda name=name: hash_bytes(name, blob), 2)
        print(f"hash {name:8s} {n_bytes / best / 2**30:6.2f} GiB/s")

    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    try:
        def torch_save() -> None:
            torch.save(flat, root / "plain.pt")

        def torch_save_fsync() -> None:
            with open(root / "plain.pt", "wb") as f:
                torch.save(flat, f)
                f.flush()
                os.fsync(f.fileno())

        rows = {"torch.save": timed(torch_save, repeats), "torch.save + fsync": timed(torch_save_fsync, repeats)}
        for name in HASHES:
            rows[f"ours ({name})"] = timed(lambda name=name: save_checkpoint_dir(
                root / "ckpt", state, {"step": 1}, hash_name=name), repeats)
        rows[f"ours ({DEFAULT_HASH}, no fsync)"] = timed(lambda: save_checkpoint_dir(
            root / "ckpt", state, {"step": 1}, durable=False), repeats)
        save_checkpoint_dir(root / "ckpt", state, {"step": 1})
        rows["torch.load"] = timed(lambda: torch.load(root / "plain.pt", weights_only=True), repeats)
        rows["ours load (verify + load)"] = timed(lambda: load_checkpoint_dir(root / "ckpt"), repeats)
    finally:
        shutil.rmtree(root)
    for name, (best, median) in rows.items():
        print(f"{name:26s} min {best * 1e3:8.1f} ms   median {median * 1e3:8.1f} ms")
    base, synced, ours = rows["torch.save"][1], rows["torch.save + fsync"][1], rows[f"ours ({DEFAULT_HASH})"][1]
    print(f"ratio save ({DEFAULT_HASH}, default, median): {ours / base:.2f}x torch.save, {ours / synced:.2f}x "
          f"torch.save + fsync (target <= 1.2x); without fsync "
          f"{rows[f'ours ({DEFAULT_HASH}, no fsync)'][1] / base:.2f}x torch.save")
    print(f"ratio load (median): {rows['ours load (verify + load)'][1] / rows['torch.load'][1]:.2f}x torch.load")


if __name__ == "__main__":
    main()
