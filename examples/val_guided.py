"""A custom optimization loop, as a table: scale each step by how a held-out "guide" split responds.

Run:  python examples/val_guided.py [--seed N] [--epochs E] [--probe-every K] [--fast-dev-run] [--diagram]
      python examples/val_guided.py --root runs/vg          # checkpoints; kill it any time, then
      python examples/val_guided.py --root runs/vg --resume latest

The task is scikit-learn's bundled 8x8 digits (no download), split three ways:
train (gradients), guide (steers the step size) and validation (reported,
never used for training decisions).  The optimization step of the Trainer's
loop tree is swapped for ``ValGuidedStep``, whose table is::

    START     --run-->                   BACKWARD   / reset
    BACKWARD  --advance-->               PROBE_VAL  / backward                    # training loss, gradients
    PROBE_VAL --advance [probe_due]-->   STEP       / probe_val, scale_gradients  # guide loss under no_grad
    PROBE_VAL --advance-->               STEP       / scale_gradients             # between probes: last trust
    STEP      --advance-->               END        / step, on_run_end            # optimizer.step, zero_grad

A state names the phase that runs next, so a checkpoint taken "in PROBE_VAL"
holds gradients that are computed but not yet scaled.  The rule that scales
them is a "bold driver" driven by the guide split instead of the training
loss: the gradients are multiplied by a trust factor that is multiplied by 1.2
after a step that lowered the guide loss and divided by 1.2 after one that
raised it, within [0.1, 4].  Reciprocal factors make pure noise a random walk
rather than a drift.  With SGD that is an adaptive learning rate; it is a
demonstration of the loop, not a claim that it beats a tuned schedule.  (With Adam it would do
almost nothing: Adam divides the scale of the gradient out.)  The trust factor
and the last guide loss are the loop's ``fields``: part of the state set, so
they are checkpointed and restored with everything else.

The loop goes into the Trainer's tree with
``trainer.fit_loop.epoch_loop.batch_loop.connect(optimizer_loop=ValGuidedStep(...))``;
``--diagram`` prints the whole tree, with the new loop inside it, as Mermaid.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import END, START, ConfigError, Row, Table, Trainer, TrainingModule
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.loops import TrainerLoop
from statemachine_trainer.machine.diagram import to_mermaid
from statemachine_trainer.script import add_run_flags, save_final, trainer_kwargs
from statemachine_trainer.state import OptimizationProgress
from statemachine_trainer.trainer import seed_everything

# --- loop ---
VAL_GUIDED_TABLE = Table(
    name="ValGuidedStep",
    states=(START, "BACKWARD", "PROBE_VAL", "STEP", END),
    rows=(
        Row("run", START, "BACKWARD", hooks="reset"),
        Row("advance", "BACKWARD", "PROBE_VAL", hooks="backward"),
        Row("advance", "PROBE_VAL", "STEP", conditions="probe_due", hooks=("probe_val", "scale_gradients")),
        Row("advance", "PROBE_VAL", "STEP", hooks="scale_gradients"),
        Row("advance", "STEP", END, hooks=("step", "on_run_end")),
    ),
)


@attrs.define
class GuideFields:
    trust: float = 1.0  # factor the gradients are multiplied by before each step; min_trust <= trust <= max_trust
    last_probe: float | None = None  # guide-split loss at the latest probe; None before the first probe
    probes: int = 0  # guide probes taken in this fit; probes <= optimizer steps + 1


class ValGuidedStep(TrainerLoop):
    """One optimizer step whose size is steered by the loss on a held-out guide batch."""

    table = VAL_GUIDED_TABLE
    # The batch loop sums its optimization loops' step counters into trainer.global_step: keep the same tracker.
    progress_class = OptimizationProgress
    fields_class = GuideFields

    def __init__(self, guide_batch: tuple[torch.Tensor, torch.Tensor],
                 loss_fn: Callable[[nn.Module, Any], torch.Tensor], probe_every: int = 1,
                 factor: float = 1.2, min_trust: float = 0.1, max_trust: float = 4.0) -> None:
        super().__init__()
        self.guide_batch, self.loss_fn, self.probe_every = guide_batch, loss_fn, probe_every
        self.factor, self.min_trust, self.max_trust = factor, min_trust, max_trust
        self._outputs: Any = None  # training_step's output for this batch; handed to on_train_batch_end

    def on_attach(self) -> None:
        # Checked once per fit, before the first batch, instead of failing somewhere inside the step.
        run = self.context
        if not run.module.automatic_optimization or len(run.optimization.optimizers) != 1:
            raise ConfigError("ValGuidedStep steps exactly one optimizer in automatic optimization; return one "
                              "optimizer from configure_optimizers() and keep automatic_optimization = True.")
        if run.config.accumulate_grad_batches != 1:
            raise ConfigError("ValGuidedStep steps on every batch; use accumulate_grad_batches=1.")

    # -- conditions ------------------------------------------------------------------------
    @property
    def probe_due(self) -> bool:
        return self.progress.optimizer_steps % self.probe_every == 0

    # -- hooks, in table order --------------------------------------------------------------
    def reset(self) -> None:
        self._outputs = None  # per batch only: trust and last_probe carry over from step to step

    def backward(self, batch: Any, batch_idx: int) -> None:
        optimization = self.context.optimization
        with optimization.precision.autocast():
            self._outputs = optimization.call_training_step(batch, batch_idx, None)
        loss = self._outputs["loss"] if isinstance(self._outputs, dict) else self._outputs
        if not isinstance(loss, torch.Tensor):
            raise TypeError("ValGuidedStep needs training_step to return the loss (or {'loss': loss}); "
                            f"it returned {type(self._outputs).__name__}.")
        optimization.backward(loss)  # on_before_backward, loss.backward(), on_after_backward

    def probe_val(self) -> None:
        module = self.context.module
        was_training = module.training
        module.eval()  # the guide loss must not depend on dropout's random mask (nor use up RNG)
        with torch.no_grad():  # a probe, not a training signal: no graph, no gradients
            loss = float(self.loss_fn(module, self.guide_batch))  # float(): one host sync per probe, on purpose
        module.train(was_training)
        fields = self.fields
        if fields.last_probe is not None:
            # The guide loss judges the previous step: it went down -> trust the gradients more, else less.
            change = self.factor if loss < fields.last_probe else 1 / self.factor
            fields.trust = min(self.max_trust, max(self.min_trust, fields.trust * change))
        fields.last_probe = loss
        fields.probes += 1

    def scale_gradients(self) -> None:
        trust = self.fields.trust
        for param in self.context.module.parameters():
            if param.grad is not None:
                param.grad.mul_(trust)

    def step(self) -> None:
        optimization = self.context.optimization
        # on_before_optimizer_step, clipping (after our scaling, so gradient_clip_val bounds the step
        # actually taken), optimizer.step(), on_before_zero_grad, zero_grad -- and the step counters.
        optimization.step_optimizer(optimization.optimizers[0], self.progress)

    def on_run_end(self) -> Any:
        return self._outputs  # run()'s return value: the batch loop passes it to on_train_batch_end
# --- loop ---


# -- the model and the data -----------------------------------------------------------------------
def cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


class DigitsClassifier(TrainingModule):
    def __init__(self, hidden: int = 64, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = cross_entropy(self, batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)  # epoch mean, weighted by batch size
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Plain SGD on purpose: the trust factor scales the step only if the optimizer does not normalise it away.
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def digit_splits(seed: int, guide: int = 300, val: int = 400) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """train / guide / val splits of the 1,797 digits, shuffled by ``seed``."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel values are 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return {"guide": (x[:guide], y[:guide]), "val": (x[guide:guide + val], y[guide:guide + val]),
            "train": (x[guide + val:], y[guide + val:])}


def build(seed: int, epochs: int, probe_every: int = 1, fast_dev_run: bool = False,
          trainer_args: dict[str, Any] | None = None) -> tuple[Trainer, DigitsClassifier, ResumableLoader, DataLoader]:
    """Seed, then make the data, the module and a Trainer whose optimization loop is ValGuidedStep."""
    seed_everything(seed)
    splits = digit_splits(seed)
    module = DigitsClassifier()
    # ResumableLoader: a seeded shuffle whose position is in every checkpoint, so a mid-epoch resume is exact.
    train = ResumableLoader(DataLoader(TensorDataset(*splits["train"]), batch_size=64, shuffle=True), seed=seed)
    val = DataLoader(TensorDataset(*splits["val"]), batch_size=200)
    # Without --root a toy run: no logs or checkpoints to keep, so nothing is written to disk.
    trainer_args = {"fast_dev_run": 2 if fast_dev_run else False, "logger": False, "enable_checkpointing": False,
                    **(trainer_args or {})}
    trainer = Trainer(max_epochs=epochs, **trainer_args)
    trainer.fit_loop.epoch_loop.batch_loop.connect(
        optimizer_loop=ValGuidedStep(splits["guide"], cross_entropy, probe_every=probe_every))
    return trainer, module, train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--probe-every", type=int, default=1, help="probe the guide split every K steps")
    parser.add_argument("--diagram", action="store_true", help="print the loop tree as Mermaid and exit")
    add_run_flags(parser, checkpoint_every=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny model: a second thread costs more in sync than it gains

    # seed=None: build() seeds once, before the model exists; the Trainer keeps that stream going.
    trainer, module, train, val = build(args.seed, args.epochs, args.probe_every, args.fast_dev_run,
                                        trainer_kwargs(args, seed=None))
    if args.diagram:
        print(to_mermaid(trainer.fit_loop))
        return
    before = trainer.validate(module, val)[0]
    start = time.perf_counter()
    trainer.fit(module, train, val, ckpt_path=args.resume)
    seconds = time.perf_counter() - start
    save_final(trainer, args)
    after = trainer.validate(module, val)[0]
    guide = trainer.fit_loop.epoch_loop.batch_loop.optimizer_loop.fields
    print(f"{trainer.global_step} steps in {seconds:.1f}s; {guide.probes} guide probes, final trust factor "
          f"{guide.trust:.3f}, last guide loss {guide.last_probe:.4f}")
    print(f"before training: val_loss={before['val_loss']:.4f} val_acc={before['val_acc']:.4f}")
    print(f"after training:  val_loss={after['val_loss']:.4f} val_acc={after['val_acc']:.4f}")
    print(f"val_acc={after['val_acc']:.4f} val_loss={after['val_loss']:.4f}")


if __name__ == "__main__":
    main()
