"""Exact by default: ``Trainer(resumable_data=True)`` makes a plain DataLoader resumable (``data/_auto.py``).

* killed with a real SIGKILL mid-epoch (``tests/_exact_default_script.py``:
  shuffle, workers 0 and 2, dropout, an augmentation in ``collate_fn``), a run
  with plain DataLoaders resumes bit-identical with no code change; with
  ``resumable_data=False`` it does not (and warns, as before);
* what is rebuilt, what is left alone (and warned about once), the seed
  rules, validation and test loaders, the user's loader objects returned by
  ``trainer.*_dataloader``;
* under DDP (two real gloo processes) the ranks shuffle with one seed, so
  their shards partition the data.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
)

from statemachine_trainer import Callback, ConfigError, Trainer, TrainingModule
from statemachine_trainer.checkpoint import find_latest
from statemachine_trainer.data import ResumableLoader
from statemachine_trainer.data._auto import data_seed
from statemachine_trainer.testing import ResumeMismatch, assert_kill_resume_exact, compare_final_states

from ._reference_runs import run_references

SCRIPT = str(Path(__file__).parent / "_exact_default_script.py")
RUNS = {"workers0": [sys.executable, SCRIPT, "."], "workers2": [sys.executable, SCRIPT, ".", "--workers", "2"],
        "opt_out": [sys.executable, SCRIPT, ".", "--opt-out"]}
KILL_AT = (5, 0.05)  # a little after the 5th checkpoint: a moment drawn by time (maybe mid-write, maybe later)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One uninterrupted run of each, started together."""
    return run_references(tmp_path_factory, RUNS)


def _killed_in_step_5_and_resumed(name: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``name`` until it sends itself SIGKILL in step 5 of its 12-batch epoch (a known mid-epoch position: a
    kill drawn by time can land after the epoch's last batch), then ``--resume latest``, from step 4's checkpoint."""
    killed = subprocess.run([*RUNS[name], "--kill-at-step", "5"], cwd=workdir, capture_output=True, text=True,
                            check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    latest, _ = find_latest(workdir / "checkpoints")
    assert latest.name == "epoch=0-step=4.ckpt"
    resumed = subprocess.run([*RUNS[name], "--resume", "latest"], cwd=workdir, capture_output=True, text=True,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    return resumed


@pytest.mark.parametrize("name", ["workers0", "workers2"])
def test_a_plain_dataloader_killed_mid_epoch_resumes_bit_identical(references, tmp_path, name):
    _killed_in_step_5_and_resumed(name, tmp_path)
    compare_final_states(references[name] / "final.ckpt", tmp_path / "final.ckpt")


def test_a_plain_dataloader_killed_at_a_moment_drawn_by_time_resumes_bit_identical(references, tmp_path):
    """The whole process group (the trainer and its 2 workers) killed from outside, wherever it is by then."""
    assert_kill_resume_exact(RUNS["workers2"], tmp_path, *KILL_AT, uninterrupted=references["workers2"])


def test_opting_out_resumes_the_plain_dataloader_as_before_not_exactly(references, tmp_path):
    """The same kill in step 5: the resume from step 4's checkpoint cannot put a plain DataLoader at its position,
    so it warns and ends differently.  (After the epoch's last batch even that resume would be exact: the next
    epoch's iterator starts from the restored RNG, as in the uninterrupted run.)"""
    resumed = _killed_in_step_5_and_resumed("opt_out", tmp_path)
    assert "4 of 12 batches done" in resumed.stderr and "is not the uninterrupted run" in resumed.stderr  # it warns
    with pytest.raises(ResumeMismatch):
        compare_final_states(references["opt_out"] / "final.ckpt", tmp_path / "final.ckpt")


# -- in one process ------------------------------------------------------------------------------------------------
def points(n: int = 24) -> TensorDataset:
    return TensorDataset(torch.arange(n), torch.randn(n, 3, generator=torch.Generator().manual_seed(0)))


class Net(TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].tolist())
        return self.layer(batch[1]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val", self.layer(batch[1]).mean())

    def test_step(self, batch, batch_idx):
        self.log("test", self.layer(batch[1]).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Sources(Callback):
    """What the run reads (``sources``) and what it shows (``trainer.*_dataloader``), seen from inside the run."""

    def __init__(self) -> None:
        self.read: dict[str, object] = {}
        self.shown: dict[str, object] = {}

    def on_train_start(self, trainer, module):
        self.read.update({stage: s.loader for stage, s in trainer.sources.items()})
        self.shown.update(train=trainer.train_dataloader, validate=trainer.val_dataloaders)

    def on_test_start(self, trainer, module):
        self.read["test"] = trainer.sources["test"].loader
        self.shown["test"] = trainer.test_dataloaders


def quiet(**flags) -> Trainer:
    defaults = {"enable_progress_bar": False, "enable_checkpointing": False, "logger": False,
                "enable_model_summary": False, "num_sanity_val_steps": 0, "max_epochs": 1}
    return Trainer(**{**defaults, **flags})


def fit(train, val=None, **flags) -> tuple[Net, Sources]:
    sources = Sources()
    module = Net()
    quiet(callbacks=[sources], **flags).fit(module, train, val)
    return module, sources


def test_a_plain_dataloader_is_read_through_a_resumable_loader_and_shown_as_given():
    train, val = DataLoader(points(), batch_size=4, shuffle=True), DataLoader(points(8), batch_size=4)
    module, sources = fit(train, val, seed=5)
    assert isinstance(sources.read["train"], ResumableLoader) and isinstance(sources.read["validate"], ResumableLoader)
    assert sources.shown == {"train": train, "validate": val}  # the user's own objects
    assert sources.read["train"].seed == 5 and sources.read["train"].batch_sampler.shuffle
    assert module.seen == [batch[0].tolist() for batch in ResumableLoader(train, seed=5)]  # our seeded order


def test_every_setting_of_the_dataloader_is_kept():
    def collate(samples):
        return [torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples]) * 0]

    def init(worker_id):
        pass

    train = DataLoader(points(25), batch_size=4, shuffle=True, drop_last=True, num_workers=2, collate_fn=collate,
                       worker_init_fn=init, persistent_workers=True, timeout=30, prefetch_factor=3, pin_memory=False)
    module, sources = fit(train, seed=1)
    inner = sources.read["train"].loader
    assert (inner.num_workers, inner.collate_fn, inner.worker_init_fn, inner.persistent_workers, inner.timeout,
            inner.prefetch_factor, inner.pin_memory) == (2, collate, init, True, 30, 3, False)
    assert inner.dataset.dataset is train.dataset and len(sources.read["train"]) == 6  # drop_last: 25 // 4
    assert module.seen == [batch[0].tolist() for batch in ResumableLoader(train, seed=1)]
    assert len({i for batch in module.seen for i in batch}) == 24  # shuffled: one sample dropped, the rest once


def test_opting_out_reads_the_dataloader_as_given():
    train, val = DataLoader(points(), batch_size=4, shuffle=True), DataLoader(points(8), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        _, sources = fit(train, val, resumable_data=False)
    assert sources.read == {"train": train, "validate": val} and sources.shown == sources.read


def test_the_flag_is_checked():
    with pytest.raises(ConfigError, match="resumable_data must be True or False"):
        Trainer(resumable_data="yes")


class Stream(IterableDataset):
    def __iter__(self):
        return iter(points(8))


class OwnLoader(DataLoader):
    pass


LEFT_ALONE = {
    "subclass": (lambda: OwnLoader(points(), batch_size=4), "DataLoader subclass"),
    "iterable": (lambda: DataLoader(Stream(), batch_size=4), "IterableDataset"),
    "sampler": (lambda: DataLoader(points(), batch_size=4, sampler=SubsetRandomSampler(range(24))), "custom sampler"),
    "batch_sampler": (lambda: DataLoader(points(), batch_sampler=BatchSampler(SequentialSampler(range(24)), 4, False)),
                      "custom batch_sampler"),
    "replacement": (lambda: DataLoader(points(), batch_size=4, sampler=RandomSampler(range(24), replacement=True)),
                    "with replacement"),
    "num_samples": (lambda: DataLoader(points(), batch_size=4, sampler=RandomSampler(range(24), num_samples=12)),
                    "num_samples"),
    "in_order": (lambda: DataLoader(points(), batch_size=4, num_workers=1, in_order=False), "in_order=False"),
}


@pytest.mark.parametrize("case", list(LEFT_ALONE))
def test_a_dataloader_that_cannot_be_rebuilt_is_read_as_given_with_one_warning(case):
    make, reason = LEFT_ALONE[case]
    train, val = make(), make()
    with pytest.warns(UserWarning, match="iterated as given") as caught:
        _, sources = fit(train, val, limit_train_batches=2, limit_val_batches=1, max_epochs=2)
    assert sources.read == {"train": train, "validate": val}
    said = [str(w.message) for w in caught if "iterated as given" in str(w.message)]
    assert len(said) == 2 and all(reason in message for message in said)  # once per stage, with the reason
    assert said[0].startswith("The train DataLoader") and said[1].startswith("The validate DataLoader")


def test_loaders_with_a_position_and_other_iterables_are_used_as_they_are_silently():
    from torchdata.stateful_dataloader import StatefulDataLoader

    stateful = StatefulDataLoader(points(), batch_size=4, shuffle=True)
    ours = ResumableLoader(DataLoader(points(), batch_size=4), seed=3)
    batches = list(DataLoader(points(8), batch_size=4))  # a list of batches is a loader too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for loader in (stateful, ours, batches):
            _, sources = fit(loader)
            assert sources.read["train"] is loader


def test_the_seed_is_the_generator_then_the_distributed_sampler_then_the_run_then_torch():
    seeded = torch.Generator().manual_seed(11)
    assert data_seed(DataLoader(points(), batch_size=4, shuffle=True, generator=seeded), 5) == 11
    sharded = DistributedSampler(points(), num_replicas=2, rank=0, seed=12)
    assert data_seed(DataLoader(points(), batch_size=4, sampler=sharded), 5) == 12
    assert data_seed(DataLoader(points(), batch_size=4, shuffle=True), 5) == 5
    torch.manual_seed(13)
    assert data_seed(DataLoader(points(), batch_size=4, shuffle=True), None) == 13
    _, sources = fit(DataLoader(points(), batch_size=4, shuffle=True, generator=seeded), seed=5)
    assert sources.read["train"].seed == 11  # the loader's own generator wins over Trainer(seed=...)


def test_a_resume_uses_the_seed_the_checkpoint_recorded(tmp_path):
    def loader():
        return DataLoader(points(), batch_size=4, shuffle=True)

    class MidEpoch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                trainer.request_checkpoint(tmp_path / "mid.ckpt")

    torch.manual_seed(21)  # no Trainer(seed=...): the data seed is torch.initial_seed()
    quiet(callbacks=[MidEpoch()]).fit(Net(), loader())
    torch.manual_seed(22)  # a new process that seeds differently
    sources, module = Sources(), Net()
    quiet(callbacks=[sources]).fit(module, loader(), ckpt_path=tmp_path / "mid.ckpt")
    assert sources.read["train"].seed == 21 and sources.read["train"].position == 6
    order = [batch[0].tolist() for batch in ResumableLoader(loader(), seed=21)]
    assert module.seen == order[2:]  # the rest of the epoch, in the first run's order


def test_validate_and_test_read_plain_loaders_through_resumable_loaders():
    val, test = DataLoader(points(8), batch_size=4), DataLoader(points(8), batch_size=4)
    sources = Sources()
    trainer = quiet(callbacks=[sources])
    module = Net()
    assert trainer.validate(module, val)[0]["val"] == pytest.approx(module.layer(points(8).tensors[1]).mean().item())
    assert trainer.val_dataloaders is val
    trainer.test(module, test)
    assert isinstance(sources.read["test"], ResumableLoader) and sources.shown["test"] is test


def test_ddp_ranks_shuffle_with_one_seed_so_their_shards_partition_the_data(tmp_path):
    """Two real gloo processes with Trainer(seed=5), which seeds each rank's RNGs with 5 + rank: the data seed
    must still be 5 on both, or the shards overlap and miss samples."""
    done = subprocess.run([sys.executable, SCRIPT, ".", "--strategy", "ddp", "--devices", "2", "--seen"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen-rank{rank}.json").read_text()) for rank in (0, 1)]
    for epoch in (0, 1):
        shards = [set(ranks[epoch * 48:(epoch + 1) * 48]) for ranks in seen]  # 96 samples: 48 a rank an epoch
        assert len(shards[0]) == len(shards[1]) == 48 and shards[0] | shards[1] == set(range(96))


def test_ddp_shards_a_dataloader_with_the_runs_seed_with_the_flag_off_too():
    """``resumable_data=False`` under DDP still shards a DataLoader (as before): with the run's seed, not the rank's."""
    from statemachine_trainer._strategy_flag import make_strategy

    shards = []
    for rank in (0, 1):
        strategy = make_strategy("ddp", 2, "cpu")
        strategy.rank, strategy.world_size = rank, 2
        torch.manual_seed(5 + rank)  # what Trainer(seed=5) does on each rank
        shard = strategy.shard(DataLoader(points(), batch_size=4, shuffle=True), 5)
        shards.append({i for batch in shard for i in batch[0].tolist()})
    assert len(shards[0]) == len(shards[1]) == 12 and shards[0] | shards[1] == set(range(24))


def test_a_mid_epoch_checkpoint_without_a_data_position_warns_when_resumed_by_default(tmp_path):
    """Written with resumable_data=False (or before the flag), it holds no position: the default cannot jump."""
    class MidEpoch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                trainer.request_checkpoint(tmp_path / "mid.ckpt")

    def loader():
        return DataLoader(points(), batch_size=4, shuffle=True)

    quiet(callbacks=[MidEpoch()], resumable_data=False).fit(Net(), loader())
    with pytest.warns(UserWarning, match=r"middle of an epoch \(2 of 6 batches done\) from a checkpoint that holds "
                                         "no position for its loader"):
        quiet().fit(Net(), loader(), ckpt_path=tmp_path / "mid.ckpt")


def test_prediction_reads_its_dataloader_as_given():
    class Predicting(Net):
        def predict_step(self, batch, batch_idx):
            return batch[0]

    loader = DataLoader(points(8), batch_size=4)
    trainer = quiet()
    assert torch.cat(trainer.predict(Predicting(), loader)).tolist() == list(range(8))
    assert trainer.run.sources["predict"].loader is loader
