"""The GAN examples and the validation-guided loop: they run, they match plain PyTorch, they learn.

The bit-identity tests replay a fit with a hand-written PyTorch loop from the
same initial weights and the same torch RNG state.  Both sides iterate the
same DataLoader (creating its iterator draws from torch's global RNG) and draw
the noise in the same order, and neither has validation data (the sanity
check would create another iterator), so every parameter must come out equal.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from statemachine_trainer import TableError, Trainer
from statemachine_trainer.machine.diagram import to_mermaid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import gan_yield
import manual_gan
import val_guided


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; also keeps timings steady on 2 shared cores
    yield
    torch.set_num_threads(threads)


def quiet_trainer(epochs: int) -> Trainer:
    return Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False)


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


# -- every example runs as a script ------------------------------------------------------------------
SCRIPTS = ("gan_yield.py", "manual_gan.py", "val_guided.py")


@pytest.fixture(scope="module")
def script_runs():
    """Start all three scripts at once: most of each run is importing torch, which overlaps well."""
    runs = {script: subprocess.Popen([sys.executable, f"examples/{script}", "--fast-dev-run", "--seed", "3"],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for script in SCRIPTS}
    yield runs
    for run in runs.values():
        if run.poll() is None:
            run.kill()
            run.wait()


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_fast_dev_run(script: str, script_runs) -> None:
    stdout, stderr = script_runs[script].communicate(timeout=180)
    assert script_runs[script].returncode == 0, stderr[-3000:]
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"(\w+=[-+\d.e]+ ?)+", last), f"last line is not a key=value summary: {last!r}"


# -- the two GANs against plain PyTorch ------------------------------------------------------------
def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def adam(model: torch.nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))


def plain_yield_gan(G, D, loader, epochs: int, latent_dim: int) -> None:
    opt_g, opt_d = adam(G), adam(D)
    for _ in range(epochs):
        for (real,) in loader:
            fake = G(torch.randn(len(real), latent_dim))
            g_loss = bce(D(fake), 1.0)
            opt_g.zero_grad()
            g_loss.backward()  # also writes D's grads; opt_d.zero_grad() below drops them
            opt_g.step()
            d_loss = bce(D(real), 1.0) + bce(D(fake.detach()), 0.0)
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()


def plain_manual_gan(G, D, loader, epochs: int, latent_dim: int, g_every: int, max_norm: float, gamma: float) -> None:
    opt_g, opt_d = adam(G), adam(D)
    schedulers = [torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma) for opt in (opt_g, opt_d)]
    for _ in range(epochs):
        for batch_idx, (real,) in enumerate(loader):
            fake = G(torch.randn(len(real), latent_dim))
            d_loss = bce(D(real), 1.0) + bce(D(fake.detach()), 0.0)
            opt_d.zero_grad()
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(D.parameters(), max_norm)
            opt_d.step()
            if (batch_idx + 1) % g_every == 0:
                g_loss = bce(D(fake), 1.0)
                opt_g.zero_grad()
                g_loss.backward()
                opt_g.step()
        for scheduler in schedulers:
            scheduler.step()


def fit_and_replay(module_class, epochs: int):
    module, loader = gan_yield.build(seed=7, num_points=1024, batch_size=128, module_class=module_class)
    G, D = copy.deepcopy(module.generator), copy.deepcopy(module.discriminator)
    rng = torch.get_rng_state()
    quiet_trainer(epochs).fit(module, loader)
    trained_rng = torch.get_rng_state()
    _, loader = gan_yield.build(seed=7, num_points=1024, batch_size=128, module_class=module_class)  # epoch 0 again
    torch.set_rng_state(rng)
    return module, loader, G, D, trained_rng


def test_yield_gan_is_bit_identical_to_plain_pytorch() -> None:
    module, loader, G, D, trained_rng = fit_and_replay(gan_yield.GAN, epochs=2)
    initial_g = copy.deepcopy(G)
    plain_yield_gan(G, D, loader, epochs=2, latent_dim=module.latent_dim)
    assert not same_parameters(G, initial_g)  # the replay trained (so equality below means something)
    assert same_parameters(module.generator, G)
    assert same_parameters(module.discriminator, D)
    assert torch.equal(torch.get_rng_state(), trained_rng)  # and used the RNG exactly as the Trainer did


def test_manual_gan_is_bit_identical_to_plain_pytorch() -> None:
    epochs = 3  # > 1, so the per-epoch LR decay shapes the result
    module, loader, G, D, trained_rng = fit_and_replay(lambda: manual_gan.ManualGAN(g_every=2), epochs)
    plain_manual_gan(G, D, loader, epochs, module.latent_dim, g_every=2, max_norm=module.d_max_grad_norm,
                     gamma=module.lr_decay)
    assert same_parameters(module.generator, G)
    assert same_parameters(module.discriminator, D)
    assert torch.equal(torch.get_rng_state(), trained_rng)
    # 8 batches x 3 epochs: D stepped 24 times, G 12 times.
    assert module.trainer.global_step == 36
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * module.lr_decay ** epochs)


def test_gan_quality_improves_over_the_untrained_generator() -> None:
    module, loader = gan_yield.build(seed=0, num_points=4096, batch_size=256)
    untrained, _ = gan_yield.mode_quality(module.sample(2000, seed=1))
    quiet_trainer(epochs=15).fit(module, loader)  # 240 batches
    trained, _ = gan_yield.mode_quality(module.sample(2000, seed=1))
    assert untrained > 1.5  # near the origin, far from the radius-2 ring
    assert trained < 0.6 * untrained, (untrained, trained)


# -- the validation-guided loop -------------------------------------------------------------------
def test_val_guided_table_is_validated_and_drawn() -> None:
    states = ("BACKWARD", "PROBE_VAL", "STEP")
    table_text = to_mermaid(val_guided.ValGuidedStep)
    for state in states:
        assert f"{state} -->" in table_text
    assert "PROBE_VAL --> STEP: advance [probe_due] / probe_val, scale_gradients" in table_text

    trainer, *_ = val_guided.build(seed=0, epochs=1)
    tree_text = to_mermaid(trainer.fit_loop)
    assert "fit_loop.epoch_loop.batch_loop.optimizer_loop (ValGuidedStep)" in tree_text
    for state in states:
        assert f"optimizer_loop__{state}" in tree_text

    rows = val_guided.VAL_GUIDED_TABLE.rows
    with pytest.raises(TableError, match="'END' is unreachable"):  # without its last row, nothing reaches END
        val_guided.Table(states=val_guided.VAL_GUIDED_TABLE.states, rows=rows[:-1])
    with pytest.raises(TableError, match="scale_gradient"):  # a misspelt hook fails when the class is defined
        typo = val_guided.Table(states=val_guided.VAL_GUIDED_TABLE.states,
                                rows=(*rows[:3], val_guided.Row("advance", "PROBE_VAL", "STEP", hooks="scale_gradient"),
                                      rows[4]))
        type("Typo", (val_guided.ValGuidedStep,), {"table": typo})


def test_val_guided_lowers_validation_loss_and_keeps_its_state() -> None:
    trainer, module, train, val = val_guided.build(seed=0, epochs=3, probe_every=2)
    trainer.callbacks.clear()  # no progress bar in test output
    before = trainer.validate(module, val)[0]["val_loss"]
    trainer.fit(module, train, val)
    after = trainer.validate(module, val)[0]["val_loss"]
    assert after < 0.5 * before, (before, after)

    loop = trainer.fit_loop.epoch_loop.batch_loop.optimizer_loop
    steps = trainer.global_step
    assert steps == 3 * len(train)  # ValGuidedStep's steps count as the trainer's global steps
    assert loop.fields.probes == (steps + 1) // 2  # probe_due: steps 0, 2, 4, ...
    assert loop.fields.trust != 1.0 and loop.min_trust <= loop.fields.trust <= loop.max_trust
    saved = trainer.fit_loop.state_dict()["loops"]["fit_loop.epoch_loop.batch_loop.optimizer_loop"]
    assert saved["fields"] == {"trust": loop.fields.trust, "last_probe": loop.fields.last_probe, "probes": loop.fields.probes}
