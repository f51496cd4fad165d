"""The example GANs under strategy="ddp" for tests/test_ddp.py: several backwards per step, each synced.

    python tests/_ddp_gan.py MODE [--devices N] [--same-data] [--ungated] [--accumulate K]

MODE: ``yield`` (examples/gan_yield.py's generator step), ``manual`` (examples/manual_gan.py) or ``index``
(automatic, ``training_step(batch, batch_idx, optimizer_idx)`` returning one loss per optimizer).
``--same-data``: every rank gets the whole dataset (no sharding), so a synced run must equal one process.
``--ungated``: the control -- DDP's loss gate switched off, so nothing is synced.

Each rank writes "<generator digest> <discriminator digest>" to rank-<r>.txt in the working directory.
"""

import argparse
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from gan_yield import GAN, build
from manual_gan import ManualGAN

from statemachine_trainer import Trainer
from statemachine_trainer._strategy import DDP


class IndexGAN(GAN):
    """The yield GAN's losses, one per call: the shared fake batch is made again for each optimizer."""

    def training_step(self, batch, batch_idx, optimizer_idx):
        (real,) = batch
        fake = self.generator(torch.randn(len(real), self.latent_dim, device=real.device))
        if optimizer_idx == 0:
            return self.generator_loss(fake)
        return self.discriminator_loss(real, fake.detach())


MODULES = {"yield": GAN, "manual": ManualGAN, "index": IndexGAN}


def digest(module: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for tensor in module.state_dict().values():
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(MODULES))
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--same-data", action="store_true")
    parser.add_argument("--ungated", action="store_true")
    parser.add_argument("--accumulate", type=int, default=1, help="accumulate_grad_batches (automatic modes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.same_data:
        DDP.shard = lambda self, loader, seed=None: loader
    if args.ungated:
        DDP.gate = lambda self, loss: loss
    module, loader = build(0, num_points=2048, module_class=MODULES[args.mode])
    strategy = "ddp" if args.devices > 1 else "auto"
    trainer = Trainer(max_epochs=2, strategy=strategy, devices=args.devices, logger=False,
                      accumulate_grad_batches=args.accumulate,
                      enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(module, loader)
    rank = trainer.strategy.rank
    Path(f"rank-{rank}.txt").write_text(f"{digest(module.generator)} {digest(module.discriminator)}\n")


if __name__ == "__main__":
    main()
