"""A training loop defined as a transition table, interrupted mid-run and resumed exactly.

Run:  python examples/table_loop.py [--seed N] [--interrupt-at K] [--diagram]

The loop fits a small regression model in two phases -- WARMUP (rising
learning rate) then TRAIN (until the loss is low enough or the step budget is
spent) -- and the phases are states of its table, not flags in its code.  The
script trains once without interruption, then again with an interruption at
transition boundary K, resumes from the saved state in a fresh process-like
setup (new model, new optimizer, new loop), and checks that both runs end with
bit-identical parameters.
"""

from __future__ import annotations

import argparse
import json

import attrs
import torch

from statemachine_trainer import END, START, Loop, Row, Table
from statemachine_trainer.machine.diagram import to_mermaid

# --- loop ---
PHASED_TABLE = Table(
    name="PhasedFit",
    states=(START, "WARMUP", "TRAIN", END),
    rows=(
        Row("run", START, "WARMUP", hooks="reset"),
        Row("step", "WARMUP", "TRAIN", conditions="warmed_up"),
        Row("step", "WARMUP", "WARMUP", hooks=("set_lr", "train_step")),
        Row("step", "TRAIN", END, conditions="converged", hooks="report"),
        Row("step", "TRAIN", END, conditions="out_of_budget", hooks="report"),
        Row("step", "TRAIN", "TRAIN", hooks="train_step"),
    ),
)


@attrs.define
class PhasedFields:
    step: int = 0  # optimizer steps taken so far; 0 <= step <= max_steps
    last_loss: float | None = None  # loss of the latest step; None before the first


class PhasedFit(Loop):
    table = PHASED_TABLE
    fields_class = PhasedFields

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: tuple[torch.Tensor, ...],
                 warmup_steps: int = 20, max_steps: int = 400, target_loss: float = 1e-3) -> None:
        super().__init__()
        self.model, self.optimizer, self.data = model, optimizer, data
        self.warmup_steps, self.max_steps, self.target_loss = warmup_steps, max_steps, target_loss
        self.base_lr = optimizer.param_groups[0]["lr"]

    @property
    def warmed_up(self) -> bool:
        return self.fields.step >= self.warmup_steps

    @property
    def converged(self) -> bool:
        return self.fields.last_loss is not None and self.fields.last_loss < self.target_loss

    @property
    def out_of_budget(self) -> bool:
        return self.fields.step >= self.max_steps

    def reset(self) -> None:
        self.fields = PhasedFields()

    def set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * (self.fields.step + 1) / self.warmup_steps

    def train_step(self) -> None:
        x, y = self.data
        index = torch.randint(0, len(x), (32,))  # random minibatch: the RNG state must be resumed too
        loss = torch.nn.functional.mse_loss(self.model(x[index]), y[index])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.fields.step += 1
        self.fields.last_loss = loss.item()

    def report(self) -> float | None:
        return self.fields.last_loss
# --- loop ---


def build(seed: int) -> PhasedFit:
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.01 * torch.randn(256, 1)
    model = torch.nn.Linear(8, 1)
    return PhasedFit(model, torch.optim.SGD(model.parameters(), lr=0.05), (x, y))


class Interrupted(Exception):
    """Stands in for a crash: raised by the observer at a chosen transition boundary."""


def snapshot(loop: PhasedFit) -> dict:
    """Everything that decides the rest of the run (issue 5 turns this into a checkpoint file)."""
    return {"loops": json.loads(json.dumps(loop.state_dict())), "model": loop.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(), "rng": torch.get_rng_state()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interrupt-at", type=int, default=37, help="transition boundary to interrupt at")
    parser.add_argument("--diagram", action="store_true", help="print the table as Mermaid and exit")
    args = parser.parse_args()
    if args.diagram:
        print(to_mermaid(PhasedFit))
        return

    reference = build(args.seed)
    final_loss = reference.run()
    print(f"uninterrupted: {reference.fields.step} steps, final loss {final_loss:.6f}")

    crashed, saved, boundaries = build(args.seed), {}, [0]

    def observer(loop: Loop) -> None:
        boundaries[0] += 1
        saved.update(snapshot(crashed))
        if boundaries[0] == args.interrupt_at:
            raise Interrupted

    crashed.observe(observer)
    try:
        crashed.run()
    except Interrupted:
        print(f"interrupted at transition boundary {args.interrupt_at}")

    resumed = build(args.seed + 1)  # different seed: everything that matters must come from the snapshot
    resumed.load_state_dict(saved["loops"])
    print(f"resuming from {resumed.position} ({resumed.state} until run() is called)")
    resumed.model.load_state_dict(saved["model"])
    resumed.optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    resumed.data = reference.data
    resumed.run()
    same = all(torch.equal(a, b) for a, b in zip(reference.model.parameters(), resumed.model.parameters()))
    print(f"resumed run bit-identical to uninterrupted: {same}")
    print(f"final_loss={final_loss:.6f}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
