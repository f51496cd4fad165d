"""Each optimization mode trains, and matches a hand-written plain-PyTorch loop bit for bit.

The plain loops below are what a user would write by hand.  One subtlety they
share with the Trainer: creating a DataLoader iterator draws one value from
torch's global RNG, so both sides iterate the same loaders the same number of
times (no validation data here, so the Trainer runs no sanity check).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import Trainer, TrainingModule

EPOCHS = 3


def make_loader(n: int = 96, batch_size: int = 16, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    y = (x[:, :3].sum(1) > x[:, 3:].sum(1)).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 2))


def trainer(**flags) -> Trainer:
    # resumable_data=False: the plain loops iterate the DataLoader as given, so the Trainer must too.
    flags = {"max_epochs": EPOCHS, "enable_progress_bar": False, "enable_checkpointing": False, "logger": False,
             "resumable_data": False, **flags}
    return Trainer(**flags)


def fit(module: TrainingModule, loader: DataLoader, **flags) -> Trainer:
    torch.manual_seed(123)  # the run's RNG: shuffling and dropout
    t = trainer(**flags)
    t.fit(module, loader)
    return t


def assert_same(a: nn.Module, b: nn.Module) -> None:
    pa, pb = list(a.parameters()), list(b.parameters())
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb):
        assert torch.equal(x, y), (x - y).abs().max()


class Classifier(TrainingModule):
    def __init__(self, optimizer: str = "sgd", schedule: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.net = make_net()
        self.optimizer, self.schedule = optimizer, schedule
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        if self.optimizer == "lbfgs":
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)
        opt = torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)
        if self.schedule == "step":
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 5, 0.5),
                                                       "interval": "step"}}
        if self.schedule == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "train_loss_epoch"}}
        return opt


def plain_automatic(accumulate: int = 1, clip: tuple[str, float] | None = None,
                    schedule: str | None = None) -> nn.Module:
    torch.manual_seed(7)
    net = make_net()
    loader = make_loader()
    opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    step_sched = torch.optim.lr_scheduler.StepLR(opt, 5, 0.5) if schedule == "step" else None
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0) if schedule == "plateau" else None
    torch.manual_seed(123)
    for _ in range(EPOCHS):
        total, count = torch.tensor(0.0), 0
        for i, (x, y) in enumerate(loader):
            loss = nn.functional.cross_entropy(net(x), y)
            total, count = total + loss.detach() * x.shape[0], count + x.shape[0]
            (loss / accumulate if accumulate > 1 else loss).backward()
            if (i + 1) % accumulate == 0 or i + 1 == len(loader):
                if clip is not None and clip[0] == "norm":
                    nn.utils.clip_grad_norm_(net.parameters(), clip[1])
                elif clip is not None:
                    nn.utils.clip_grad_value_(net.parameters(), clip[1])
                opt.step()
                opt.zero_grad()
                if step_sched is not None:
                    step_sched.step()
        if plateau is not None:
            plateau.step(total / count)
    return net


@pytest.mark.parametrize("flags, plain", [
    ({}, {}),
    ({"accumulate_grad_batches": 4}, {"accumulate": 4}),
    ({"gradient_clip_val": 0.05}, {"clip": ("norm", 0.05)}),
    ({"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"}, {"clip": ("value", 0.01)}),
    ({"accumulate_grad_batches": 3, "gradient_clip_val": 0.1}, {"accumulate": 3, "clip": ("norm", 0.1)}),
], ids=["plain", "accumulate", "clip-norm", "clip-value", "accumulate+clip"])
def test_automatic_matches_plain_pytorch(flags, plain):
    module = Classifier()
    fit(module, make_loader(), **flags)
    assert_same(module.net, plain_automatic(**plain))
    first, last = sum(module.losses[:6]) / 6, sum(module.losses[-6:]) / 6
    assert last < first  # it learns


@pytest.mark.parametrize("schedule", ["step", "plateau"])
def test_schedulers_match_plain_pytorch(schedule):
    module = Classifier(schedule=schedule)
    t = fit(module, make_loader())
    assert_same(module.net, plain_automatic(schedule=schedule))
    assert t.optimizers[0].param_groups[0]["lr"] < 0.2  # the schedule acted


def test_lbfgs_closure_matches_plain_pytorch():
    module = Classifier(optimizer="lbfgs")
    fit(module, make_loader())
    torch.manual_seed(7)
    net = make_net()
    loader = make_loader()
    opt = torch.optim.LBFGS(net.parameters(), lr=0.5, max_iter=4)
    torch.manual_seed(123)
    for _ in range(EPOCHS):
        for x, y in loader:
            def closure(x=x, y=y):
                loss = nn.functional.cross_entropy(net(x), y)
                loss.backward()
                return loss
            opt.step(closure)
            opt.zero_grad()
    assert_same(module.net, net)


# -- several optimizers: a tiny GAN ---------------------------------------------------------------
def gan_parts() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 6)), nn.Sequential(nn.Linear(6, 8), nn.Tanh(),
                                                                                     nn.Linear(8, 1))


def g_loss(d: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(-d(fake)).mean()


def d_loss(d: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(d(fake.detach())).mean() + nn.functional.softplus(-d(real)).mean()


class GAN(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.g, self.d = gan_parts()
        self.d_losses: list[float] = []

    def configure_optimizers(self):
        return [torch.optim.Adam(self.g.parameters(), 1e-2), torch.optim.Adam(self.d.parameters(), 1e-2)]


class YieldGAN(GAN):
    def training_step(self, batch, batch_idx):
        real = batch[0]
        fake = self.g(torch.randn(real.shape[0], 2))  # shared: computed once for both optimizers
        yield g_loss(self.d, fake)
        loss = d_loss(self.d, fake, real)
        self.d_losses.append(loss.item())
        yield loss


class IndexGAN(GAN):
    def training_step(self, batch, batch_idx, optimizer_idx):
        real = batch[0]
        fake = self.g(torch.randn(real.shape[0], 2))  # recomputed per optimizer (Lightning 1.x style)
        return g_loss(self.d, fake) if optimizer_idx == 0 else d_loss(self.d, fake, real)


class ManualGAN(GAN):
    automatic_optimization = False

    def __init__(self, g_every: int = 1) -> None:
        super().__init__()
        self.g_every = g_every

    def training_step(self, batch, batch_idx):
        real = batch[0]
        opt_g, opt_d = self.optimizers()
        fake = self.g(torch.randn(real.shape[0], 2))
        if batch_idx % self.g_every == 0:
            self.toggle_optimizer(opt_g)
            self.manual_backward(g_loss(self.d, fake))
            opt_g.step()
            opt_g.zero_grad()
            self.untoggle_optimizer(opt_g)
        self.toggle_optimizer(opt_d)
        loss = d_loss(self.d, fake, real)
        self.manual_backward(loss)
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.d_losses.append(loss.item())


def real_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(64, 6, generator=generator) * 0.5 + 2.0
    return DataLoader(TensorDataset(real), batch_size=16, shuffle=True)


def plain_gan(g_every: int = 1, recompute: bool = False) -> tuple[nn.Module, nn.Module]:
    g, d = gan_parts()
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-2), torch.optim.Adam(d.parameters(), 1e-2)
    loader = real_loader()
    torch.manual_seed(123)
    for _ in range(EPOCHS):
        for i, (real,) in enumerate(loader):
            fake = g(torch.randn(real.shape[0], 2))
            if i % g_every == 0:
                d.requires_grad_(False)
                g_loss(d, fake).backward()
                d.requires_grad_(True)
                opt_g.step()
                opt_g.zero_grad()
            if recompute:
                fake = g(torch.randn(real.shape[0], 2))
            g.requires_grad_(False)
            d_loss(d, fake, real).backward()
            g.requires_grad_(True)
            opt_d.step()
            opt_d.zero_grad()
    return g, d


@pytest.mark.parametrize("cls", [YieldGAN, ManualGAN], ids=["generator", "manual"])
def test_gan_modes_match_plain_pytorch(cls):
    module = cls()
    t = fit(module, real_loader())
    g, d = plain_gan()
    assert_same(module.g, g)
    assert_same(module.d, d)
    assert t.global_step == 2 * EPOCHS * 4  # both optimizers stepped on every batch


def test_optimizer_idx_mode_matches_plain_pytorch():
    module = IndexGAN()
    fit(module, real_loader())
    g, d = plain_gan(recompute=True)
    assert_same(module.g, g)
    assert_same(module.d, d)


def test_manual_step_frequencies_match_plain_pytorch():
    module = ManualGAN(g_every=2)
    t = fit(module, real_loader())
    g, d = plain_gan(g_every=2)
    assert_same(module.g, g)
    assert_same(module.d, d)
    assert t.global_step == EPOCHS * (4 + 2)


def test_generator_discriminator_learns():
    module = YieldGAN()
    fit(module, real_loader())
    g, _ = gan_parts()
    with torch.no_grad():
        torch.manual_seed(0)
        z = torch.randn(256, 2)
        trained = (module.g(z).mean(0) - 2.0).abs().mean()
        untrained = (g(z).mean(0) - 2.0).abs().mean()
    assert trained < untrained  # generated samples moved towards the real data


class FrequencyModule(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 1), nn.Linear(6, 1)
        self.used: list[int] = []

    def training_step(self, batch, batch_idx, optimizer_idx):
        self.used.append(optimizer_idx)
        layer = self.a if optimizer_idx == 0 else self.b
        return layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return [{"optimizer": torch.optim.SGD(self.a.parameters(), 0.1), "frequency": 2},
                {"optimizer": torch.optim.SGD(self.b.parameters(), 0.1), "frequency": 1}]


def test_optimizer_frequencies_alternate_batches():
    module = FrequencyModule()
    t = fit(module, make_loader(n=96, batch_size=16), max_epochs=1)
    assert module.used == [0, 0, 1, 0, 0, 1]
    assert t.global_step == 6


class SkippingModule(Classifier):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return None if batch_idx % 2 else loss


def test_training_step_returning_none_skips_the_step():
    module = SkippingModule()
    t = fit(module, make_loader(), max_epochs=1)
    assert t.global_step == 3  # 6 batches, every other one skipped
    torch.manual_seed(7)
    net = make_net()
    loader = make_loader()
    opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    torch.manual_seed(123)
    for i, (x, y) in enumerate(loader):
        loss = nn.functional.cross_entropy(net(x), y)
        if i % 2 == 0:
            loss.backward()
            opt.step()
            opt.zero_grad()
    assert_same(module.net, net)


def test_bf16_mixed_trains_on_cpu():
    module = Classifier()
    fit(module, make_loader(), precision="bf16-mixed")
    assert sum(module.losses[-6:]) < sum(module.losses[:6])
    assert all(p.dtype == torch.float32 for p in module.parameters())  # autocast leaves the weights in fp32


@pytest.mark.parametrize("cls", [YieldGAN, ManualGAN, IndexGAN], ids=["generator", "manual", "optimizer_idx"])
def test_gan_modes_under_ddp_in_a_world_of_one_match_one_process(cls):
    """A world of one under "ddp" (no DDP wrapper: nothing to all-reduce) changes no number; tests/test_ddp.py
    shows DDP's loss gate averaging over two ranks, and equal to one process when both ranks see the same data."""
    from statemachine_trainer.data import ResumableLoader

    alone, ddp = cls(), cls()
    ddp.load_state_dict(alone.state_dict())
    fit(alone, ResumableLoader(real_loader(), seed=5))
    fit(ddp, ResumableLoader(real_loader(), seed=5), strategy="ddp", devices=1)
    assert_same(alone, ddp)
