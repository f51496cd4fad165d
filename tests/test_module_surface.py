"""The LightningModule surface ported code touches: logger access, print, all_gather, freeze, hyperparameters,
load_from_checkpoint, CSVLogger's Lightning names, ModelCheckpoint file names, torch.compile, precision aliases,
and the rank-zero helpers and type aliases of ``statemachine_trainer.utilities``."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statemachine_trainer import ConfigError, Trainer, TrainingModule
from statemachine_trainer._results import LogError
from statemachine_trainer.callbacks import ModelCheckpoint
from statemachine_trainer.checkpoint import CheckpointError, load_module_state
from statemachine_trainer.loggers import CSVLogger
from statemachine_trainer.module import LIGHTNING_ONLY, UnsupportedError
from statemachine_trainer.utilities import rank_zero_only
from statemachine_trainer.utilities.types import STEP_OUTPUT, OptimizerLRScheduler


def data(n: int = 16, batch_size: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    return DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=batch_size)


class Net(TrainingModule):
    def __init__(self, hidden: int = 4, lr: float = 0.1, tag: str = "a") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx) -> STEP_OUTPUT:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> OptimizerLRScheduler:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def trainer(tmp_path, **flags) -> Trainer:
    flags = {"max_epochs": 2, "enable_progress_bar": False, "default_root_dir": tmp_path, "seed": 0, **flags}
    return Trainer(**flags)


# -- logger, loggers, print --------------------------------------------------------------------------------
def test_logger_loggers_and_print_inside_a_run(tmp_path, capsys):
    seen = {}

    class Probe(Net):
        def on_train_start(self) -> None:
            seen["logger"], seen["loggers"] = self.logger, self.loggers
            self.print("hello", "from", "rank", 0, sep="-")

    module = Probe()
    assert module.logger is None and module.loggers == []  # outside a run, as in Lightning
    run = trainer(tmp_path, max_epochs=1)
    run.fit(module, data())
    assert isinstance(seen["logger"], CSVLogger) and seen["loggers"] == [seen["logger"]]
    assert "hello-from-rank-0\n" in capsys.readouterr().out


def test_print_is_silent_on_ranks_other_than_zero(tmp_path, capsys):
    class Probe(Net):
        def on_train_start(self) -> None:
            strategy = self.trainer.strategy
            strategy.is_rank_zero = False  # as on a second DDP rank (is_global_zero reads it)
            self.print("not shown")
            del strategy.is_rank_zero

    run = trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    run.fit(Probe(), data())
    assert "not shown" not in capsys.readouterr().out


# -- all_gather, freeze ----------------------------------------------------------------------------------
def test_all_gather_in_one_process_returns_tensors_and_keeps_the_structure(tmp_path):
    gathered = {}

    class Probe(Net):
        def on_train_start(self) -> None:
            gathered["value"] = self.all_gather({"a": torch.ones(2), "b": [3, 4.5]})

    trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False).fit(Probe(), data())
    value = gathered["value"]
    assert torch.equal(value["a"], torch.ones(2))
    assert [t.item() for t in value["b"]] == [3, 4.5] and all(isinstance(t, torch.Tensor) for t in value["b"])
    with pytest.raises(RuntimeError, match="all_gather.*needs a Trainer"):
        Net().all_gather(torch.ones(1))


def test_all_gather_refuses_what_is_not_a_tensor(tmp_path):
    class Probe(Net):
        def on_train_start(self) -> None:
            self.all_gather("text")

    with pytest.raises(TypeError, match="gathers tensors and numbers.*not str"):
        trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False).fit(Probe(), data())


def test_freeze_and_unfreeze():
    module = Net()
    module.freeze()
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    module.unfreeze()
    assert module.training and all(p.requires_grad for p in module.parameters())


# -- self.log(rank_zero_only=) ---------------------------------------------------------------------------------
def test_log_rank_zero_only_logs_in_one_process_and_refuses_sync_dist(tmp_path):
    class Probe(Net):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("only_zero", loss, rank_zero_only=True, on_epoch=True)
            return loss

    run = trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    run.fit(Probe(), data())
    assert "only_zero_epoch" in run.callback_metrics

    class Contradiction(Net):
        def training_step(self, batch, batch_idx):
            self.log("x", 1.0, rank_zero_only=True, sync_dist=True)

    with pytest.raises(LogError, match="sync_dist=True, rank_zero_only=True.*drop sync_dist"):
        trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False).fit(Contradiction(), data())


# -- save_hyperparameters ---------------------------------------------------------------------------------
class WithBackbone(TrainingModule):
    def __init__(self, backbone: nn.Module, lr: float = 0.1, width: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone, self.head = backbone, nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_save_hyperparameters_ignore_names_dict_and_namespace():
    assert dict(WithBackbone(nn.Linear(3, 3)).hparams) == {"lr": 0.1, "width": 3}

    class Named(TrainingModule):
        def __init__(self, a: int, b: int = 2, **rest) -> None:
            super().__init__()
            self.save_hyperparameters("a", "extra")

    assert dict(Named(1, extra="x").hparams) == {"a": 1, "extra": "x"}

    class FromDict(TrainingModule):
        def __init__(self, config) -> None:
            super().__init__()
            self.save_hyperparameters(config)

    assert dict(FromDict({"lr": 0.5}).hparams) == {"lr": 0.5}
    assert dict(FromDict(argparse.Namespace(lr=0.25)).hparams) == {"lr": 0.25}
    with pytest.raises(ValueError, match=r"\['missing'\] are not arguments"):
        type("Bad", (TrainingModule,), {"__init__": lambda self: (TrainingModule.__init__(self),
                                                                  self.save_hyperparameters("missing"))})()


def test_save_hyperparameters_collects_the_subclass_init_arguments_as_lightning_does():
    class Base(TrainingModule):
        def __init__(self, lr: float = 0.1, **kwargs) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Child(Base):
        def __init__(self, depth: int, lr: float = 0.2) -> None:
            super().__init__(lr=lr * 10)

    # Lightning walks every __init__ on the stack; the outermost (the subclass's) value wins.
    assert dict(Child(depth=3).hparams) == {"lr": 0.2, "depth": 3}


def test_a_module_hyperparameter_warns_with_the_ignore_fix():
    class Keeps(TrainingModule):
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.save_hyperparameters()

    with pytest.warns(UserWarning, match=r"ignore=\['backbone'\]"):
        Keeps(nn.Linear(1, 1))


def test_save_hyperparameters_logger_false_writes_no_hparams_file(tmp_path):
    class Quiet(Net):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__(lr=lr)
            self.save_hyperparameters(logger=False)

    run = trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    run.fit(Quiet(), data())
    assert not (run.logger.log_dir / "hparams.json").exists()
    run = trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    run.fit(Net(hidden=5), data())
    assert json.loads((run.logger.log_dir / "hparams.json").read_text()) == {"hidden": 5, "lr": 0.1, "tag": "a"}


# -- load_from_checkpoint and the weights one-liner ------------------------------------------------------------
def test_load_from_checkpoint_rebuilds_the_module_with_its_hyperparameters_and_weights(tmp_path):
    module = Net(hidden=6, lr=0.05, tag="b")
    checkpoint = ModelCheckpoint(monitor="val_loss")
    run = trainer(tmp_path, callbacks=[checkpoint])
    run.fit(module, data(), data(8))
    loaded = Net.load_from_checkpoint(checkpoint.best_model_path)
    assert dict(loaded.hparams) == {"hidden": 6, "lr": 0.05, "tag": "b"}
    assert loaded.net[0].out_features == 6
    best = load_module_state(checkpoint.best_model_path)
    assert all(torch.equal(best[key], value) for key, value in loaded.state_dict().items())
    overridden = Net.load_from_checkpoint(checkpoint.best_model_path, lr=0.5)
    assert overridden.hparams.lr == 0.5 and overridden.hparams.hidden == 6


def test_load_from_checkpoint_asks_for_what_could_not_be_stored(tmp_path):
    class Keeps(WithBackbone):
        def __init__(self, backbone: nn.Module, lr: float = 0.1, width: int = 3) -> None:
            TrainingModule.__init__(self)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.save_hyperparameters()  # the backbone too: not JSON-able, so not stored
            self.backbone, self.head = backbone, nn.Linear(width, 2)

    run = trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    run.fit(Keeps(nn.Linear(3, 3)), data())
    path = run.save_checkpoint(tmp_path / "keeps.ckpt")
    with pytest.raises(ConfigError, match=r"\['backbone'\] could not be stored.*load_from_checkpoint\(path, backbone="):
        Keeps.load_from_checkpoint(path)
    loaded = Keeps.load_from_checkpoint(path, backbone=nn.Linear(3, 3))
    assert torch.equal(loaded.head.weight, run.module.head.weight)
    assert torch.equal(loaded.backbone.weight, run.module.backbone.weight)


def test_load_module_state_is_a_plain_state_dict_for_inference(tmp_path):
    run = trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    run.fit(Net(), data())
    path = run.save_checkpoint(tmp_path / "final.ckpt")
    torch.save(load_module_state(path), tmp_path / "model.pt")
    plain = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(plain) == set(run.module.state_dict())
    with pytest.raises(CheckpointError):
        load_module_state(tmp_path / "model.pt")  # not a checkpoint directory: refused, named


# -- loggers ------------------------------------------------------------------------------------------------
def test_csv_logger_takes_lightning_names_and_has_an_experiment(tmp_path):
    logger = CSVLogger(save_dir=tmp_path, name="runs")
    assert logger.save_dir == tmp_path and logger.root_dir == tmp_path / "runs"
    assert logger.log_dir == tmp_path / "runs" / "version_0"
    logger.experiment.log_metrics({"acc": torch.tensor(0.5)})
    logger.experiment.log_metrics({"acc": 0.75}, step=7)
    logger.experiment.log_hparams({"lr": 0.1})
    logger.experiment.save()
    lines = Path(logger.experiment.metrics_file_path).read_text().splitlines()
    assert lines == ["step,acc", "0,0.5", "7,0.75"]
    assert json.loads((logger.log_dir / "hparams.json").read_text()) == {"lr": 0.1}


# -- ModelCheckpoint file names ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("template", "auto", "expected"), [
    ("{epoch}-{val_loss:.2f}", True, "epoch=1-val_loss=0.75.ckpt"),
    ("{epoch}-{val_loss:.2f}", False, "1-0.75.ckpt"),
    (None, True, "epoch=1-step=8.ckpt"),
    ("best-{epoch:02d}", True, "best-epoch=01.ckpt"),
])
def test_checkpoint_file_names_as_lightning_writes_them(tmp_path, template, auto, expected):
    class Scored(Net):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", 0.75)

    checkpoint = ModelCheckpoint(filename=template, auto_insert_metric_name=auto)
    trainer(tmp_path, callbacks=[checkpoint], logger=False).fit(Scored(), data(), data(8))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith(".")) == [expected]


# -- torch.compile --------------------------------------------------------------------------------------------
def test_fit_of_a_compiled_module_trains_the_module_itself_bit_identically(tmp_path):
    torch.manual_seed(0)
    plain = Net()
    trainer(tmp_path / "plain", logger=False, enable_checkpointing=False).fit(plain, data())
    torch.manual_seed(0)
    original = Net()
    compiled = torch.compile(original, backend="eager")  # the wrapper torch.compile returns; no C compiler needed
    run = trainer(tmp_path / "compiled", logger=False, enable_checkpointing=False)
    run.fit(compiled, data())
    assert run.module is original  # the module was trained in place: hooks, hparams, state_dict keys as before
    assert "_orig_mod" not in str(list(original.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), original.state_dict().values()))
    assert run.validate(torch.compile(original, backend="eager"), data(8))[0]["val_loss"] > 0


# -- precision aliases ------------------------------------------------------------------------------------------
def test_precision_aliases_of_lightning():
    assert Trainer(precision="bf16", accelerator="cpu").precision.precision == "bf16-mixed"
    assert Trainer(precision=32, accelerator="cpu").precision.precision == "32"
    for sixteen in (16, "16"):  # Lightning's spelling of 16-mixed, which needs CUDA here as there
        with pytest.raises(ConfigError, match="'16-mixed' needs a CUDA device"):
            Trainer(precision=sixteen, accelerator="cpu")
    with pytest.raises(ConfigError, match="precision='64' is not supported.*aliases"):
        Trainer(precision="64", accelerator="cpu")
    with pytest.raises(ConfigError, match="precision=True is not supported"):
        Trainer(precision=True, accelerator="cpu")


# -- utilities --------------------------------------------------------------------------------------------------
def test_rank_zero_only_runs_on_rank_zero_only(monkeypatch):
    calls = []

    @rank_zero_only
    def note(value):
        calls.append(value)
        return value

    assert note(1) == 1
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert note(2) is None
    assert calls == [1] and note.__name__ == "note"


def test_the_trainer_sets_the_rank_for_ported_rank_zero_only_code(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 3)  # stale, e.g. from an earlier run
    trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False).fit(Net(), data())
    assert rank_zero_only.rank == 0


# -- the rest of LightningModule's surface --------------------------------------------------------------------
def test_ranks_dtype_and_device_outside_and_inside_a_run(tmp_path):
    module, seen = Net(), {}
    assert (module.global_rank, module.local_rank, module.on_gpu, module.dtype) == (0, 0, False, torch.float32)

    class Probe(Net):
        def on_train_start(self) -> None:
            seen["ranks"] = (self.global_rank, self.local_rank, self.trainer.world_size)

    run = trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    run.fit(Probe(), data())
    assert seen["ranks"] == (0, 0, 1) and (run.global_rank, run.local_rank, run.world_size) == (0, 0, 1)
    assert module.double().dtype == torch.float64


def test_toggled_optimizer_restores_requires_grad_even_when_the_block_raises():
    module = Net()
    only_first = torch.optim.SGD(module.net[0].parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="inside"), module.toggled_optimizer(only_first):
        assert [p.requires_grad for p in module.parameters()] == [True, True, False, False]
        raise RuntimeError("inside")
    assert all(p.requires_grad for p in module.parameters())


def test_strict_loading_is_load_from_checkpoints_default(tmp_path):
    run = trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    run.fit(Net(), data())
    path = run.save_checkpoint(tmp_path / "net.ckpt")

    class Wider(Net):
        strict_loading = False

        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.extra = nn.Linear(1, 1)  # not in the checkpoint

    assert torch.equal(Wider.load_from_checkpoint(path).net[0].weight, run.module.net[0].weight)
    with pytest.raises(RuntimeError, match="Missing key"):
        Wider.load_from_checkpoint(path, strict=True)


@pytest.mark.parametrize("name", sorted(LIGHTNING_ONLY))
def test_lightning_names_we_lack_are_refused_with_the_alternative(name):
    module = Net()
    with pytest.raises(UnsupportedError, match=f"Net.{name} is Lightning API .*: {LIGHTNING_ONLY[name][:20]}"):
        attribute = getattr(module, name)
        attribute()
