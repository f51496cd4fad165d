"""Resumable data: O(1) resume equals the uninterrupted epoch, augmentations replay, sharding equals DistributedSampler."""

from __future__ import annotations

import json
import multiprocessing
import random

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    StackDataset,
    Subset,
    TensorDataset,
    WeightedRandomSampler,
    default_collate,
)

from statemachine_trainer.data import (
    ResumableLoader,
    ResumableSampler,
    SeededDataset,
    StaleIteratorError,
    TaggedBatch,
)
from statemachine_trainer.data._seeding import fetch_draws_nothing


class Augmented(Dataset):
    """Each sample draws from torch, random and numpy, and counts its fetches in memory shared with workers."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.calls = multiprocessing.Value("i", 0)  # inherited by forked workers, so their fetches count too

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self.calls.get_lock():
            self.calls.value += 1
        noise = torch.rand(()).double() + random.random() + float(np.random.rand())
        return torch.tensor(index), torch.tensor(float(index)) + noise


class Numbers(IterableDataset):
    def __iter__(self):
        return iter(range(10))


def _reseed_globals(seed: int) -> None:
    """Put the process's global RNGs somewhere else, as a fresh process resuming would be."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _adapter(length: int, batch_size: int, shuffle: bool, drop_last: bool, workers: int, seed: int = 7):
    """A fresh dataset, DataLoader and adapter, like a new process builds them."""
    dataset = Augmented(length)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=workers)
    return ResumableLoader(loader, seed=seed), dataset


def _assert_same_batches(left: list, right: list) -> None:
    assert len(left) == len(right)
    for (i_a, x_a), (i_b, x_b) in zip(left, right):
        assert torch.equal(i_a, i_b) and torch.equal(x_a, x_b)


def _resume_case(length: int, batch_size: int, shuffle: bool, drop_last: bool, workers: int, epoch: int,
                 cut: float) -> None:
    _reseed_globals(1)
    whole, _ = _adapter(length, batch_size, shuffle, drop_last, workers)
    whole.set_epoch(epoch)
    full = list(whole)
    k = int(cut * len(full))

    _reseed_globals(2)
    first, _ = _adapter(length, batch_size, shuffle, drop_last, workers)
    first.set_epoch(epoch)
    iterator = iter(first)
    head = [next(iterator) for _ in range(k)]
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"epoch": epoch, "position": k, "seed": 7}

    _reseed_globals(3)
    resumed, dataset = _adapter(length, batch_size, shuffle, drop_last, workers)
    resumed.load_state_dict(state)
    resumed.set_epoch(epoch)  # what a trainer does at the top of the epoch: must keep the position
    assert dataset.calls.value == 0  # the jump itself fetches nothing
    tail = list(resumed)
    _assert_same_batches(head + tail, full)
    # O(remaining): exactly the samples of the batches served after the jump were fetched.
    assert dataset.calls.value == sum(len(i) for i, _ in tail)


@given(length=st.integers(1, 23), batch_size=st.integers(1, 5), shuffle=st.booleans(), drop_last=st.booleans(),
       epoch=st.integers(0, 3), cut=st.floats(0, 1))
@example(length=5, batch_size=2, shuffle=True, drop_last=False, epoch=1, cut=1.0)  # saved after the last batch
@example(length=5, batch_size=2, shuffle=True, drop_last=False, epoch=1, cut=0.0)  # saved before the first
def test_resume_in_process_equals_whole_epoch(length, batch_size, shuffle, drop_last, epoch, cut):
    _resume_case(length, batch_size, shuffle, drop_last, 0, epoch, cut)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_with_workers_equals_whole_epoch(shuffle, drop_last):
    _resume_case(17, 3, shuffle, drop_last, 2, 1, 0.5)


def test_workers_and_main_process_give_the_same_batches():
    main, _ = _adapter(13, 4, True, False, 0)
    workers, _ = _adapter(13, 4, True, False, 2)
    _assert_same_batches(list(main), list(workers))


def test_epochs_differ_and_replay_from_the_seed():
    a, _ = _adapter(20, 4, True, False, 0)
    epoch0, epoch1 = list(a), list(a)  # iterating a finished epoch moves on to the next
    assert a.epoch == 1
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(epoch0, epoch1))
    b, _ = _adapter(20, 4, True, False, 0)
    b.set_epoch(1)
    _assert_same_batches(list(b), epoch1)
    other, _ = _adapter(20, 4, True, False, 0, seed=8)
    other.set_epoch(1)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(list(other), epoch1))


def test_unshuffled_augmentations_still_differ_per_epoch():
    a, _ = _adapter(6, 3, False, False, 0)
    epoch0, epoch1 = list(a), list(a)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(epoch0, epoch1))  # same order ...
    assert not any(torch.equal(x[1], y[1]) for x, y in zip(epoch0, epoch1))  # ... new draws


# -- the global RNGs between batches -----------------------------------------------------------------------
def _draws(count: int = 1) -> list[tuple[float, float, float]]:
    """What a training step draws from each global RNG (moving it, as dropout would), ``count`` times."""
    return [(float(torch.rand(())), random.random(), float(np.random.rand())) for _ in range(count)]


def _global_states() -> tuple:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _set_global_states(states: tuple) -> None:
    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])


@pytest.mark.parametrize("workers", [0, 2])
def test_what_a_step_draws_between_batches(workers):
    _reseed_globals(1)
    reference, _ = _adapter(13, 3, True, False, 0)
    expected = [(batch, _draws(2)) for _ in range(2) for batch in reference]  # two epochs
    # Any num_workers: the same batches and the same draws after each.
    _reseed_globals(1)
    adapter, _ = _adapter(13, 3, True, False, workers)
    got = [(batch, _draws(2)) for _ in range(2) for batch in adapter]
    _assert_same_batches([b for b, _ in got], [b for b, _ in expected])
    assert [d for _, d in got] == [d for _, d in expected]
    # torch's stream runs on, unmoved by loading (the dataset draws from it too): as if nothing were loaded.
    _reseed_globals(1)
    assert [d[0] for _, pair in expected for d in pair] == [float(torch.rand(())) for _ in range(2 * len(expected))]
    # Python's and NumPy's are seeded per batch: the same after each batch whatever the caller drew before.
    _reseed_globals(2)
    adapter, _ = _adapter(13, 3, True, False, workers)
    got = [_draws(1 + k % 3)[0] for _ in range(2) for k, _ in enumerate(adapter)]
    assert [d[1:] for d in got] == [pair[0][1:] for _, pair in expected]
    assert len({pair[0][1] for _, pair in expected}) == len(expected)  # a new stream per batch and per epoch


class Opaque(Dataset):
    """The same items as the dataset it wraps, behind a type the loader cannot know draws nothing."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        return self.inner[index]


def _same_states(a: tuple, b: tuple) -> bool:
    """Whether two ``_global_states()`` are equal, generator by generator."""
    return (torch.equal(a[0], b[0]) and a[1] == b[1]
            and all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a[2], b[2])))


def _fetches_moved_nothing(loader) -> list:
    """Iterate ``loader`` as a step would (drawing between batches); assert that iter() and each next() left every
    global generator as they found it; the batches."""
    before = _global_states()
    batches, iterator = [], iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return batches
        assert _same_states(_global_states(), before), f"fetching batch {len(batches)} moved a global generator"
        batches.append(batch)
        _draws(1 + len(batches) % 3)  # the step: dropout, noise, ... (a different count per batch)
        before = _global_states()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_fetch_that_draws_nothing_leaves_every_generator_alone(workers):
    """A TensorDataset with the default collate: no seeding at all, before the fetch or after it, so the step's draws
    run on as in a plain loop, with any num_workers, across an epoch, a resume mid-epoch and a rewound batch."""
    tensors = TensorDataset(torch.arange(22.0).reshape(11, 2), torch.arange(11))
    _reseed_globals(3)
    loader = ResumableLoader(DataLoader(tensors, batch_size=4, shuffle=True, num_workers=workers), seed=11)
    assert loader.loader.dataset is tensors and loader._seed_training is None
    assert len(_fetches_moved_nothing(loader)) == 3
    loader.load_state_dict({"epoch": 0, "position": 2, "seed": 11})
    loader.rewind(1)  # the batch in flight served again, then the rest
    assert len(_fetches_moved_nothing(loader)) == 2
    # A dataset the loader cannot know draws nothing is seeded, and so is the training stream after it.
    opaque = ResumableLoader(DataLoader(Opaque(tensors), batch_size=4, num_workers=workers), seed=11)
    before = _global_states()
    next(iter(opaque))
    assert opaque._seed_training is not None and not _same_states(_global_states(), before)


def _collate(batch):
    return default_collate(batch)


class MyTensors(TensorDataset):
    pass


_TENSORS = TensorDataset(torch.zeros(4, 2))


@pytest.mark.parametrize(("dataset", "collate_fn", "draws_nothing"), [
    (_TENSORS, None, True),
    (_TENSORS, default_collate, True),
    (_TENSORS, _collate, False),  # a collate_fn of one's own may draw (mixup)
    (MyTensors(torch.zeros(4, 2)), None, False),  # a subclass may override __getitem__
    (Subset(_TENSORS, [0, 2]), None, True),
    (ConcatDataset([_TENSORS, Subset(_TENSORS, [1])]), None, True),
    (ConcatDataset([_TENSORS, Opaque(_TENSORS)]), None, False),
    (StackDataset(_TENSORS, _TENSORS), None, True),
    (StackDataset(a=_TENSORS, b=Opaque(_TENSORS)), None, False),
    (Opaque(_TENSORS), None, False),
])
def test_which_fetches_are_known_to_draw_nothing(dataset, collate_fn, draws_nothing):
    assert fetch_draws_nothing(dataset, collate_fn) is draws_nothing
    loader = ResumableLoader(DataLoader(dataset, batch_size=2, collate_fn=collate_fn))
    assert isinstance(loader.loader.dataset, SeededDataset) is not draws_nothing
    # The sampler computes a batch's key only for a fetch that reads it: a seeded one.
    handed_out = next(iter(loader.batch_sampler))
    assert isinstance(handed_out, TaggedBatch) is not draws_nothing and handed_out == [0, 1]
    assert isinstance(ResumableLoader(DataLoader(dataset, batch_size=2), rngs=()).loader.dataset, SeededDataset) is False


def test_torch_initial_seed_is_kept_for_loaders_made_later():
    """A loader built mid-run (a K-fold round, an active-learning round) seeds itself from torch.initial_seed()."""
    torch.manual_seed(11)
    list(_adapter(10, 3, True, False, 0)[0])
    assert torch.initial_seed() == 11
    assert ResumableLoader(Augmented(4)).seed == 11


def _resume_draws(length: int, batch_size: int, draws: list[int], cut: int, in_flight: bool, workers: int,
                  ) -> tuple[list, list]:
    """The batches and draws after a checkpoint at batch ``cut``: (uninterrupted, resumed)."""
    _reseed_globals(1)
    whole, _ = _adapter(length, batch_size, True, False, workers)
    full: list = []
    for k, batch in enumerate(whole):
        first = _draws(1)  # what the step draws before a checkpoint taken inside it (in_flight)
        if k == cut and in_flight:
            state, states = whole.state_dict(), _global_states()
        full.append((batch, first + _draws(draws[k % len(draws)])))
        if k == cut and not in_flight:
            state, states = whole.state_dict(), _global_states()  # between this step and the next batch
    _reseed_globals(2)  # a fresh process
    resumed, _ = _adapter(length, batch_size, True, False, workers)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    _set_global_states(states)  # what restoring the checkpoint's RNG states does
    tail: list = []
    if in_flight:
        resumed.rewind(1)
        iterator = iter(resumed)
        batch = next(iterator)  # the batch in flight again: the step goes on from the checkpoint's RNG states
        tail.append((batch, full[cut][1][:1] + _draws(draws[cut % len(draws)])))
        tail += [(batch, _draws(1 + draws[(k + cut + 1) % len(draws)])) for k, batch in enumerate(iterator)]
    else:
        tail = [(batch, _draws(1 + draws[(k + cut + 1) % len(draws)])) for k, batch in enumerate(resumed)]
    return full[cut if in_flight else cut + 1:], tail


@given(length=st.integers(2, 23), batch_size=st.integers(1, 5), draws=st.lists(st.integers(0, 3), min_size=1,
       max_size=4), data=st.data(), in_flight=st.booleans())
def test_the_training_stream_resumes_exactly(length, batch_size, draws, data, in_flight):
    cut = data.draw(st.integers(0, -(-length // batch_size) - 1))
    expected, got = _resume_draws(length, batch_size, draws, cut, in_flight, 0)
    _assert_same_batches([b for b, _ in got], [b for b, _ in expected])
    assert [d for _, d in got] == [d for _, d in expected]


@pytest.mark.parametrize("in_flight", [False, True], ids=["between-batches", "in-flight"])
def test_the_training_stream_resumes_exactly_with_workers(in_flight):
    expected, got = _resume_draws(17, 3, [2, 0, 1], 2, in_flight, 2)
    _assert_same_batches([b for b, _ in got], [b for b, _ in expected])
    assert [d for _, d in got] == [d for _, d in expected]


def test_rngs_empty_leaves_every_global_rng_alone():
    _reseed_globals(5)
    before = _global_states()
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=3, shuffle=True)
    list(ResumableLoader(loader, seed=0, rngs=()))
    after = _global_states()
    assert torch.equal(after[0], before[0]) and after[1] == before[1]
    assert np.array_equal(after[2][1], before[2][1])


def test_rngs_names_are_checked():
    with pytest.raises(ValueError, match="'cuda'"):
        ResumableLoader(Augmented(4), rngs=("torch", "cuda"))
    with pytest.raises(TypeError, match="sequence of names"):
        ResumableLoader(Augmented(4), rngs="torch")


def test_rewind_serves_the_in_flight_batch_again():
    adapter, _ = _adapter(11, 2, True, False, 0)
    batches = list(adapter)
    live, _ = _adapter(11, 2, True, False, 0)
    iterator = iter(live)
    for _ in range(4):
        next(iterator)  # batch 3 is "in flight" when the checkpoint is taken
    state = live.state_dict()
    resumed, _ = _adapter(11, 2, True, False, 0)
    resumed.load_state_dict(state)
    resumed.rewind(1)
    _assert_same_batches(list(resumed), batches[3:])
    with pytest.raises(ValueError, match="rewind"):
        resumed.rewind(resumed.position + 1)


def test_a_state_saved_at_the_end_resumes_to_an_empty_rest_then_the_next_epoch():
    adapter, _ = _adapter(7, 3, True, False, 0)
    adapter.set_epoch(2)
    list(adapter)
    resumed, _ = _adapter(7, 3, True, False, 0)
    resumed.load_state_dict(adapter.state_dict())
    resumed.set_epoch(2)
    assert list(resumed) == []
    resumed.set_epoch(3)
    adapter.set_epoch(3)
    _assert_same_batches(list(resumed), list(adapter))


def test_the_sampler_alone_saves_and_jumps():
    sampler = ResumableSampler(10, 3, seed=1)
    whole = [list(batch) for batch in sampler]
    assert len(whole) == len(sampler) == 4
    assert sorted(i for batch in whole for i in batch) == list(range(10))
    assert [list(batch) for batch in sampler] != whole  # a finished epoch moves on to the next
    other = ResumableSampler(10, 3, seed=1)
    other.load_state_dict({"epoch": 0, "position": 2})
    assert [list(batch) for batch in other] == whole[2:]
    assert other.state_dict() == {"epoch": 0, "position": 4}


def test_a_tagged_batch_is_a_list_with_only_its_key():
    """No per-batch __dict__; it reaches a worker process (pickled) with its key."""
    import pickle

    batch = ResumableSampler(10, 4, seed=0).batch(1)
    assert not hasattr(batch, "__dict__")
    back = pickle.loads(pickle.dumps(batch))
    assert type(back) is type(batch) and back == batch and back.key == batch.key


def test_a_stale_iterator_refuses_to_continue():
    adapter, _ = _adapter(10, 2, False, False, 0)
    iterator = iter(adapter)
    next(iterator)
    adapter.load_state_dict({"epoch": 0, "position": 3, "seed": 7})
    with pytest.raises(StaleIteratorError, match="iter"):
        next(iterator)
    assert [int(i[0]) for i, _ in adapter] == [6, 8]


def test_set_epoch_keeps_the_current_position_and_resets_another():
    adapter, _ = _adapter(10, 2, False, False, 0)
    iterator = iter(adapter)
    next(iterator), next(iterator)
    adapter.set_epoch(0)
    assert adapter.position == 2
    adapter.set_epoch(1)
    assert (adapter.epoch, adapter.position) == (1, 0)


@pytest.mark.parametrize("state, error", [
    ({"epoch": 0, "position": 1}, ValueError),
    ({"epoch": 0, "position": 1, "seed": 7, "extra": 0}, ValueError),
    ({"epoch": 0, "position": True, "seed": 7}, TypeError),
    ({"epoch": 0, "position": 6, "seed": 7}, ValueError),
    ({"epoch": -1, "position": 0, "seed": 7}, ValueError),
])
def test_malformed_state_is_refused(state, error):
    adapter, _ = _adapter(10, 2, False, False, 0)
    with pytest.raises(error, match="state"):
        adapter.load_state_dict(state)
    assert adapter.state_dict() == {"epoch": 0, "position": 0, "seed": 7}  # nothing changed


def test_the_loaders_settings_are_kept():
    dataset = Augmented(7)
    loader = DataLoader(dataset, batch_size=3, drop_last=True, collate_fn=lambda items: [i for i, _ in items])
    adapter = ResumableLoader(loader, seed=0)
    assert list(adapter) == [[0, 1, 2], [3, 4, 5]]
    assert len(adapter) == len(loader) == 2
    built = ResumableLoader(dataset, batch_size=4, seed=0)  # a bare dataset: no shuffling, keep the tail
    assert [batch[0].tolist() for batch in built] == [[0, 1, 2, 3], [4, 5, 6]]


def _note_worker(worker_id: int) -> None:
    calls = torch.utils.data.get_worker_info().dataset.dataset.calls
    with calls.get_lock():  # the other worker may be fetching (and counting) at the same moment
        calls.value += 1000


def test_the_worker_init_fn_is_kept():
    dataset = Augmented(4)
    list(ResumableLoader(DataLoader(dataset, batch_size=2, num_workers=2, worker_init_fn=_note_worker), seed=0))
    assert dataset.calls.value == 2 * 1000 + 4


def test_seed_defaults_to_the_loaders_generator():
    generator = torch.Generator().manual_seed(123)
    adapter = ResumableLoader(DataLoader(Augmented(5), batch_size=2, shuffle=True, generator=generator))
    assert adapter.seed == 123
    torch.manual_seed(321)
    assert ResumableLoader(DataLoader(Augmented(5), batch_size=2)).seed == 321


def test_orders_it_cannot_reproduce_are_refused():
    dataset = Augmented(6)
    weighted = DataLoader(dataset, batch_size=2, sampler=WeightedRandomSampler([1.0] * 6, 6))
    with pytest.raises(TypeError, match="WeightedRandomSampler"):
        ResumableLoader(weighted)
    with pytest.raises(TypeError, match="batch_sampler"):
        ResumableLoader(DataLoader(dataset, batch_sampler=[[0, 1], [2, 3]]))
    with pytest.raises(TypeError, match="replacement"):
        ResumableLoader(DataLoader(dataset, batch_size=2, sampler=torch.utils.data.RandomSampler(dataset, True)))


@pytest.mark.parametrize("data", [Numbers(), DataLoader(Numbers(), batch_size=2)], ids=["dataset", "loader"])
def test_iterable_datasets_are_refused_with_the_way_forward(data):
    with pytest.raises(TypeError, match="IterableDataset.*state_dict\\(\\)/load_state_dict\\(\\)"):
        ResumableLoader(data)


# -- sharding ----------------------------------------------------------------------------------------------
@given(length=st.integers(1, 40), world_size=st.integers(1, 5), data=st.data(), batch_size=st.integers(1, 6),
       shuffle=st.booleans(), drop_last=st.booleans(), shard_drop_last=st.booleans(), seed=st.integers(0, 2**32),
       epoch=st.integers(0, 5))
def test_shards_equal_distributed_samplers(length, world_size, data, batch_size, shuffle, drop_last, shard_drop_last,
                                           seed, epoch):
    rank = data.draw(st.integers(0, world_size - 1))
    reference = DistributedSampler(range(length), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                   drop_last=shard_drop_last)
    reference.set_epoch(epoch)
    ours = ResumableSampler(length, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank,
                            world_size=world_size, shard_drop_last=shard_drop_last)
    ours.set_epoch(epoch)
    expected = list(BatchSampler(reference, batch_size, drop_last))
    assert [list(batch) for batch in ours] == expected
    assert len(ours) == len(expected)


def test_a_distributed_loader_is_taken_over_with_its_rank():
    dataset = Augmented(11)
    sampler = DistributedSampler(dataset, num_replicas=3, rank=2, shuffle=True, seed=4)
    sampler.set_epoch(2)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler)
    expected = [batch[0].tolist() for batch in loader]
    adapter = ResumableLoader(loader)
    assert (adapter.seed, adapter.epoch) == (4, 2)
    assert [batch[0].tolist() for batch in adapter] == expected


def test_ranks_draw_different_augmentations():
    dataset = Augmented(8)
    per_rank = [list(ResumableLoader(dataset, batch_size=4, shuffle=False, seed=0, rank=r, world_size=2))
                for r in range(2)]
    assert not torch.equal(per_rank[0][0][1] - per_rank[0][0][0], per_rank[1][0][1] - per_rank[1][0][0])


# -- delegation to loaders that keep their own position ---------------------------------------------------
class StatefulLoader:
    """The StatefulDataLoader protocol in miniature: a position saved and jumped to in O(1)."""

    def __init__(self, items: list[int]) -> None:
        self.items, self.position, self.fetched = items, 0, 0

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        while self.position < len(self.items):
            self.fetched += 1
            self.position += 1
            yield self.items[self.position - 1]

    def state_dict(self) -> dict[str, int]:
        return {"cursor": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["cursor"]


def test_a_stateful_loader_is_delegated_to_as_it_is():
    live = StatefulLoader([10, 11, 12, 13, 14])
    adapter = ResumableLoader(live)
    assert adapter.delegate is live and len(adapter) == 5
    iterator = iter(adapter)
    assert [next(iterator), next(iterator)] == [10, 11]
    state = adapter.state_dict()
    assert state == {"cursor": 2}

    fresh = StatefulLoader([10, 11, 12, 13, 14])
    resumed = ResumableLoader(fresh)
    resumed.load_state_dict(state)
    assert list(resumed) == [12, 13, 14]
    assert fresh.fetched == 3  # the delegate's own O(1) jump, not a replay through the adapter
    with pytest.raises(TypeError, match="state_dict"):
        resumed.rewind(1)
    with pytest.raises(ValueError, match="batch_size"):
        ResumableLoader(StatefulLoader([1]), batch_size=2)


def test_code_that_sets_a_samplers_epoch_finds_the_adapter_instead():
    adapter, _ = _adapter(6, 2, True, False, 0)
    assert getattr(adapter, "sampler", None) is None  # BatchSource-style `loader.sampler.set_epoch` cannot bypass it
    assert callable(adapter.set_epoch)
