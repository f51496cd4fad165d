"""``TrainingModule``: an ``nn.Module`` with the steps and hooks the built-in loops call.

It reads like a LightningModule on purpose -- ``training_step``,
``configure_optimizers``, ``self.log``, the ``on_*`` hooks, manual
optimization -- so existing code moves over with renames at most.  The
difference is who calls what: every hook below is called by a loop's table
transition (see ``specs/loops``), never from a side door, and hooks you do not
override are not called at all.

A ``training_step`` may be a generator that yields one loss per optimizer:
shared work (e.g. a GAN's generated batch) runs once, and each ``yield``
hands a loss to the next optimizer's backward and step.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._hook_spec import hook_default, install_stubs
from .data._source import move_to_device

if TYPE_CHECKING:
    from ._run import Run

__all__ = ["FunctionModule", "ManualOptimizationError", "TrainingModule"]


class ManualOptimizationError(RuntimeError):
    """A manual-optimization call was made in automatic mode (or the reverse)."""


class HyperParameters(dict):
    """A dict whose keys also read as attributes (``hparams.lr``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no hyperparameter {name!r}; saved: {sorted(self)}") from None


@install_stubs  # one no-op per hook of the spec (``_hook_spec.HOOKS``): the relay skips them until overridden
class TrainingModule(nn.Module):
    """Subclass and override the steps you need.  Hooks you leave alone cost nothing."""

    #: False: the Trainer calls training_step once per batch and you call backward/step yourself.
    automatic_optimization: bool = True

    def __init__(self) -> None:
        super().__init__()
        self._run: Run | None = None  # the run this module takes part in (set through the `trainer` setter)
        self.hparams = HyperParameters()

    # -- steps ------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        """Return the loss (a tensor, or a dict with a ``"loss"`` key), None to skip the step, or yield losses."""
        raise NotImplementedError(f"{type(self).__name__} must define training_step(self, batch, batch_idx) "
                                  "to be trained with Trainer.fit().")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define validation_step(self, batch, batch_idx) "
                                  "to be validated.")

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define test_step(self, batch, batch_idx) to be tested.")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """By default, the module applied to the batch (its first element if it is a tuple/list)."""
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define configure_optimizers() to be trained.")

    # -- hooks with a default behaviour (Lightning's); the no-op ones are generated from _hook_spec ----------
    @hook_default
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a fetched batch before it moves to the device (e.g. CPU augmentation); return it."""
        return batch

    @hook_default
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the batch to ``device``: every tensor (anything with ``.to``) in nested lists, tuples and dicts.

        Override for a batch type of your own; call ``super()`` for the rest.
        """
        return move_to_device(batch, device)

    @hook_default
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change the batch once it is on the device (e.g. GPU augmentation); return it."""
        return batch

    @hook_default
    def on_validation_model_eval(self) -> None:
        self.eval()

    @hook_default
    def on_validation_model_train(self) -> None:
        """Called after validation only when overridden; otherwise each submodule's mode is restored as it was."""
        self.train()

    @hook_default
    def on_test_model_eval(self) -> None:
        self.eval()

    @hook_default
    def on_test_model_train(self) -> None:
        """Called after testing only when overridden; otherwise each submodule's mode is restored as it was."""
        self.train()

    @hook_default
    def on_predict_model_eval(self) -> None:
        self.eval()

    # -- data (optional: Trainer.fit/validate/... can take loaders instead) ------------------------
    train_dataloader: Any = None
    val_dataloader: Any = None
    test_dataloader: Any = None
    predict_dataloader: Any = None

    # -- logging ----------------------------------------------------------------------------------
    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool = True, on_step: bool | None = None,
            on_epoch: bool | None = None, reduce_fx: str = "mean", sync_dist: bool = False,
            batch_size: int | None = None, add_dataloader_idx: bool = True) -> None:
        """Record a scalar (tensor, number or torchmetrics ``Metric``) under ``name``.

        ``on_step``/``on_epoch`` default to per-step in training steps and
        per-epoch elsewhere; epoch values are reduced with ``reduce_fx``
        (``mean`` weighted by batch size, ``sum``, ``max``, ``min``).  A
        ``Metric`` is computed and reset at epoch end (torchmetrics syncs it
        across ranks itself).  ``sync_dist``: under ``strategy="ddp"`` the epoch
        value is reduced over every rank's data; step values stay per rank (no
        collective per step).  ``add_dataloader_idx``: with several evaluation
        dataloaders, ``name`` gets the suffix ``/dataloader_idx_N``; pass False
        to log one value under ``name`` over all of them.
        """
        run = self._run
        if run is None:
            self._require_trainer("log")  # raises the explanatory error
        run.results.log(name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, batch_size, sync_dist,
                        add_dataloader_idx)

    def log_dict(self, values: Mapping[str, Any], **kwargs: Any) -> None:
        for name, value in values.items():
            self.log(name, value, **kwargs)

    def save_hyperparameters(self, *names: str) -> None:
        """Record the calling ``__init__``'s arguments (all, or ``names``) in ``self.hparams``.

        Loggers write them at ``fit()`` start; read them back as ``self.hparams.lr``.
        """
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        if caller is None:  # pragma: no cover - CPython always has frames
            raise RuntimeError("save_hyperparameters() could not see its caller's arguments.")
        info = inspect.getargvalues(caller)
        values = {name: info.locals[name] for name in info.args[1:]}
        if info.keywords:
            values.update(info.locals[info.keywords])
        if names:
            unknown = sorted(set(names) - set(values))
            if unknown:
                raise ValueError(f"save_hyperparameters({', '.join(map(repr, names))}): {unknown} are not arguments "
                                 f"of {type(self).__name__}.__init__ (it has {sorted(values)}).")
            values = {name: values[name] for name in names}
        self.hparams = HyperParameters(values)

    # -- what the Trainer knows --------------------------------------------------------------------
    @property
    def trainer(self) -> Run:
        """The run this module is part of: Lightning's ``trainer`` names (epoch, step, metrics, flags...)."""
        return self._require_trainer("trainer")

    @trainer.setter
    def trainer(self, run: Run | None) -> None:
        self._run = run

    @property
    def current_epoch(self) -> int:
        return self._run.current_epoch if self._run is not None else 0

    @property
    def global_step(self) -> int:
        return self._run.global_step if self._run is not None else 0

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    def _require_trainer(self, what: str) -> Run:
        if self._run is None:
            raise RuntimeError(f"{type(self).__name__}.{what} needs a Trainer: call it from inside "
                               "trainer.fit/validate/test/predict.")
        return self._run

    # -- manual optimization -------------------------------------------------------------------------
    def optimizers(self) -> Any:
        """The optimizers from ``configure_optimizers`` (one, or a list), for manual optimization."""
        opts = self._require_manual("optimizers()").manual_optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """The schedulers (one, a list, or None), for manual optimization: you call ``.step()``."""
        setup = self._require_manual("lr_schedulers()").optimization.setup
        schedulers = [c.scheduler for c in setup.schedulers]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()`` with the backward hooks and precision scaling; use it instead of ``backward``."""
        self._require_manual("manual_backward()").optimization.backward(loss, *args, **kwargs)

    def no_backward_sync(self) -> contextlib.AbstractContextManager[None]:
        """Inside it, ``manual_backward`` keeps the gradients on this rank: no all-reduce (strategy="ddp").

        For gradient accumulation in manual optimization: run a window's first
        backwards inside it and the last one outside; that backward's
        all-reduce then averages the whole window's gradients, one all-reduce
        instead of one per backward.  In one process it does nothing.
        """
        return self._require_manual("no_backward_sync()").strategy.no_sync()

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze every parameter not owned by ``optimizer`` (so one backward touches only its params)."""
        optimizer = getattr(optimizer, "optimizer", optimizer)
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        saved = {}
        for param in self.parameters():
            saved[param] = param.requires_grad
            if id(param) not in owned:
                param.requires_grad_(False)
        self._toggled = saved

    def untoggle_optimizer(self, optimizer: Any) -> None:
        """Undo ``toggle_optimizer``."""
        for param, requires_grad in getattr(self, "_toggled", {}).items():
            param.requires_grad_(requires_grad)
        self._toggled = {}

    def clip_gradients(self, optimizer: Any, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str = "norm") -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm or value (unscaled first under 16-mixed)."""
        run = self._require_trainer("clip_gradients()")
        run.optimization.clip_gradients(getattr(optimizer, "optimizer", optimizer), gradient_clip_val,
                                            gradient_clip_algorithm)

    def _require_manual(self, what: str) -> Run:
        run = self._require_trainer(what)
        if self.automatic_optimization:
            raise ManualOptimizationError(
                f"{type(self).__name__}.{what} is for manual optimization, but automatic_optimization is True. "
                "Set `automatic_optimization = False` on the module and call backward/step yourself, or return "
                "the loss from training_step and let the Trainer optimize.")
        return run


class FunctionModule(TrainingModule):
    """A plain ``nn.Module`` plus functions, for the built-in loops without subclassing.

    ``training_step(model, batch, batch_idx)`` returns the loss;
    ``configure_optimizers(model)`` returns what ``configure_optimizers`` would;
    ``validation_step``/``test_step``/``predict_step`` are optional.  The
    functions see only the plain model, so they log by returning: the training
    loss is logged as ``train_loss`` and an evaluation function's return value
    as ``val_loss`` / ``test_loss`` (epoch means).
    """

    def __init__(self, model: nn.Module, training_step: Any, configure_optimizers: Any,
                 validation_step: Any = None, test_step: Any = None, predict_step: Any = None) -> None:
        super().__init__()
        self.model = model
        self._fns = {"training": training_step, "configure": configure_optimizers, "validation": validation_step,
                     "test": test_step, "predict": predict_step}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self._fns["training"](self.model, batch, batch_idx)
        if isinstance(loss, torch.Tensor):
            self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        return self._fns["configure"](self.model)

    # dataloader_idx: with several evaluation dataloaders, the values logged get its suffix (the functions
    # keep their three arguments).
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self._eval("validation", "val_loss", batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self._eval("test", "test_loss", batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        fn = self._fns["predict"]
        return super().predict_step(batch, batch_idx) if fn is None else fn(self.model, batch, batch_idx)

    def _eval(self, kind: str, key: str, batch: Any, batch_idx: int) -> Any:
        fn = self._fns[kind]
        if fn is None:
            raise NotImplementedError(f"FunctionModule was given no {kind}_step function; pass "
                                      f"{kind}_step=fn(model, batch, batch_idx) -> loss.")
        value = fn(self.model, batch, batch_idx)
        if value is not None:
            self.log(key, value, prog_bar=True)
        return value
