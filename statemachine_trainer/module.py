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

import argparse
import contextlib
import copy
import inspect
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._hook_spec import default_hook, install_stubs
from ._optim import ConfigError
from ._refused import UnsupportedError
from ._results import LogError
from .data._source import move_to_device
from .machine import noop_hook

if TYPE_CHECKING:
    from ._run import Run

__all__ = ["LIGHTNING_ONLY", "FunctionModule", "ManualOptimizationError", "TrainingModule", "UnsupportedError"]


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
    #: An input for ``forward`` (a tensor, tuple or dict), for summaries and exporting, as in Lightning.
    example_input_array: Any = None
    #: ``load_from_checkpoint``'s default ``strict``: False tolerates missing and unexpected weight keys.
    strict_loading: bool = True

    def __init__(self) -> None:
        super().__init__()
        self._run: Run | None = None  # the run this module takes part in (set through the `trainer` setter)
        self.hparams = HyperParameters()
        self._log_hyperparams = True  # save_hyperparameters(logger=False) turns it off

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
    @default_hook
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a fetched batch before it moves to the device (e.g. CPU augmentation); return it."""
        return batch

    @default_hook
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the batch to ``device``: every tensor (anything with ``.to``) in nested lists, tuples and dicts.

        Override for a batch type of your own; call ``super()`` for the rest.
        """
        return move_to_device(batch, device)

    @default_hook
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change the batch once it is on the device (e.g. GPU augmentation); return it."""
        return batch

    @default_hook
    def on_validation_model_eval(self) -> None:
        self.eval()

    @default_hook
    def on_validation_model_train(self) -> None:
        """Called after validation only when overridden; otherwise each submodule's mode is restored as it was."""
        self.train()

    @default_hook
    def on_test_model_eval(self) -> None:
        self.eval()

    @default_hook
    def on_test_model_train(self) -> None:
        """Called after testing only when overridden; otherwise each submodule's mode is restored as it was."""
        self.train()

    @default_hook
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
            batch_size: int | None = None, rank_zero_only: bool = False, add_dataloader_idx: bool = True) -> None:
        """Record a scalar (tensor, number or torchmetrics ``Metric``) under ``name``.

        ``on_step``/``on_epoch`` default to per-step in training steps and
        per-epoch elsewhere; epoch values are reduced with ``reduce_fx``
        (``mean`` weighted by batch size, ``sum``, ``max``, ``min``).  A
        ``Metric`` is computed and reset at epoch end (torchmetrics syncs it
        across ranks itself).  ``sync_dist``: under ``strategy="ddp"`` the epoch
        value is reduced over every rank's data; step values stay per rank (no
        collective per step).  ``rank_zero_only``: you call ``self.log`` on
        rank 0 only (e.g. under ``if self.trainer.is_global_zero``), so the value
        is never reduced across ranks -- the other ranks would wait forever --
        and callbacks on other ranks cannot monitor it, as in Lightning.
        ``add_dataloader_idx``: with several evaluation dataloaders, ``name``
        gets the suffix ``/dataloader_idx_N``; pass False to log one value under
        ``name`` over all of them.
        """
        run = self._run
        if run is None:
            self._require_trainer("log")  # raises the explanatory error
        if rank_zero_only and sync_dist:
            raise LogError(f"self.log({name!r}, ..., sync_dist=True, rank_zero_only=True): a value logged on rank 0 "
                           "only cannot be reduced across ranks (the other ranks never join the reduction); drop "
                           "sync_dist, or log it on every rank without rank_zero_only.")
        run.results.log(name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, batch_size, sync_dist,
                        add_dataloader_idx)

    def log_dict(self, values: Mapping[str, Any], **kwargs: Any) -> None:
        for name, value in values.items():
            self.log(name, value, **kwargs)

    def save_hyperparameters(self, *args: Any, ignore: str | Sequence[str] | None = None, frame: Any = None,
                             logger: bool = True) -> None:
        """Record the ``__init__`` arguments in ``self.hparams`` (read back as ``self.hparams.lr``).

        As in Lightning: with no ``args``, every argument of the ``__init__``
        that calls this (and of the subclasses' ``__init__`` that called it
        through ``super().__init__``); with names, those arguments; with one
        dict or ``argparse.Namespace``, its items.  ``ignore`` leaves names
        out (pass sub-modules here: their weights are in the checkpoint
        anyway).  Loggers write them at ``fit()`` start unless ``logger=False``;
        checkpoints store the JSON-able ones, so ``load_from_checkpoint`` can
        build the module again.
        """
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        values = _hparams_from(self, args, frame)
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        values = {name: value for name, value in values.items() if name not in ignored}
        modules = sorted(name for name, value in values.items() if isinstance(value, nn.Module))
        if modules:
            warnings.warn(f"save_hyperparameters(): {modules} are nn.Modules; their weights are saved with the "
                          f"module anyway. Leave them out with save_hyperparameters(ignore={modules}) and pass them "
                          "to load_from_checkpoint(path, name=...) when loading.", stacklevel=2)
        self.hparams = HyperParameters(values)
        self._log_hyperparams = logger

    def hyperparameters_to_log(self) -> dict[str, Any]:
        """What the loggers receive at ``fit()`` start: ``hparams``, or nothing after ``save_hyperparameters(logger=False)``."""
        return dict(self.hparams) if self._log_hyperparams else {}

    @property
    def hparams_initial(self) -> HyperParameters:
        """A copy of the hyperparameters as ``save_hyperparameters`` recorded them."""
        return HyperParameters(copy.deepcopy(dict(self.hparams)))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike[str], map_location: Any = None,
                             strict: bool | None = None, **overrides: Any) -> Any:
        """A new module built from the hyperparameters stored in a checkpoint, with its weights loaded.

        ``cls(**hparams, **overrides)``: ``overrides`` replace stored values and
        supply the ones a checkpoint cannot store (sub-modules, objects that
        are not JSON-able), which are named in the error when missing.  Works
        with every checkpoint directory we write (single- or multi-process).
        The weights alone, for inference: ``statemachine_trainer.checkpoint.load_module_state(path)``.
        """
        from .checkpoint import load_module_state

        weights, stored = load_module_state(checkpoint_path, map_location=map_location, with_hparams=True)
        missing = [name for name in stored["omitted"] if name not in overrides]
        if missing:
            raise ConfigError(f"{cls.__name__}.load_from_checkpoint({str(checkpoint_path)!r}): hyperparameter(s) "
                            f"{missing} could not be stored in the checkpoint (not JSON-able); pass them: "
                            f"{cls.__name__}.load_from_checkpoint(path, {missing[0]}=...).")
        module = cls(**{**stored["values"], **overrides})
        module.load_state_dict(weights, strict=module.strict_loading if strict is None else strict)
        return module.to(map_location) if isinstance(map_location, (str, torch.device)) else module

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

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the parameters (float32 until ``.double()`` or ``.half()``)."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.get_default_dtype())

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes (0 outside a run and in one process)."""
        return self._run.global_rank if self._run is not None else 0

    @property
    def local_rank(self) -> int:
        """This process's rank on its node."""
        return self._run.local_rank if self._run is not None else 0

    @property
    def logger(self) -> Any:
        """The run's first logger (None outside a run or without loggers), as Lightning's ``self.logger``."""
        return self._run.logger if self._run is not None else None

    @property
    def loggers(self) -> list[Any]:
        """Every logger of the run ([] outside a run)."""
        return list(self._run.loggers) if self._run is not None else []

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only, through the progress bar when it is drawing (so it is not torn)."""
        if self._run is None:
            print(*args, **kwargs)
        else:
            self._run.print(*args, **kwargs)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Every rank's ``data`` (tensors, numbers, or dicts/lists of them), stacked on a new first dimension.

        In one process the data comes back as tensors, unstacked, as in
        Lightning.  ``sync_grads``: gradients flow back through the gather.
        """
        run = self._require_trainer("all_gather()")
        return _map_tensors(data, lambda t: run.strategy.all_gather(t, group, sync_grads), self.device)

    def freeze(self) -> TrainingModule:
        """No gradients for any parameter, and eval mode: for inference or a frozen backbone."""
        for param in self.parameters():
            param.requires_grad = False
        return self.eval()

    def unfreeze(self) -> TrainingModule:
        """Undo ``freeze``: every parameter trainable, train mode."""
        for param in self.parameters():
            param.requires_grad = True
        return self.train()

    def _require_trainer(self, what: str) -> Run:
        if self._run is None:
            raise RuntimeError(f"{type(self).__name__}.{what} needs a Trainer: call it from inside "
                               "trainer.fit/validate/test/predict.")
        return self._run

    # -- the step's overridable actions (Lightning's hooks; the loops call an override from their rows) ------
    @default_hook
    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backpropagate ``loss`` (already scaled under 16-mixed); override to change how. Also used by
        ``manual_backward``."""
        loss.backward(*args, **kwargs)

    @default_hook
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        """Step ``optimizer`` (a :class:`~statemachine_trainer.optimizer.TrainingOptimizer`) in automatic mode.

        ``optimizer_closure`` runs ``training_step`` and backward; the default
        passes it to ``optimizer.step``.  Override, e.g. for a learning-rate
        warmup, and call ``optimizer.step(closure=optimizer_closure)`` (or the
        closure itself) in it.
        """
        optimizer.step(closure=optimizer_closure)

    @default_hook
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Zero ``optimizer``'s gradients after its step (automatic mode); the default drops them (set to None)."""
        optimizer.zero_grad()

    @default_hook
    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip before each automatic step; gets the Trainer's ``gradient_clip_val``/``_algorithm`` flags."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @default_hook
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step ``scheduler`` when its interval is due (automatic mode); ``metric`` is its monitored value or None.

        Override it for a scheduler that is not a torch ``LRScheduler`` (say,
        one whose ``step`` takes the epoch: ``scheduler.step(epoch=self.current_epoch)``);
        without an override such a scheduler is refused when the fit starts.
        """
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # -- manual optimization -------------------------------------------------------------------------
    def optimizers(self) -> Any:
        """The optimizers from ``configure_optimizers`` as :class:`~statemachine_trainer.optimizer.TrainingOptimizer`
        (one, or a list).

        In manual optimization you step them; in automatic mode, as in
        Lightning, they are there to read (e.g. ``param_groups[0]["lr"]``) and
        the Trainer steps them.
        """
        run = self._require_optimization("optimizers()")
        opts = run.optimization.wrapped if self.automatic_optimization else run.manual_optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """The schedulers (one, a list, or None); in manual optimization you call ``.step()``."""
        setup = self._require_optimization("lr_schedulers()").optimization.setup
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

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        """``toggle_optimizer`` for the ``with`` block, undone even when the block raises."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(self, optimizer: Any, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm (default) or value (unscaled first under
        16-mixed); nothing when ``gradient_clip_val`` is None or 0."""
        run = self._require_trainer("clip_gradients()")
        if not gradient_clip_val:
            return
        run.optimization.clip_gradients(getattr(optimizer, "optimizer", optimizer), gradient_clip_val,
                                        gradient_clip_algorithm or "norm")

    def _require_optimization(self, what: str) -> Run:
        run = self._require_trainer(what)
        if run.optimization is None:
            raise RuntimeError(f"{type(self).__name__}.{what} needs the optimizers of a fit: call it from inside "
                               "trainer.fit (validate/test/predict configure no optimizers).")
        return run

    def _require_manual(self, what: str) -> Run:
        run = self._require_trainer(what)
        if self.automatic_optimization:
            raise ManualOptimizationError(
                f"{type(self).__name__}.{what} is for manual optimization, but automatic_optimization is True. "
                "Set `automatic_optimization = False` on the module and call backward/step yourself, or return "
                "the loss from training_step and let the Trainer optimize.")
        return run


#: LightningModule names this module does not have, and what to do instead (a call or read raises
#: :class:`UnsupportedError` with the advice, never a bare AttributeError).
LIGHTNING_ONLY: dict[str, str] = {
    "to_onnx": "export with torch.onnx.export(model.eval(), example_input, path) directly (needs the onnx package)",
    "to_torchscript": "TorchScript is deprecated in PyTorch (and to_torchscript in Lightning 2.7); export with "
                      "torch.export.export(model.eval(), (example_input,))",
    "to_tensorrt": "compile with torch_tensorrt.compile(model, ...) directly",
    "fabric": "there is no Fabric here; self.trainer is the run (counters, loggers, strategy)",
    "device_mesh": "FSDP2 and tensor parallelism are not supported yet; train with strategy='ddp'",
    "configure_sharded_model": "Lightning 2 renamed it configure_model; sharded training is not supported yet",
}


def _unsupported(name: str, advice: str, is_property: bool) -> Any:
    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedError(f"{type(self).__name__}.{name} is Lightning API that statemachine_trainer does not "
                               f"have: {advice}.")

    refuse.__name__, refuse.__doc__ = name, f"Not supported: {advice}."
    return property(refuse) if is_property else refuse


@noop_hook  # adds nothing, so it is not an override: the generated stub's place, with Lightning's return value
def _no_callbacks(self: TrainingModule) -> list[Any]:
    """Return callbacks to add to the trainer's (replacing ones of the same type); none by default, as Lightning."""
    return []


TrainingModule.configure_callbacks = _no_callbacks  # type: ignore[method-assign]
for _name, _advice in LIGHTNING_ONLY.items():
    setattr(TrainingModule, _name, _unsupported(_name, _advice, is_property=_name in ("fabric", "device_mesh")))


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


def _hparams_from(module: TrainingModule, args: tuple[Any, ...], frame: Any) -> dict[str, Any]:
    """What ``save_hyperparameters(*args)`` records, from the calling ``__init__`` frames."""
    if len(args) == 1 and not isinstance(args[0], str):
        given = args[0]
        items = vars(given) if isinstance(given, argparse.Namespace) else given
        if not isinstance(items, Mapping):
            raise TypeError(f"save_hyperparameters({given!r}): pass argument names, or one dict or "
                            "argparse.Namespace of hyperparameters.")
        return dict(items)
    values = _init_arguments(module, frame)
    if not args:
        return values
    unknown = sorted(set(args) - set(values))
    if unknown:
        raise ValueError(f"save_hyperparameters({', '.join(map(repr, args))}): {unknown} are not arguments "
                         f"of {type(module).__name__}.__init__ (it has {sorted(values)}).")
    return {name: values[name] for name in args}


def _init_arguments(module: TrainingModule, frame: Any) -> dict[str, Any]:
    """The arguments of every ``__init__`` of ``module`` on the stack (the outermost, the subclass's, wins, as in
    Lightning); called from elsewhere, the calling function's arguments."""
    if frame is None:  # pragma: no cover - CPython always has frames
        raise RuntimeError("save_hyperparameters() could not see its caller's arguments; pass frame=.")
    frames, caller = [], frame
    while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is module:
        frames.append(frame)
        frame = frame.f_back
    frames = frames or [caller]
    values: dict[str, Any] = {}
    for init in frames:
        info = inspect.getargvalues(init)
        found = {name: info.locals[name] for name in info.args[1:]}
        if info.keywords:
            found.update(info.locals[info.keywords])
        values.update(found)
    return values


def _map_tensors(data: Any, fn: Any, device: torch.device) -> Any:
    """``fn`` applied to every tensor (numbers become tensors on ``device`` first) of nested dicts/lists/tuples."""
    if isinstance(data, Mapping):
        return type(data)({key: _map_tensors(value, fn, device) for key, value in data.items()})
    if isinstance(data, (list, tuple)):
        return type(data)(_map_tensors(value, fn, device) for value in data)
    if isinstance(data, (int, float, bool)):
        data = torch.tensor(data, device=device)
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"all_gather() gathers tensors and numbers (also in dicts and lists), not "
                        f"{type(data).__name__}.")
    return fn(data)
