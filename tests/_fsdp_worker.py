"""strategy="fsdp" against a hand-written FSDP2 loop, bit for bit (run by tests/test_fsdp.py under torchrun).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_fsdp_worker.py VARIANT...

For each variant the Trainer trains a fresh module, then a loop written here with torch's own calls
(``fully_shard``, ``set_requires_gradient_sync``, ``clip_grad_norm_``, ``requires_grad_``) trains another copy --
the same initial weights, the same wrapping, the same data shard per rank.  Both full state dicts are gathered and
compared; rank 0 prints one line per variant: ``<variant> equal|DIFFERENT <hand steps> <trained> <trainer's global_step>
<sync_dist value equal on both ranks: True|False|- (not logged)> <differing keys>``.
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from statemachine_trainer import Trainer, TrainingModule
from statemachine_trainer.strategies import FSDPStrategy

EPOCHS, BATCH = 2, 4


# -- the computations, shared by the modules and the hand-written loops ---------------------------------------
def regression_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x).float(), y)


def generator_loss(model: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-model.discriminator(fake)).mean()


def discriminator_loss(model: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-model.discriminator(real)).mean() + F.softplus(model.discriminator(fake)).mean()


class Regressor(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        loss = regression_loss(self, batch)
        self.log("loss", loss, on_step=False, on_epoch=True, sync_dist=True)  # the epoch mean over both ranks
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class TinyGAN(TrainingModule):
    """Two optimizers; ``training_step`` yields the generator's loss, then the discriminator's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.generator = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, z):
        """What the hand-written loops call: FSDP2 makes the first module to run forward its root, which must be
        the module itself (the steps here call ``self.generator`` directly: the Trainer fixes the root first)."""
        return self.generator(z)

    def training_step(self, batch, batch_idx):
        real, z = batch
        fake = self.generator(z)
        yield generator_loss(self, fake)
        yield discriminator_loss(self, real, fake.detach())

    def configure_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), lr=1e-2),
                torch.optim.Adam(self.discriminator.parameters(), lr=2e-2)]


class ManualGAN(TinyGAN):
    """Manual optimization: the discriminator accumulates 2 batches (the first in no_backward_sync) and is
    clipped; the generator steps every batch."""

    automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        real, z = batch
        fake = self.generator(z)
        closes = batch_idx % 2 == 1
        self.toggle_optimizer(opt_d)
        with contextlib.nullcontext() if closes else self.no_backward_sync():
            self.manual_backward(discriminator_loss(self, real, fake.detach()) / 2)
        if closes:
            self.clip_gradients(opt_d, 0.5, "norm")
            opt_d.step()
            opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.toggle_optimizer(opt_g)
        self.manual_backward(generator_loss(self, fake))
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)


# -- the hand-written FSDP2 loops -----------------------------------------------------------------------------
def shard_by_hand(model: nn.Module, units: list[nn.Module], policy: MixedPrecisionPolicy | None = None) -> None:
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy or MixedPrecisionPolicy())
    fully_shard(model, mesh=mesh, mp_policy=policy or MixedPrecisionPolicy())


def shard_loader(data: TensorDataset) -> DataLoader:
    sampler = DistributedSampler(data, num_replicas=dist.get_world_size(), rank=dist.get_rank(), shuffle=False)
    return DataLoader(data, batch_size=BATCH, sampler=sampler)


def clip(optimizer, value: float, algorithm: str) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if algorithm == "norm":
        torch.nn.utils.clip_grad_norm_(params, value)
    else:
        torch.nn.utils.clip_grad_value_(params, value)


def hand_automatic(model, loader, accumulate=1, clip_val=None, algorithm="norm", autocast=False) -> int:
    optimizer = model.configure_optimizers()
    steps = 0
    for _ in range(EPOCHS):
        for i, batch in enumerate(loader):
            closes = (i + 1) % accumulate == 0 or i == len(loader) - 1
            model.set_requires_gradient_sync(closes)
            with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                loss = regression_loss(model, batch)
            (loss / accumulate if accumulate > 1 else loss).backward()
            if closes:
                if clip_val is not None:
                    clip(optimizer, clip_val, algorithm)
                optimizer.step()
                optimizer.zero_grad()
                steps += 1
    return steps


@contextlib.contextmanager
def only(model: nn.Module, optimizer):
    """``toggle_optimizer`` by hand: every parameter not ``optimizer``'s stops requiring gradients."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for p in model.parameters():
        p.requires_grad_(id(p) in owned)
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def hand_yield(model, loader) -> int:
    optimizers = model.configure_optimizers()
    for _ in range(EPOCHS):
        for real, z in loader:
            fake = None
            for index, optimizer in enumerate(optimizers):
                with only(model, optimizer):
                    if index == 0:
                        fake = model(z)
                        loss = generator_loss(model, fake)
                    else:
                        loss = discriminator_loss(model, real, fake.detach())
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
    return EPOCHS * len(loader) * 2


def hand_manual(model, loader) -> int:
    opt_g, opt_d = model.configure_optimizers()
    for _ in range(EPOCHS):
        for batch_idx, (real, z) in enumerate(loader):
            fake = model(z)
            closes = batch_idx % 2 == 1
            with only(model, opt_d):
                model.set_requires_gradient_sync(closes)
                (discriminator_loss(model, real, fake.detach()) / 2).backward()
                model.set_requires_gradient_sync(True)
                if closes:
                    clip(opt_d, 0.5, "norm")
                    opt_d.step()
                    opt_d.zero_grad()
            with only(model, opt_g):
                generator_loss(model, fake).backward()
                opt_g.step()
                opt_g.zero_grad()
    return EPOCHS * len(loader)


# -- the variants ---------------------------------------------------------------------------------------------
def regression_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(56, 6, generator=generator), torch.randn(56, 1, generator=generator))  # 7 a rank


def gan_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(2)
    return TensorDataset(torch.randn(64, 2, generator=generator) + 3, torch.randn(64, 2, generator=generator))


VARIANTS = {
    # name: (module class, data, Trainer flags, strategy, hand-written loop, the hand loop's wrapped units)
    "automatic": (Regressor, regression_data, {}, "fsdp", hand_automatic, None),
    "accumulate_clip_norm": (Regressor, regression_data, {"accumulate_grad_batches": 2, "gradient_clip_val": 0.05},
                             "fsdp", lambda m, d: hand_automatic(m, d, accumulate=2, clip_val=0.05), None),
    "clip_value": (Regressor, regression_data, {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"},
                   "fsdp", lambda m, d: hand_automatic(m, d, clip_val=0.01, algorithm="value"), None),
    "bf16_wrap_linear": (Regressor, regression_data, {"precision": "bf16-mixed"},
                         FSDPStrategy(wrap={nn.Linear}), lambda m, d: hand_automatic(m, d, autocast=True),
                         lambda m: [layer for layer in m.modules() if isinstance(layer, nn.Linear)]),
    "yield_two_optimizers": (TinyGAN, gan_data, {}, "fsdp", hand_yield, None),
    "manual": (ManualGAN, gan_data, {}, "fsdp", hand_manual, None),
}


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def run_variant(name: str) -> str:
    module_class, data, flags, strategy, hand_loop, units = VARIANTS[name]
    ours = module_class()
    initial = {key: value.clone() for key, value in ours.state_dict().items()}
    trainer = Trainer(strategy=strategy, devices=2, max_epochs=EPOCHS, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, **flags)
    trainer.fit(ours, DataLoader(data(), batch_size=BATCH))
    bf16 = flags.get("precision") == "bf16-mixed"
    theirs = module_class()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    shard_by_hand(theirs, units(theirs) if units else [c for c in theirs.children() if list(c.parameters())], policy)
    steps = hand_loop(theirs, shard_loader(data()))
    mine, hand = full_state(ours), full_state(theirs)
    equal = mine.keys() == hand.keys() and all(torch.equal(mine[key], hand[key]) for key in mine)
    trained = any(not torch.equal(mine[key], initial[key]) for key in mine)
    logged = trainer.callback_metrics.get("loss")  # self.log(..., sync_dist=True): the mean over both ranks
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, None if logged is None else float(logged))
    synced = "-" if logged is None else str(values[0] == values[1])
    differ = ",".join(f"{key}:{(mine[key] - hand[key]).abs().max().item():.1e}" for key in mine
                      if not torch.equal(mine[key], hand[key]))  # what differs, by how much: for the failure message
    return f"{name} {'equal' if equal else 'DIFFERENT'} {steps} {trained} {trainer.global_step} {synced} {differ}"


def check_window_grads(bf16: bool) -> str:
    """A window's held-back gradients, captured after its first micro-batch and restored into a fresh sharded copy,
    give that copy the same reduce-scattered gradients after the window's last micro-batch, bit for bit."""
    from statemachine_trainer._fsdp import FSDPStrategy as Options
    from statemachine_trainer._fsdp import restore_window_grads, shard, window_grads

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    first, last = list(shard_loader(regression_data()))[:2]
    models = []
    for _ in range(2):
        model = Regressor()
        shard(model, mesh, Options(), policy or MixedPrecisionPolicy())
        models.append(model)
    window, resumed = models
    window.set_requires_gradient_sync(False)
    regression_loss(window, first).backward()
    window.set_requires_gradient_sync(True)
    held = {name: grad.clone() for name, grad in window_grads(window).items()}
    restore_window_grads(resumed, held)
    for model in models:
        regression_loss(model, last).backward()
    same = all(torch.equal(a.grad.full_tensor(), b.grad.full_tensor())
               for a, b in zip(window.parameters(), resumed.parameters()))
    dtypes = sorted({str(grad.dtype).removeprefix("torch.") for grad in held.values()})
    return (f"window_grads{'_bf16' if bf16 else ''} {'equal' if same else 'DIFFERENT'} {len(held)} "
            f"{window_grads(window) == {}} {','.join(dtypes)}")


def main() -> None:
    from statemachine_trainer.distributed import DistributedEnv, join_process_group

    torch.set_num_threads(1)
    join_process_group(DistributedEnv.from_environ())  # the group the Trainers join too (joining is idempotent)
    lines = [check_window_grads(bf16=name.endswith("bf16")) if name.startswith("window_grads") else run_variant(name)
             for name in sys.argv[1:]]
    if dist.get_rank() == 0:
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
