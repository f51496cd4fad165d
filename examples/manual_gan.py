"""The GAN of gan_yield.py with manual optimization: the step decides what steps, and when.

Run:  python examples/manual_gan.py [--seed N] [--epochs E] [--g-every K] [--fast-dev-run]
      python examples/manual_gan.py --root runs/manual_gan [--resume latest]   # checkpoints, exact resume
      python examples/manual_gan.py --strategy ddp --devices 2    # two processes (DDP), also with --root

With ``automatic_optimization = False`` the Trainer calls ``training_step`` once
per batch (its ``ManualLoop``) and does nothing else: the step itself runs
backward (``self.manual_backward``), clips, and steps the optimizers it gets
from ``self.optimizers()``.  That is what makes uneven schedules easy:

* the discriminator steps on every batch, with its gradient norm clipped;
* the generator steps on every ``--g-every``-th batch (default 2), against
  the discriminator that has just been updated;
* both learning rates decay per epoch, by schedulers this module steps itself
  (``self.lr_schedulers()``; in manual mode the Trainer leaves them alone).

``toggle_optimizer(opt)`` freezes every parameter ``opt`` does not own, so a
backward pass writes gradients only where the next ``opt.step()`` reads them.
The data, the models, the losses and the quality report are imported from
gan_yield.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# Make `import gan_yield` work however this script is started (repo root, examples/, anywhere).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gan_yield import GAN, build, parse_args, train_and_report


class ManualGAN(GAN):
    automatic_optimization = False  # the Trainer only calls training_step; we do backward and steps

    def __init__(self, g_every: int = 2, d_max_grad_norm: float = 1.0, lr_decay: float = 0.97, **kwargs) -> None:
        super().__init__(**kwargs)
        self.g_every, self.d_max_grad_norm, self.lr_decay = g_every, d_max_grad_norm, lr_decay

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()  # wrappers: step() fires on_before_optimizer_step and counts
        (real,) = batch
        z = torch.randn(len(real), self.latent_dim, device=real.device)
        fake = self.generator(z)  # once per batch; the generator's update below reuses its graph

        # Discriminator, every batch.  fake.detach(): D's loss must not reach back into G's graph.
        self.toggle_optimizer(opt_d)
        d_loss = self.discriminator_loss(real, fake.detach())
        self.manual_backward(d_loss)
        # Clipping D keeps it from winning outright in one step, which would leave G with flat gradients.
        self.clip_gradients(opt_d, gradient_clip_val=self.d_max_grad_norm, gradient_clip_algorithm="norm")
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.log("d_loss", d_loss, prog_bar=True)

        # Generator, every g_every-th batch, scored by the discriminator just updated above.
        if (batch_idx + 1) % self.g_every == 0:
            self.toggle_optimizer(opt_g)  # D frozen: g_loss's backward gives gradients to G only
            g_loss = self.generator_loss(fake)
            self.manual_backward(g_loss)
            opt_g.step()
            opt_g.zero_grad()
            self.untoggle_optimizer(opt_g)
            self.log("g_loss", g_loss, prog_bar=True)

    def configure_optimizers(self):
        optimizers = super().configure_optimizers()  # [G's Adam, D's Adam]
        schedulers = [torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.lr_decay) for opt in optimizers]
        return optimizers, schedulers

    def on_train_epoch_end(self) -> None:
        # Manual mode: stepping schedulers is ours to do, like everything else about optimization.
        for scheduler in self.lr_schedulers():
            scheduler.step()


def main() -> None:
    args = parse_args(__doc__, epochs=30, extra=(("--g-every", int, 2, "the generator steps on every K-th batch"),))
    module, loader = build(args.seed, module_class=lambda: ManualGAN(g_every=args.g_every))
    train_and_report(module, loader, args)


if __name__ == "__main__":
    main()
