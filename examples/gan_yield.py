"""A GAN whose ``training_step`` is a generator: one ``yield`` per optimizer, the fake batch made once.

Run:  python examples/gan_yield.py [--seed N] [--epochs E] [--fast-dev-run]
      python examples/gan_yield.py --root runs/gan          # checkpoints; kill it any time, then
      python examples/gan_yield.py --root runs/gan --resume latest
      python examples/gan_yield.py --strategy ddp --devices 2    # two processes (DDP), also with --root

The target is a ring of eight 2-D Gaussians (the classic toy GAN benchmark).
A generator maps noise to points; a discriminator tells real points from
generated ones.  Both are trained on every batch, generator first:

    fake = G(z)                                  # once per batch
    yield g_loss(D(fake))                        # the Trainer: backward, step G, zero G's grads
    yield d_loss(D(real), D(fake.detach()))      # the Trainer: backward, step D, zero D's grads

Because ``training_step`` is a Python generator, the work before the first
``yield`` (sampling ``z``, running ``G``) is shared by both optimizers.  The
Trainer runs it with its ``GeneratorLoop``: one ADVANCE per ``yield``, and while
an optimizer's loss is backpropagated the other model's parameters are frozen
(``toggle_optimizer``), so ``g_loss.backward()`` leaves no gradient on ``D``.

Quality is measured on 2,000 generated points: ``mode_dist`` is the mean
distance from a point to its nearest ring centre (the ring has radius 2, so
an untrained generator, whose points sit near the origin, scores about 2);
``modes`` counts the centres that attract at least 2% of the points.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.script import add_run_flags, save_final, trainer_kwargs
from statemachine_trainer.trainer import seed_everything

NUM_MODES, RADIUS, MODE_STD = 8, 2.0, 0.05
MODES = torch.tensor([[RADIUS * math.cos(2 * math.pi * k / NUM_MODES), RADIUS * math.sin(2 * math.pi * k / NUM_MODES)]
                      for k in range(NUM_MODES)])


# -- data and quality ------------------------------------------------------------------------------
def ring_of_gaussians(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points from the 8-mode ring (from torch's global RNG unless ``generator`` is given)."""
    which = torch.randint(0, NUM_MODES, (n,), generator=generator)
    return MODES[which] + MODE_STD * torch.randn(n, 2, generator=generator)


def mode_quality(points: torch.Tensor) -> tuple[float, int]:
    """(mean distance to the nearest mode, number of modes holding >= 2% of the points)."""
    distances = torch.cdist(points, MODES)  # (n, NUM_MODES)
    nearest, which = distances.min(dim=1)
    # A point counts for a mode only if it lies on it (within 3 std), so a blob between modes covers nothing.
    on_mode = which[nearest < 3 * MODE_STD]
    counts = torch.bincount(on_mode, minlength=NUM_MODES)
    return nearest.mean().item(), int((counts >= 0.02 * len(points)).sum())


# -- the models ----------------------------------------------------------------------------------
def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, outputs))


class GAN(TrainingModule):
    """Generator + discriminator; ``configure_optimizers`` returns [G's optimizer, D's optimizer]."""

    def __init__(self, latent_dim: int = 8, hidden: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.latent_dim, self.lr = latent_dim, lr
        self.generator = mlp(latent_dim, hidden, 2)
        self.discriminator = mlp(2, hidden, 1)  # one logit: "this point is real"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int):
        (real,) = batch
        z = torch.randn(len(real), self.latent_dim, device=real.device)
        fake = self.generator(z)  # shared by both losses: computed once per batch

        # While this loss is backpropagated, D's parameters are frozen (toggle_optimizer), so only G gets gradients.
        g_loss = self.generator_loss(fake)
        self.log("g_loss", g_loss, prog_bar=True)
        yield g_loss  # the Trainer runs backward and steps G's optimizer here, then resumes us

        # detach(): D's loss must not reach back into G's graph.
        d_loss = self.discriminator_loss(real, fake.detach())
        self.log("d_loss", d_loss, prog_bar=True)
        yield d_loss  # ... and D's optimizer here

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Make D call the fakes real: the "non-saturating" loss, whose gradient stays strong while D wins."""
        logits = self.discriminator(fake)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Real points -> 1, generated points -> 0."""
        on_real, on_fake = self.discriminator(real), self.discriminator(fake)
        return (F.binary_cross_entropy_with_logits(on_real, torch.ones_like(on_real))
                + F.binary_cross_entropy_with_logits(on_fake, torch.zeros_like(on_fake)))

    def configure_optimizers(self):
        # beta1 = 0.5: the usual GAN choice, less momentum to chase a moving opponent.
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.5, 0.999))
        return [opt_g, opt_d]  # order matters: the first yield goes to the first optimizer

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``n`` generated points from noise of a private RNG, so evaluating never shifts training's RNG."""
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        return self.generator(z)


def build(seed: int, num_points: int = 8192, batch_size: int = 256,
          module_class: Callable[[], GAN] = GAN) -> tuple[GAN, ResumableLoader]:
    """Seed everything, then make the data, the module and the loader -- always in this order."""
    seed_everything(seed)
    data = ring_of_gaussians(num_points)
    module = module_class()
    # Each epoch's order is a function of (seed, epoch) and the position is one integer, so a run killed in
    # the middle of an epoch resumes at the exact batch.  rngs=(): no augmentation, nothing to seed per batch.
    loader = DataLoader(Points(data), batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=whole_batch)
    return module, ResumableLoader(loader, seed=seed, rngs=())


class Points(TensorDataset):
    """Fetches a batch with one tensor index (``points[indices]``) instead of ``batch_size`` item reads."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor]]:
        return [(self.tensors[0][indices],)]


def whole_batch(items: list[tuple[torch.Tensor]]) -> tuple[torch.Tensor]:
    """The collate for :class:`Points`: its one item already is the batch."""
    return items[0]


def parse_args(doc: str, epochs: int, extra: tuple[tuple[str, type, Any, str], ...] = ()) -> argparse.Namespace:
    """The flags every GAN example takes, plus ``extra`` ones given as (flag, type, default, help)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=epochs, help=f"epochs of 32 batches (default {epochs})")
    add_run_flags(parser)
    parser.add_argument("--strategy", default="auto", choices=("auto", "ddp"), help="'ddp': one process per device")
    parser.add_argument("--devices", type=int, default=1, help="processes to start with --strategy ddp")
    for flag, kind, default, text in extra:
        parser.add_argument(flag, type=kind, default=default, help=text)
    return parser.parse_args()


def train_and_report(module: GAN, loader: ResumableLoader, args: argparse.Namespace) -> None:
    """Fit, then print the quality of the generator before and after (shared with manual_gan.py)."""
    torch.set_num_threads(1)  # tiny models: a second thread costs more in sync than it gains
    before = mode_quality(module.sample(2000, seed=args.seed + 1))
    # Under DDP each rank draws its own noise (the Trainer seeds seed + rank); one process keeps build()'s RNG.
    # Without --root, a toy run: nothing is written to disk.
    trainer = Trainer(max_epochs=args.epochs, strategy=args.strategy, devices=args.devices,
                      **trainer_kwargs(args, seed=args.seed if args.strategy == "ddp" else None))
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=args.resume)
    seconds = time.perf_counter() - start
    save_final(trainer, args)  # ROOT/final.ckpt: what `statemachine-trainer diff` compares
    if not trainer.is_global_zero:
        return  # under DDP every rank holds the same generator: one report
    after = mode_quality(module.sample(2000, seed=args.seed + 1))  # the same noise as `before`
    metrics = trainer.callback_metrics
    print(f"{trainer.global_step} optimizer steps in {seconds:.1f}s; last g_loss {float(metrics['g_loss']):.3f}, "
          f"d_loss {float(metrics['d_loss']):.3f}")
    print(f"untrained generator: mode_dist={before[0]:.3f} modes={before[1]}/{NUM_MODES}")
    print(f"trained generator:   mode_dist={after[0]:.3f} modes={after[1]}/{NUM_MODES}")
    print(f"mode_dist={after[0]:.4f} modes={after[1]} untrained_mode_dist={before[0]:.4f}")


def main() -> None:
    args = parse_args(__doc__, epochs=30)
    module, loader = build(args.seed)
    train_and_report(module, loader, args)


if __name__ == "__main__":
    main()
