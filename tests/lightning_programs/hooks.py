"""Every hook call of fit, validate, test and predict, recorded on a module and a callback.

In the spirit of Lightning's tests/tests_pytorch/models/test_hooks.py: each
hook records its name and its int/str arguments (batch_idx, epoch, stage,
dataloader_idx) and then does what the base class does, so the run is a
normal one.  Automatic optimization with gradient accumulation and clipping.
"""

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

MODULE_HOOKS = (
    "prepare_data", "setup", "teardown", "configure_model", "configure_optimizers", "configure_callbacks",
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_validation_model_eval", "on_validation_model_train", "on_test_start", "on_test_end",
    "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end", "on_test_model_eval",
    "on_test_model_train", "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end", "on_predict_model_eval", "on_before_batch_transfer",
    "transfer_batch_to_device", "on_after_batch_transfer", "on_before_backward", "backward", "on_after_backward",
    "on_before_optimizer_step", "configure_gradient_clipping", "optimizer_step", "on_before_zero_grad",
    "optimizer_zero_grad", "training_step", "validation_step", "test_step", "predict_step",
    "train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader",
)
CALLBACK_HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end", "on_test_start",
    "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
)


def _plain(args):
    return tuple(a for a in args if isinstance(a, (int, str)) and not isinstance(a, bool))


def _recording(name, calls, who):
    def hook(self, *args, **kwargs):
        calls.append((who, name, _plain(args) + _plain(kwargs.values())))
        return getattr(super(type(self), self), name)(*args, **kwargs)
    hook.__name__ = name
    return hook


def make_classes(calls):
    class Recorded(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.cross_entropy(self.layer(x), y))

        def predict_step(self, batch, batch_idx):
            return self.layer(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.layer.parameters(), lr=0.1)

        def _loader(self, n):
            generator = torch.Generator().manual_seed(n)
            x = torch.randn(n, 4, generator=generator)
            return DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=2)

        def train_dataloader(self):
            return self._loader(8)

        def val_dataloader(self):
            return self._loader(4)

        def test_dataloader(self):
            return self._loader(4)

        def predict_dataloader(self):
            return self._loader(4)

    class Base(Recorded):  # the recorder's super() is the program's own module
        pass

    for name in MODULE_HOOKS:
        setattr(Base, name, _recording(name, calls, "module"))

    class Recorder(Callback):
        pass

    for name in CALLBACK_HOOKS:
        setattr(Recorder, name, _recording(name, calls, "callback"))
    return Base, Recorder


def run(root):
    seed_everything(0)
    calls = []
    module_class, callback_class = make_classes(calls)
    model = module_class()
    trainer = Trainer(default_root_dir=root, max_epochs=2, accumulate_grad_batches=2, gradient_clip_val=1.0,
                      num_sanity_val_steps=1, callbacks=[callback_class()], enable_model_summary=False,
                      enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.fit(model)
    stages = {"fit": list(calls)}
    for stage in ("validate", "test", "predict"):
        calls.clear()
        getattr(trainer, stage)(model)
        stages[stage] = list(calls)
    return {"model": model, "calls": stages}
