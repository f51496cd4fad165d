"""The global-batch order (data/_global.py): each optimizer step's samples and random draws at any world size."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, TensorDataset

from statemachine_trainer._optim import ConfigError
from statemachine_trainer.data import ResumableLoader, batch_key
from statemachine_trainer.data._global import GlobalBatchSampler, accumulation

WORLDS = (1, 2, 4)


class Augmented(Dataset):
    """Sample ``i`` plus draws from every global RNG made while fetching it (an augmentation)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), torch.rand(()).item(), random.random(), float(np.random.rand())])


def _steps(n: int, b: int, g: int, world: int, seed: int, epoch: int, shuffle: bool = True) -> list[set]:
    """Per optimizer step: the set of (global micro-batch indices, key) every rank takes, over all ranks."""
    samplers = [GlobalBatchSampler(n, b, g, shuffle=shuffle, seed=seed, rank=r, world_size=world)
                for r in range(world)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    a = samplers[0].accumulation
    steps = []
    for s in range(samplers[0].steps):
        taken = {(tuple(sampler.batch(s * a + i)), sampler.batch(s * a + i).key)
                 for sampler in samplers for i in range(a)}
        steps.append(taken)
    return steps


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 4), per_rank_step=st.integers(1, 3), extra=st.integers(0, 40), seed=st.integers(0, 2**40),
       epoch=st.integers(0, 5), shuffle=st.booleans())
def test_every_step_takes_the_same_samples_and_keys_at_any_world_size(b, per_rank_step, extra, seed, epoch, shuffle):
    g = b * 4 * per_rank_step  # divisible at W = 1, 2, 4
    n = g * 2 + extra
    by_world = [_steps(n, b, g, w, seed, epoch, shuffle) for w in WORLDS]
    assert by_world[0] == by_world[1] == by_world[2]
    perm = (torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)) if shuffle
            else torch.arange(n)).tolist()
    for s, step in enumerate(by_world[0]):
        # the step's samples are perm[s*G:(s+1)*G], micro-batch J keyed as a single process keys its batch J
        assert sorted(i for indices, _ in step for i in indices) == sorted(perm[s * g:(s + 1) * g])
        expected = {(tuple(perm[j * b:(j + 1) * b]), batch_key(seed, epoch, 0, j))
                    for j in range(s * g // b, (s + 1) * g // b)}
        assert step == expected
    assert len(by_world[0]) == n // g  # the tail that fills no global batch is not used


@pytest.mark.parametrize("world", WORLDS)
def test_draws_depend_on_the_micro_batch_not_on_the_rank(world):
    """Augmentations (data stream) and what the step draws afterwards from torch, Python and NumPy (training
    stream, e.g. dropout) are those of the global micro-batch, at any world size and any num_workers."""
    base = ResumableLoader(DataLoader(Augmented(48), batch_size=2, shuffle=True), seed=7)

    def draws(w: int, workers: int) -> dict[int, tuple]:
        out = {}
        for r in range(w):
            loader = base.global_batches(16, r, w)
            if workers:
                loader = ResumableLoader(DataLoader(Augmented(48), batch_size=2, shuffle=True,
                                                    num_workers=workers), seed=7).global_batches(16, r, w)
            for k, batch in enumerate(loader):
                training = (torch.rand(()).item(), random.random(), float(np.random.rand()))
                out[loader.batch_sampler.micro_batch(k)] = (batch.tolist(), training)
        return out

    reference = draws(1, 0)
    assert draws(world, 0) == reference
    if world == 2:
        assert draws(world, 1) == reference


@pytest.mark.parametrize(("saved", "resumed"), [(2, 1), (2, 4), (1, 2), (4, 2), (2, 2)])
def test_a_position_saved_at_a_step_boundary_resumes_at_another_world_size(saved, resumed):
    data = ResumableLoader(DataLoader(TensorDataset(torch.arange(64)), batch_size=2, shuffle=True), seed=3)
    writers = [data.global_batches(16, r, saved) for r in range(saved)]
    a = writers[0].accumulation
    for loader in writers:  # 3 optimizer steps
        iterator = iter(loader)
        for _ in range(3 * a):
            next(iterator)
    states = [loader.state_dict() for loader in writers]
    assert all(state == states[0] for state in states)  # a global quantity at a step boundary
    readers = [data.global_batches(16, r, resumed) for r in range(resumed)]
    for reader in readers:
        reader.load_state_dict(states[0])
        assert reader.position == 3 * reader.accumulation
    rest = {reader.batch_sampler.micro_batch(k): batch[0].tolist()
            for reader in readers for k, batch in enumerate(reader, start=reader.position)}
    fresh = data.global_batches(16)
    assert rest == {j: fresh.batch_sampler.batch(j) for j in range(3 * 8, len(fresh))}


def test_a_position_inside_an_accumulation_window_does_not_move_to_another_world_size():
    data = ResumableLoader(DataLoader(TensorDataset(torch.arange(64)), batch_size=2), seed=3)
    loader = data.global_batches(16, 0, 2)
    next(iter(loader))  # 1 of 4 micro-batches of the step
    state = loader.state_dict()
    with pytest.raises(ValueError, match="inside an accumulation window"):
        data.global_batches(16, 0, 1).load_state_dict(state)
    same = data.global_batches(16, 0, 2)
    same.load_state_dict(state)  # the same world size resumes anywhere
    assert same.position == 1


def test_a_state_saved_without_the_global_batch_is_refused_by_name():
    data = ResumableLoader(DataLoader(TensorDataset(torch.arange(64)), batch_size=2), seed=3)
    with pytest.raises(ValueError, match="saved without global_batch_size"):
        data.global_batches(16).load_state_dict(data.state_dict())
    state = data.global_batches(16).state_dict()
    with pytest.raises(ValueError, match="global_batch_size=16"):
        data.global_batches(32).load_state_dict(state)


def test_an_inexact_accumulation_is_refused_naming_g_b_and_w():
    assert accumulation(32, 4, 2) == 4
    with pytest.raises(ConfigError, match=r"global_batch_size=24 .*batch_size=4 at world size 4.*4 \* 4 = 16"):
        accumulation(24, 4, 4)
