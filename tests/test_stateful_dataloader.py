"""torchdata's real ``StatefulDataLoader`` as the training loader: exact mid-epoch and preemption resumes (issue 16).

Two things used to break it: on resume, ``iter(loader)`` drew its base seed
from torch's global generator *after* the checkpoint's RNG state was put back
(the uninterrupted run drew it at the epoch start), so dropout was one draw
off; and a preemption checkpoint landed inside a batch, which a loader that
cannot step back skips on resume.  Now a resumed iterator draws nothing, and a
batch from such a loader is pinned (no checkpoint until it is done).
"""

from __future__ import annotations

import os
import signal
import warnings

import pytest
import torch
from torch import nn

from statemachine_trainer import Preempted, Trainer, TrainingModule
from statemachine_trainer.callbacks import ModelCheckpoint

from ._points_module import points

stateful_dataloader = pytest.importorskip("torchdata.stateful_dataloader")


class Dropout(TrainingModule):
    """Dropout draws from torch's global generator every step: any extra draw on resume changes the weights."""

    def __init__(self, signal_at: int = -1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 2))
        self.signal_at = signal_at

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        if self.trainer.global_step == self.signal_at:  # mid-batch: after the forward, before backward and step
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def fit(root, num_workers, ckpt_path=None, signal_at=-1, every_n_train_steps=None):
    callbacks = [ModelCheckpoint(every_n_train_steps=every_n_train_steps, save_top_k=-1, filename="{step}")] \
        if every_n_train_steps else []
    trainer = Trainer(max_epochs=2, seed=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=bool(callbacks), callbacks=callbacks, default_root_dir=root)
    model = Dropout(signal_at)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata 0.11 calls a deprecated torch API
        loader = stateful_dataloader.StatefulDataLoader(points(64), batch_size=8, shuffle=True,
                                                        num_workers=num_workers)
        trainer.fit(model, loader, ckpt_path=ckpt_path)
    return trainer, model


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_mid_epoch_checkpoint_resumes_bit_identical(tmp_path, num_workers):
    _, straight = fit(tmp_path / "straight", num_workers, every_n_train_steps=1)
    trainer, resumed = fit(tmp_path / "resumed", num_workers,
                           ckpt_path=tmp_path / "straight" / "checkpoints" / "step=5.ckpt")
    assert trainer.global_step == 16 and same_weights(straight, resumed)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_sigterm_mid_batch_checkpoints_after_the_batch_and_resumes_bit_identical(tmp_path, num_workers):
    _, straight = fit(tmp_path / "straight", num_workers)
    with pytest.raises(Preempted) as stopped:
        fit(tmp_path / "run", num_workers, signal_at=5)
    # The batch in flight (the 6th) finished first: the checkpoint holds a position between two batches.
    assert stopped.value.path.name == "preempted-epoch=0-step=6.ckpt"
    trainer, resumed = fit(tmp_path / "run", num_workers, ckpt_path="latest")
    assert trainer.global_step == 16 and same_weights(straight, resumed)
