"""The optimization step as table rows: drawn, resumable from every boundary, and the README's hook order.

* the fit tree's diagram shows where backward and optimizer.step happen;
* a checkpoint requested at *every* transition boundary of a run (inside
  steps too) is written at the next boundary where every loop is
  checkpointable, never inside a step's rows, and resuming from each one
  ends bit-identical to the uninterrupted run -- automatic with accumulation,
  two optimizers, and a generator step;
* a request between training_step and backward waits for that point;
* toggled parameters are thawed when a hook raises;
* README's "Hook order" block agrees with a recorded run and with the table.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Trainer, TrainingModule
from statemachine_trainer._boundary import BoundaryWriter
from statemachine_trainer._hook_spec import LIFECYCLE
from statemachine_trainer._hooks import HOOK_NAMES
from statemachine_trainer.checkpoint import first_difference, load_checkpoint_dir
from statemachine_trainer.cli import main as cli_main
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.loops import FitLoop
from statemachine_trainer.loops.optimization import OPTIMIZER_TABLE, GeneratorStepError
from statemachine_trainer.machine.diagram import to_dot, to_mermaid

ROOT = Path(__file__).resolve().parent.parent
BATCH_LOOP = "fit_loop.epoch_loop.batch_loop"
#: What the resumed run must reproduce (callbacks differ: only one run has the requester).
COMPARED = ("module", "optimizers", "schedulers", "precision", "grads", "metrics", "results", "rng", "loops", "data")


# -- (a) the diagram ---------------------------------------------------------------------------------------
def test_the_fit_tree_diagram_shows_backward_and_the_optimizer_step():
    mermaid, dot = to_mermaid(FitLoop()), to_dot(FitLoop())
    for text in (mermaid, dot):
        assert "backward / on_before_backward, backward, on_after_backward" in text
        assert ("step / on_before_optimizer_step, configure_gradient_clipping, optimizer_step, on_before_zero_grad, "
                "optimizer_zero_grad") in text
        assert "[window_open]" in text and "[needs_closure and not window_open]" in text
    assert "optimizer_loop__BACKWARD --> fit_loop__epoch_loop__batch_loop__optimizer_loop__STEP" in mermaid
    assert "generator_loop__STEP" in mermaid  # the generator loop shares the rows


def test_the_diagram_command_draws_the_step(capsys):
    assert cli_main(["diagram", "statemachine_trainer.loops:FitLoop", "--tree"]) == 0
    out = capsys.readouterr().out
    assert "optimizer_step" in out and "on_after_backward" in out and "closure_step" in out


# -- (b) resume from every boundary -----------------------------------------------------------------------
def data(n: int = 80, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x.sum(1) > 0).long())


class Accumulating(TrainingModule):
    """One optimizer, dropout, a step-interval schedule, an epoch-mean log."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class TwoOptimizers(TrainingModule):
    """optimizer_idx steps; a step-interval schedule, so whether a batch stepped must survive a mid-batch resume."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.Linear(8, 2))
        self.b = nn.Linear(6, 2)

    def training_step(self, batch, batch_idx, optimizer_idx):
        x, y = batch
        head = self.a if optimizer_idx == 0 else self.b
        shared = self.a(x).detach().sum(1, keepdim=True) if optimizer_idx == 1 else 0
        return nn.functional.cross_entropy(head(x) + shared, y)

    def configure_optimizers(self):
        opt_a = torch.optim.Adam(self.a.parameters(), lr=1e-2)
        opt_b = torch.optim.SGD(self.b.parameters(), lr=0.1)
        schedule = torch.optim.lr_scheduler.StepLR(opt_b, step_size=1, gamma=0.8)
        return [{"optimizer": opt_a}, {"optimizer": opt_b, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}]


class Generator(TwoOptimizers):
    """The step yields one loss per optimizer; the shared work before the first yield runs once per batch."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        features = self.a[0](x)  # shared: made with the weights from before either optimizer stepped
        yield nn.functional.cross_entropy(self.a[2](self.a[1](features)), y)
        yield nn.functional.cross_entropy(self.b(x) + features.detach().mean(1, keepdim=True), y)


class StepHooks(Accumulating):
    """Every overridable step hook overridden: the closure row (optimizer_step), and the rows' overrides."""

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        optimizer.step(closure=optimizer_closure)
        if self.trainer.global_step < 3:  # Lightning's docs' warmup: param_groups are optimizer state
            for group in optimizer.param_groups:
                group["lr"] = 0.1 * (self.trainer.global_step + 1) / 3

    def backward(self, loss, *args, **kwargs):
        (0.5 * loss).backward(*args, **kwargs)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad(set_to_none=False)  # zero tensors, not None: they cross boundaries and checkpoints

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val=0.05, gradient_clip_algorithm="value")


SCENARIOS = {
    "accumulate": (Accumulating, {"accumulate_grad_batches": 3, "gradient_clip_val": 0.5}, "optimizer_loop"),
    "step-hooks": (StepHooks, {"accumulate_grad_batches": 3}, "optimizer_loop"),
    "two-optimizers": (TwoOptimizers, {"accumulate_grad_batches": 2}, "optimizer_loop"),
    "generator": (Generator, {}, "generator_loop"),
}


def fit(cls, flags, callbacks=(), ckpt_path=None) -> Trainer:
    trainer = Trainer(max_epochs=2, seed=3, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                      num_sanity_val_steps=0, callbacks=list(callbacks), **flags)
    trainer.fit(cls(), ResumableLoader(DataLoader(data(), batch_size=16, shuffle=True), seed=4), ckpt_path=ckpt_path)
    return trainer


def final_state(trainer: Trainer) -> dict:
    state = trainer.capture_state()
    return {key: state[key] for key in COMPARED}


#: The loops whose boundaries fall inside a training batch.
IN_A_BATCH = ("batch_loop", "optimizer_loop", "generator_loop", "manual_loop")


def request_at_every_boundary(monkeypatch, folder: Path) -> list[tuple[int, int, Path]]:
    """Ask for a checkpoint at every boundary inside a batch (while none is pending).

    Returns ``(asked at, written at, path)`` per checkpoint, counting every boundary of the tree.
    """
    original, original_watch = BoundaryWriter._at_boundary, BoundaryWriter.watch
    written: list[tuple[int, int, Path]] = []
    count, pending = [0], [None]

    def at_boundary(self, loop):
        count[0] += 1
        if pending[0] is None and loop.name in IN_A_BATCH:
            asked, path = count[0], folder / f"b{count[0]}.ckpt"
            pending[0] = path
            self.request(path, lambda p, asked=asked: (written.append((asked, count[0], p)),
                                                       pending.__setitem__(0, None)))
        original(self, loop)
        self._observe()  # the writer stops observing once idle: keep it on, to count every boundary

    @contextmanager
    def watch(self, root, epoch_loop):
        with original_watch(self, root, epoch_loop):
            self._observe()  # from the first boundary on, not only once something is requested
            yield

    monkeypatch.setattr(BoundaryWriter, "_at_boundary", at_boundary)
    monkeypatch.setattr(BoundaryWriter, "watch", watch)
    return written


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_resume_from_every_boundary_is_bit_identical(tmp_path, monkeypatch, scenario):
    cls, flags, step_loop = SCENARIOS[scenario]
    written = request_at_every_boundary(monkeypatch, tmp_path)
    full = fit(cls, flags)
    expected = final_state(full)
    monkeypatch.undo()
    asked_inside_a_step = [(a, w) for a, w, _ in written if w > a]
    assert asked_inside_a_step, "no request had to wait: the test did not reach a step's inner boundaries"
    mid_batch = 0
    for asked, at, path in written:
        state, _ = load_checkpoint_dir(path)
        loop = state["loops"]["loops"][f"{BATCH_LOOP}.{step_loop}"]
        position = loop["position"]
        # Never inside a step: no loss, frozen parameters or generator frame is ever in a checkpoint.
        assert position["state"] not in ("BACKWARD", "STEP"), (asked, at, position)
        assert position["row"] is None or position["state"] == "START", (asked, at, position)
        if position["state"] == "ADVANCE" and loop["progress"]["optimizer_position"] > 0:
            mid_batch += 1  # between two optimizers' parts
        resumed = fit(cls, flags, ckpt_path=path)
        difference = first_difference(expected, final_state(resumed))
        assert difference is None, f"resumed from the checkpoint asked for at boundary {asked} (written at {at}): " \
                                   f"{difference}"
    if scenario == "two-optimizers":
        assert mid_batch > 0  # some resumes start between the two optimizers, after the first one stepped
    if scenario == "generator":
        assert mid_batch == 0  # the generator's frame cannot cross a boundary


def test_a_checkpoint_inside_an_accumulation_window_holds_the_partial_gradients(tmp_path, monkeypatch):
    written = request_at_every_boundary(monkeypatch, tmp_path)
    fit(Accumulating, {"accumulate_grad_batches": 3})
    with_grads = [p for _, _, p in written if load_checkpoint_dir(p)[0]["grads"]]
    assert with_grads  # batches 1 and 2 of each 3-batch window end with gradients waiting for the step


# -- (c) a request between training_step and backward -------------------------------------------------------
def asking_before_backward(cls: type, path: Path) -> TrainingModule:
    """``cls`` that requests a checkpoint in its first on_before_backward: the loss and its graph are in flight."""

    def on_before_backward(self, loss):
        if not self.asked:
            self.asked = True
            self.trainer.request_checkpoint(path)

    return type(f"Asking{cls.__name__}", (cls,), {"asked": False, "on_before_backward": on_before_backward})()


@pytest.mark.parametrize("cls, expected", [
    (Accumulating, ("END", 1)),  # one optimizer: written once the batch is over (its output was in flight)
    (TwoOptimizers, ("ADVANCE", 1)),  # two: written between the optimizers' parts
], ids=["one-optimizer", "two-optimizers"])
def test_a_request_between_training_step_and_backward_waits_for_a_checkpointable_boundary(tmp_path, cls, expected):
    path = tmp_path / "asked.ckpt"
    trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.fit(asking_before_backward(cls, path), DataLoader(data(), batch_size=16))
    state, _ = load_checkpoint_dir(path)
    loop = state["loops"]["loops"][f"{BATCH_LOOP}.optimizer_loop"]
    assert (loop["position"]["state"], loop["progress"]["optimizer_position"]) == expected
    assert loop["position"]["row"] is None
    assert loop["progress"]["optimizer"]["step"]["total"]["completed"] == 1  # the first optimizer has stepped
    epoch = state["loops"]["loops"]["fit_loop.epoch_loop"]
    assert epoch["progress"]["current"]["ready"] == 1  # still the first batch


# -- failure: toggles stay balanced ----------------------------------------------------------------------
class Raises(TwoOptimizers):
    def on_after_backward(self):
        raise RuntimeError("boom")


def test_a_hook_that_raises_leaves_no_parameter_frozen():
    module = Raises()
    trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(module, DataLoader(data(), batch_size=16))
    assert all(p.requires_grad for p in module.parameters())  # optimizer 0's toggle froze b; untoggled
    assert trainer.fit_loop.epoch_loop.batch_loop.optimizer_loop.state == "BACKWARD"  # the failed row's source


def test_a_generator_step_with_a_closure_optimizer_is_refused():
    class WithLBFGS(Generator):
        def configure_optimizers(self):
            return [torch.optim.LBFGS(self.a.parameters()), torch.optim.SGD(self.b.parameters(), lr=0.1)]

    trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    with pytest.raises(GeneratorStepError, match="LBFGS evaluates the loss several times"):
        trainer.fit(WithLBFGS(), DataLoader(data(), batch_size=16))


# -- README's hook order ------------------------------------------------------------------------------
STEP_ACTIONS = ("toggle", "untoggle", "backward", "configure_gradient_clipping", "optimizer_step",
                "optimizer_zero_grad")
SCHEDULERS = ("step-interval schedulers", "epoch-interval schedulers")
VOCABULARY = {*HOOK_NAMES, *LIFECYCLE, "configure_optimizers", "training_step", "validation_step", *STEP_ACTIONS, *SCHEDULERS}


def readme_hook_order() -> list[list[str]]:
    """The README block's lines, each as the hook/action names it lists (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("### Hook order", 1)[1].split("```\n", 2)[1]
    lines = []
    for line in block.splitlines():
        code = line.split("#", 1)[0]
        found = [(m.start(), m.group()) for phrase in SCHEDULERS for m in re.finditer(re.escape(phrase), code)]
        found += [(m.start(), m.group()) for m in re.finditer(r"[A-Za-z_]\w*", code) if m.group() in VOCABULARY]
        lines.append([name for _, name in sorted(found)])
    return lines


def first_occurrences(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


class Recorded(TrainingModule):
    """Two optimizers (so toggles happen), one scheduler per interval, validation."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls
        self.a, self.b = nn.Linear(6, 2), nn.Linear(6, 2)

    def training_step(self, batch, batch_idx, optimizer_idx):
        self.calls.append("training_step")
        x, y = batch
        return nn.functional.cross_entropy((self.a if optimizer_idx == 0 else self.b)(x), y)

    def validation_step(self, batch, batch_idx):
        self.calls.append("validation_step")
        self.log("val_loss", nn.functional.cross_entropy(self.a(batch[0]), batch[1]))

    def configure_optimizers(self):
        self.calls.append("configure_optimizers")
        calls = self.calls

        class SGD(torch.optim.SGD):
            def step(self, closure=None):
                calls.append("optimizer_step")
                return super().step(closure)

            def zero_grad(self, set_to_none=True):
                calls.append("optimizer_zero_grad")
                super().zero_grad(set_to_none)

        def schedule(opt, name):
            class Recording(torch.optim.lr_scheduler.StepLR):
                def step(self, *args):
                    if getattr(self, "ready", False):
                        calls.append(name)
                    super().step(*args)
            scheduler = Recording(opt, step_size=1)
            scheduler.ready = True  # the step inside the constructor is not the run's
            return scheduler

        opt_a, opt_b = SGD(self.a.parameters(), lr=0.1), SGD(self.b.parameters(), lr=0.1)
        return [{"optimizer": opt_a, "lr_scheduler": {"scheduler": schedule(opt_a, SCHEDULERS[0]), "interval": "step"}},
                {"optimizer": opt_b, "lr_scheduler": schedule(opt_b, SCHEDULERS[1])}]

    def toggle_optimizer(self, optimizer):
        self.calls.append("toggle")
        super().toggle_optimizer(optimizer)

    def untoggle_optimizer(self, optimizer):
        self.calls.append("untoggle")
        super().untoggle_optimizer(optimizer)


def _recorder(name: str):
    default = getattr(TrainingModule, name)

    def hook(self, *args):
        self.calls.append(name)
        return default(self, *args)  # a no-op stub, or Lightning's default (return/move the batch, eval/train)
    return hook


for _name in (*HOOK_NAMES, *LIFECYCLE):
    setattr(Recorded, _name, _recorder(_name))


def test_readme_hook_order_is_a_recorded_run(monkeypatch):
    calls: list[str] = []
    backward, clip = torch.Tensor.backward, torch.nn.utils.clip_grad_norm_

    def recorded_backward(self, *args, **kwargs):
        calls.append("backward")
        return backward(self, *args, **kwargs)

    def recorded_clip(*args, **kwargs):
        calls.append("configure_gradient_clipping")
        return clip(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", recorded_backward)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded_clip)
    trainer = Trainer(max_epochs=1, num_sanity_val_steps=1, gradient_clip_val=1.0, enable_progress_bar=False,
                      logger=False, enable_checkpointing=False)
    trainer.fit(Recorded(calls), DataLoader(data(32), batch_size=16), DataLoader(data(16, seed=1), batch_size=16))
    readme = [name for line in readme_hook_order() for name in line]
    assert first_occurrences(readme) == first_occurrences(calls)


def test_readme_hook_order_lists_the_specs_module_hooks_in_order():
    import json

    spec = json.loads((ROOT / "specs" / "module_hook_order.json").read_text())["scenarios"]["fit"]
    readme = [name for line in readme_hook_order() for name in line if name in set(spec)]
    assert first_occurrences(readme) == first_occurrences(spec)


def test_readme_step_lines_are_runs_of_the_optimizer_tables_rows():
    table_hooks = set(OPTIMIZER_TABLE.hook_names)
    step_lines = [line for line in readme_hook_order() if line and set(line) <= table_hooks]
    assert len(step_lines) >= 4  # toggle/training_step, the backward, the step, untoggle
    for line in step_lines:
        assert any(_contains_run(row.hooks, line) for row in OPTIMIZER_TABLE.rows), line


def _contains_run(hooks: tuple[str, ...], run: list[str]) -> bool:
    return any(list(hooks[i:i + len(run)]) == run for i in range(len(hooks) - len(run) + 1))
