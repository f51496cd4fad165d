"""``Run``: the narrow context a loop tree, its callbacks and the module share during one run.

The ``Trainer`` checks flags and assembles a run; it does not take part in
one.  What the parts of a running tree need from each other is collected
here, in one object built per ``fit``/``validate``/``test``/``predict``:

* the parts: ``config`` (the checked flags), ``module``, ``datamodule`` (the
  ``DataModule`` given to the entry point, or None), ``sources`` (one
  ``BatchSource`` per dataloader), ``hooks`` (the relay), ``results`` (logged
  values), ``optimization``, ``precision``, ``strategy``, ``callbacks``,
  ``loggers``, and ``fit_loop`` (the tree's fit loop, which owns the epoch and
  step counters);
* the services: ``step_schedulers``, ``monitored``, ``log_metrics``,
  ``request_checkpoint`` (a write at the next transition boundary) and
  ``save_checkpoint`` (a write now);
* what a loop wrapping the fit loop needs between rounds (K-fold, active
  learning): ``use_data`` (a new fold's split, a grown labelled set),
  ``reset_parameters`` (fresh weights) and ``reset_optimizers`` (fresh
  optimizers and schedulers from ``configure_optimizers``);
* Lightning's read-only names over those (``current_epoch``,
  ``global_step``, ``callback_metrics``, ``should_stop``, flags such as
  ``max_epochs``), because this is also what user code sees as
  ``module.trainer`` and as the ``trainer`` argument of callback hooks.

It sits below the loops, callbacks and module (it imports none of them, nor
the Trainer), so dependencies point one way.  Loops reach it as
``loop.context``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ._flags import FLAG_NAMES, TrainerConfig
from ._optim import ConfigError
from ._refused import ATTRIBUTE_ADVICE, FLAG_ADVICE, missing_attribute
from ._results import Results
from ._trainer_state import TrainerState
from .data._source import BatchSource, count_batches, is_loader_collection, source_key

if TYPE_CHECKING:
    from ._hooks import HookRelay
    from ._optimization import Optimization
    from ._precision import Precision

__all__ = ["FitCounters", "Run"]


class FitCounters(Protocol):
    """What the run reads from the fit loop: the counters Lightning users know as ``trainer.*``."""

    @property
    def current_epoch(self) -> int: ...

    @property
    def global_step(self) -> int: ...

    @property
    def epochs_this_run(self) -> int: ...

    @property
    def can_stop_early(self) -> bool: ...

    @property
    def steps_this_run(self) -> int: ...

    should_stop: bool

    @property
    def sanity_checking(self) -> bool: ...

    @property
    def is_last_batch(self) -> bool: ...

    @property
    def validating(self) -> bool: ...


class Run:
    """One run's parts and services; see the module docstring.  Built by the Trainer, read by everything else.

    Its attributes are fixed (``__slots__``): user code may read them and set
    ``should_stop``, but a typo such as ``trainer.shuld_stop = True`` raises
    instead of silently adding an attribute nobody reads.  The flags read as
    attributes too (``trainer.max_epochs``), and a Lightning name this library
    does not have raises an ``AttributeError`` naming what to read instead;
    both are properties (:func:`_add_flag_and_advice_properties`), not a
    ``__getattr__``: on Python 3.11 a class with ``__getattr__`` gets no cached
    attribute reads at all, and the loops read the run's parts every step.
    """

    __slots__ = (
        "_configure_optimization",
        "_reload",
        "_request",
        "_restored_data",
        "_restored_into",
        "_save",
        "_state",
        "_warned_as_given",
        "callbacks",
        "ckpt_path",
        "config",
        "datamodule",
        "device",
        "fit_loop",
        "hooks",
        "loggers",
        "manual_optimizers",
        "module",
        "optimization",
        "precision",
        "results",
        "sources",
        "strategy",
        "val_check_batches",
        "val_enabled",
    )

    def __init__(self, config: TrainerConfig, stage: str, strategy: Any, precision: Precision, device: Any,
                 callbacks: list[Any], loggers: list[Any],
                 request_checkpoint: Callable[[Path, Callable[[Path], None] | None, bool], None] | None = None,
                 save_checkpoint: Callable[[Path], Path] | None = None,
                 configure_optimization: Callable[[Run], None] | None = None,
                 reload_data: Callable[[str], Any] | None = None) -> None:
        self.config = config
        # "fit", "validate", "test", "predict"; "idle" once the run has finished (Lightning's fn/status/stage too)
        self._state = TrainerState(stage, None if stage == "idle" else stage,
                                   "initializing" if stage == "idle" else "running", lambda: self.stage)
        self.ckpt_path: str | None = None  # the checkpoint this run loaded (fit/validate/...(ckpt_path=)), if any
        self.strategy, self.precision, self.device = strategy, precision, device
        self.callbacks, self.loggers = callbacks, loggers
        self.module: Any = None
        self.datamodule: Any = None  # the DataModule given to the entry point, if any
        self.sources: dict[str, Any] = {}  # source_key(stage, dataloader_idx) -> BatchSource ("validate/1")
        self.results = Results(strategy.reduce)
        self.hooks: HookRelay | None = None
        self.optimization: Optimization | None = None
        self.manual_optimizers: tuple[Any, ...] = ()  # what self.optimizers() returns in manual mode
        self.val_enabled = False  # fit with validation data that has batches
        self.val_check_batches = 1  # validation follows every this many training batches (and the epoch's last)
        self.fit_loop: FitCounters | None = None
        self._request, self._save = request_checkpoint, save_checkpoint
        self._configure_optimization = configure_optimization  # builds self.optimization from the module
        self._reload = reload_data  # stage -> the loader *_dataloader() returns now (None: given directly)
        self._restored_data: dict[str, Any] = {}  # a checkpoint's data positions, until the reading loop resumes
        self._restored_into: dict[str, Any] = {}  # the sources they were loaded into at restore
        self._warned_as_given: set[str] = set()  # stages whose DataLoader resumable_data left alone, warned once

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            object.__setattr__(self, name, value)
        except AttributeError:
            raise AttributeError(f"trainer.{name} cannot be set: inside a run, `trainer` is the run context, whose "
                                 "attributes are fixed. Set trainer.should_stop = True to stop; keep your own values "
                                 "on the module or the callback.") from None

    @property
    def state(self) -> TrainerState:
        """The entry point under way ("fit"...; "idle" after), with Lightning's ``fn``, ``status``, ``stage``."""
        return self._state

    def end(self, interrupted: bool) -> None:
        """The run is over: ``state`` becomes "idle", its status "finished" (or "interrupted": it raised)."""
        self._state = self._state.ended(interrupted)

    @property
    def stage(self) -> str | None:
        """Lightning's ``trainer.state.stage``: "train", "sanity_check", "validate" (inside fit too), "test",
        "predict"; None outside a run."""
        state = self._state
        if state == "idle":
            return None
        if state != "fit":
            return str(state)
        if self.sanity_checking:
            return "sanity_check"
        return "validate" if self.fit_loop is not None and self.fit_loop.validating else "train"

    @property
    def training(self) -> bool:
        return self.stage == "train"

    @property
    def validating(self) -> bool:
        return self.stage == "validate"

    @property
    def testing(self) -> bool:
        return self.stage == "test"

    @property
    def predicting(self) -> bool:
        return self.stage == "predict"

    @property
    def evaluating(self) -> bool:
        """Validating or testing (Lightning's ``trainer.evaluating``)."""
        return self.stage in ("validate", "test")

    @property
    def interrupted(self) -> bool:
        """Whether the latest run ended by raising (Lightning: its status is "interrupted")."""
        return self._state.status == "interrupted"

    # -- Lightning's read-only names --------------------------------------------------------
    @property
    def current_epoch(self) -> int:
        return 0 if self.fit_loop is None else self.fit_loop.current_epoch

    @property
    def global_step(self) -> int:
        return 0 if self.fit_loop is None else self.fit_loop.global_step

    @property
    def should_stop(self) -> bool:
        return self.fit_loop is not None and self.fit_loop.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if self.fit_loop is None:
            raise RuntimeError("trainer.should_stop can only be set while a fit loop is part of the run.")
        self.fit_loop.should_stop = bool(value)

    @property
    def sanity_checking(self) -> bool:
        return self.state == "fit" and self.fit_loop is not None and self.fit_loop.sanity_checking

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        self.results.refresh_step_views()
        return self.results.callback_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, torch.Tensor]:
        self.results.refresh_step_views()
        return self.results.progress_bar_metrics

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        """What went to the loggers: epoch values and the latest per-step values, as Lightning's."""
        self.results.refresh_step_views()
        return self.results.logged_metrics

    @property
    def optimizers(self) -> list[Any]:
        return [] if self.optimization is None else list(self.optimization.optimizers)

    @property
    def lr_scheduler_configs(self) -> list[Any]:
        return [] if self.optimization is None else list(self.optimization.setup.schedulers)

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @property
    def num_training_batches(self) -> int:
        source = self.sources.get("train")
        return 0 if source is None else source.num_batches

    @property
    def num_val_batches(self) -> list[int]:
        """Batches per validation dataloader (Lightning's list, with ``limit_val_batches`` applied)."""
        return [source.num_batches for source in self.stage_sources("validate")]

    @property
    def num_test_batches(self) -> list[int]:
        return [source.num_batches for source in self.stage_sources("test")]

    @property
    def num_predict_batches(self) -> list[int]:
        return [source.num_batches for source in self.stage_sources("predict")]

    @property
    def num_sanity_val_batches(self) -> list[int]:
        """Batches the sanity check runs per validation dataloader (``num_sanity_val_steps``, -1 for all)."""
        steps = self.config.num_sanity_val_steps
        return [n if steps < 0 else min(n, steps) for n in self.num_val_batches]

    @property
    def val_check_interval(self) -> float | int:
        """The flag as Lightning reads it: 1.0 (once per epoch) when not given."""
        interval = self.config.val_check_interval
        return 1.0 if interval is None else interval

    @property
    def train_dataloader(self) -> Any:
        """The training dataloader this run reads (None before one is set up)."""
        source = self.sources.get("train")
        return None if source is None else source.shown

    @property
    def val_dataloaders(self) -> Any:
        return self._loaders("validate")

    @property
    def test_dataloaders(self) -> Any:
        return self._loaders("test")

    @property
    def predict_dataloaders(self) -> Any:
        return self._loaders("predict")

    def _loaders(self, stage: str) -> Any:
        """One loader, a list of several, or None: what ``*_dataloader()`` gave, as Lightning returns it."""
        loaders = [source.shown for source in self.stage_sources(stage)]
        return None if not loaders else loaders[0] if len(loaders) == 1 else loaders

    @property
    def model(self) -> Any:
        """Lightning's ``trainer.model``: the module being run (DDP's wrapper stays inside the strategy)."""
        return self.module

    @property
    def device_ids(self) -> list[int]:
        """The device indices of this node, as Lightning lists them ([0] on CPU)."""
        return list(range(self.num_devices))

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        """The ``EarlyStopping`` callbacks, in order (found by their ``wait_count``: no upward import)."""
        return [cb for cb in self.callbacks if hasattr(cb, "wait_count") and hasattr(cb, "stopped_epoch")]

    @property
    def early_stopping_callback(self) -> Any:
        """The first ``EarlyStopping`` callback, or None."""
        found = self.early_stopping_callbacks
        return found[0] if found else None

    @property
    def progress_bar_callback(self) -> Any:
        """The progress bar callback, or None (found by its ``refresh_rate`` and ``print``: no upward import)."""
        return next((cb for cb in self.callbacks if hasattr(cb, "refresh_rate") and callable(getattr(cb, "print", None))),
                    None)

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is rank 0 (always, without strategy="ddp"): the one that logs and prints."""
        return self.strategy.is_rank_zero

    @property
    def global_rank(self) -> int:
        return self.strategy.rank

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def default_root_dir(self) -> Path:
        return self.config.default_root_dir

    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch under way is its epoch's last (Lightning's ``trainer.is_last_batch``)."""
        return self.fit_loop is not None and self.fit_loop.is_last_batch

    @property
    def log_dir(self) -> str:
        """Where the first logger writes (its versioned folder), or ``default_root_dir`` without loggers."""
        return str(self.loggers[0].log_dir if self.loggers else self.config.default_root_dir)

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        """The ``ModelCheckpoint`` callbacks, in order (found by their ``best_model_path``: no upward import)."""
        return [cb for cb in self.callbacks if hasattr(cb, "best_model_path")]

    @property
    def checkpoint_callback(self) -> Any:
        """The first ``ModelCheckpoint`` callback, or None."""
        found = self.checkpoint_callbacks
        return found[0] if found else None

    @property
    def estimated_stepping_batches(self) -> int | float:
        """How many optimizer steps ``fit`` will take, for a schedule's length (e.g. ``OneCycleLR(total_steps=)``).

        Lightning's rule: ``max_steps`` when the epochs are unlimited (infinity
        when both are), otherwise ``ceil(batches per epoch /
        accumulate_grad_batches) * max_epochs``, capped by ``max_steps``.  The
        batches per epoch are this rank's, with ``limit_train_batches``
        applied.  Readable from ``configure_optimizers`` on: the training data
        is set up before it.
        """
        config = self.config
        if config.max_epochs == -1:
            return float("inf") if config.max_steps == -1 else config.max_steps
        if "train" not in self.sources:
            raise RuntimeError("trainer.estimated_stepping_batches needs the training data: read it during fit "
                               "(from configure_optimizers on), or, in a loop wrapping the fit loop, after "
                               "use_data(train=...).")
        per_epoch = -(-self.num_training_batches // self.accumulate_grad_batches)
        steps = per_epoch * max(config.max_epochs, 1)
        return steps if config.max_steps == -1 else min(steps, config.max_steps)

    @property
    def lightning_module(self) -> Any:
        """Lightning's name for the module being run."""
        return self.module

    @property
    def node_rank(self) -> int:
        env = getattr(self.strategy, "env", None)
        return 0 if env is None else env.rank // env.local_world_size

    @property
    def num_devices(self) -> int:
        """Devices (processes) per node: the ``devices`` flag."""
        return getattr(self.strategy, "devices", 1)

    @property
    def validation_ends_each_epoch(self) -> bool:
        """Validation runs at most once per epoch, after its last batch, so epoch-end hooks see fresh values.

        The rule ModelCheckpoint and EarlyStopping use to pick where they act
        (``on_train_epoch_end`` or ``on_validation_end``), as in Lightning.
        """
        return not self.val_enabled or (self.config.check_val_every_n_epoch == 1
                                        and self.val_check_batches >= self.num_training_batches)

    def callback(self, cls: type) -> Any:
        """The first callback that is an instance of ``cls``, or None."""
        return next((cb for cb in self.callbacks if isinstance(cb, cls)), None)

    # -- services -------------------------------------------------------------------------------
    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0, above a progress bar that is drawing (so the bar is not torn)."""
        if not self.is_global_zero:
            return
        bar = next((cb for cb in self.callbacks if cb.enabled and callable(getattr(cb, "print", None))), None)
        (bar.print if bar is not None else print)(*args, **kwargs)

    def step_schedulers(self, interval: str) -> None:
        """Step the schedulers of ``interval`` ("step" or "epoch") that are due; automatic mode only.

        Each through the module's ``lr_scheduler_step(scheduler, metric)``
        when it overrides it (Lightning 2), otherwise through its default
        body; ``metric`` is the monitored value for a ReduceLROnPlateau, else
        None.  A plateau whose non-strict monitor was never logged is skipped
        with a warning.
        """
        optimization = self.optimization
        if optimization is None or not optimization.setup.schedulers or not self.module.automatic_optimization:
            return  # the common case, decided before global_step (a sum over loops) is computed
        count = self.global_step if interval == "step" else self.current_epoch + 1
        # the override through the relay (self.log inside it knows its hook), else the default body
        step = (optimization.hooks.lr_scheduler_step if optimization.scheduler_step_override
                else self.module.lr_scheduler_step)
        for config in optimization.setup.schedulers:
            if config.interval != interval or count % config.frequency:
                continue
            metric = None
            if config.reduce_on_plateau:
                metric = self._plateau_metric(config)
                if metric is None:
                    continue
            step(config.scheduler, metric)

    def _plateau_metric(self, config: Any) -> torch.Tensor | None:
        """The plateau's monitored value; None (with Lightning's warning) when it is missing and not strict."""
        if not config.strict and config.monitor not in self.callback_metrics:
            warnings.warn(f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available but "
                          "strict is set to `False`. Skipping learning rate update.", RuntimeWarning, stacklevel=3)
            return None
        return self.monitored(config.monitor, "ReduceLROnPlateau")

    def monitored(self, key: str, who: str) -> torch.Tensor:
        """``callback_metrics[key]``, or a clear error listing what was logged."""
        metrics = self.callback_metrics
        if key not in metrics:
            logged = ", ".join(sorted(metrics)) or "nothing yet"
            raise ConfigError(f"{who} monitors {key!r}, but no value named {key!r} was logged (logged: {logged}). "
                              f"Log it with self.log({key!r}, value) in the module, or monitor one of those keys.")
        # Decisions made on it (checkpoints kept, early stopping, plateau) must agree across ranks: the mean.
        return self.strategy.reduce(metrics[key]) if self.strategy.world_size > 1 else metrics[key]

    def log_step_metrics(self) -> None:
        if self.loggers:
            self.log_metrics(self.results.step_metrics())

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Send metrics to every logger at the current global step (``.item()`` happens here, not per step)."""
        if not self.loggers or not metrics:
            return
        values = {k: float(v) for k, v in metrics.items()}
        values.setdefault("epoch", float(self.current_epoch))
        for logger in self.loggers:
            logger.log_metrics(values, self.global_step)

    def request_checkpoint(self, path: str | os.PathLike[str], on_written: Callable[[Path], None] | None = None,
                           async_save: bool = False) -> None:
        """Write a checkpoint to ``path`` at the next transition boundary of the running tree.

        Hooks and callbacks call this instead of ``save_checkpoint``: a file
        written *inside* a hook would record "in the middle of this hook", and a
        resume would run the hook's first half twice.  At a boundary, every
        loop's position is exact.  ``on_written(path)`` runs after the write
        (e.g. to delete a checkpoint that fell out of the top k only once its
        replacement is safely on disk).  Outside ``fit`` the write happens now.

        ``async_save=True`` blocks only to copy the state to host memory; the
        write runs in a background thread (one at a time; ``on_written`` runs
        there once the checkpoint is committed; a failure is raised by the next
        save).  One process only: under DDP it is a ConfigError.
        """
        if self._request is None:
            raise RuntimeError("This run cannot write checkpoints: it was built without a checkpoint service.")
        if not isinstance(async_save, bool):
            raise ConfigError(f"request_checkpoint(async_save={async_save!r}) must be True or False.")
        self._request(Path(path), on_written, async_save)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write the run's state to ``path`` now (prefer ``request_checkpoint`` inside hooks)."""
        if self._save is None:
            raise RuntimeError("This run cannot write checkpoints: it was built without a checkpoint service.")
        return self._save(Path(path))

    # -- data, weights and optimizers: set up a run, or a new round of an outer loop -------------
    def use_data(self, **loaders: Any) -> None:
        """Take batches from these loaders from now on: ``use_data(train=..., validate=...)``.

        The Trainer calls it with the loaders given to ``fit``; a loop that
        wraps the fit loop calls it to switch data between rounds (a new
        fold's split, a grown labelled set), and again in its ``on_restart``:
        the data is not in a checkpoint (its position is), so a resumed outer
        loop rebuilds it from its own fields.  The checkpoint's position is
        given to such a new source by the loop that reads it, when that loop
        resumes mid-run (see :meth:`resume_source`).
        """
        for stage, loader in loaders.items():
            if stage not in _LIMIT_NAMES:
                raise ConfigError(f"use_data({stage}=...): the stages are {', '.join(_LIMIT_NAMES)}.")
            for index in range(len(self.stage_sources(stage))):
                del self.sources[source_key(stage, index)]
            if loader is None:
                continue
            several = is_loader_collection(loader)
            if several and stage == "train":
                raise ConfigError(f"The training data is a {type(loader).__name__} of {len(loader)} dataloaders; "
                                  "training takes one. Combine them into one dataset (torch.utils.data."
                                  "ConcatDataset) or one loader that yields the batches together.")
            group = (list(loader.values()) if isinstance(loader, Mapping) else list(loader)) if several else [loader]
            for index, one in enumerate(group):
                self.sources[source_key(stage, index)] = self._source(stage, one)
        self.val_enabled = self.state == "fit" and any(s.num_batches > 0 for s in self.stage_sources("validate"))
        if "train" in self.sources:
            self.val_check_batches = self.config.val_check_batches(self.sources["train"].num_batches, self.val_enabled)

    def stage_sources(self, stage: str) -> list[BatchSource]:
        """The sources of ``stage``, by ``dataloader_idx`` (several for a list or dict of evaluation loaders)."""
        found: list[BatchSource] = []
        while (source := self.sources.get(source_key(stage, len(found)))) is not None:
            found.append(source)
        return found

    def reload_data(self, resumed: bool = False) -> None:
        """``reload_dataloaders_every_n_epochs=n``: call ``*_dataloader()`` again at epochs 0, n, 2n... of training.

        The fit loop calls it as each epoch starts (before
        ``on_train_epoch_start``, as Lightning), and with ``resumed`` as a fit
        resumes: the checkpoint's data position then goes to the loader the
        function returns after the restore, not the one requested before it.
        Loaders passed to ``fit`` directly are kept.  Epochs count from the
        first fit, so a resumed run reloads at the same epochs as the
        uninterrupted one.
        """
        every = self.config.reload_dataloaders_every_n_epochs
        if not every or self._reload is None or self.fit_loop is None:
            return
        epoch = self.current_epoch
        if not resumed and (epoch == 0 or epoch % every):
            return  # epoch 0's loaders were requested when the fit started
        loaders = {stage: self._reload(stage) for stage in ("train", "validate") if stage in self.sources}
        self.use_data(**{stage: loader for stage, loader in loaders.items() if loader is not None})

    def evaluation_grad_mode(self) -> Any:
        """The context evaluation runs in: ``torch.inference_mode()``, or ``torch.no_grad()`` (inference_mode=False,
        or a strategy whose buffers inference mode would spoil: FSDP's, see ``_fsdp``)."""
        inference = self.config.inference_mode and self.strategy.supports_inference_mode
        return torch.inference_mode() if inference else torch.no_grad()

    def _source(self, stage: str, loader: Any) -> BatchSource:
        if self.config.overfit_batches and stage in ("train", "validate") and self.state == "fit":
            from .data._overfit import without_shuffling

            loader = without_shuffling(loader, stage)  # Lightning: the same first batches every epoch
        given = loader
        if self.config.resumable_data and stage != "predict":  # prediction is not resumed mid-run: as given
            loader = self._resumable(stage, loader)
        wrapped = loader
        if stage == "train" and self.config.global_batch_size is not None:
            loader = self._global_batches(loader)  # this rank's part of each step's global batch (data/_global)
        else:
            loader = self.strategy.shard(loader, self.config.seed)  # strategy="ddp": this rank's part of the data
        limit = self.config.limits[stage]
        count = count_batches(loader, limit, _LIMIT_NAMES[stage])
        if count == 0 and limit is None:
            raise ConfigError(f"The {stage} dataloader is empty (len 0): check the dataset size, batch_size "
                              "and drop_last.")
        # trainer.train_dataloader & co. show the user's loader, not the ResumableLoader read in its place.
        return BatchSource(loader, count, self.device, shown=given if loader is wrapped else loader)

    def _global_batches(self, loader: Any) -> Any:
        """``Trainer(global_batch_size=G)``: the training loader in the global-batch order, as this rank reads it.

        Refused (ConfigError, at fit start) for a loader whose order we do not
        own, and when ``G`` is not a multiple of its batch size times the
        world size (the message names all three).
        """
        from torch.utils.data import DataLoader

        from .data import ResumableLoader
        from .data._auto import data_seed

        if isinstance(loader, DataLoader):
            loader = ResumableLoader(loader, seed=data_seed(loader, self.config.seed))
        if not isinstance(loader, ResumableLoader) or loader.delegate is not None:
            raise ConfigError(f"Trainer(global_batch_size={self.config.global_batch_size}) reads the training data in "
                              f"its own order and needs a plain torch DataLoader (or a ResumableLoader) over a "
                              f"map-style dataset, got {type(loader).__name__}.")
        return loader.global_batches(self.config.global_batch_size, self.strategy.rank, self.strategy.world_size)

    @property
    def accumulate_grad_batches(self) -> int:
        """Batches per optimizer step: the flag's, or with ``global_batch_size`` the training loader's derived one."""
        if self.config.global_batch_size is None or "train" not in self.sources:
            return self.config.accumulate_grad_batches
        return self.sources["train"].loader.accumulation

    def _resumable(self, stage: str, loader: Any) -> Any:
        """``resumable_data=True``: a plain DataLoader read through a ResumableLoader (see ``data/_auto.py``).

        A DataLoader left alone is said once per stage, where a checkpoint can
        interrupt it (training, and validation during fit): resuming it in the
        middle is not exact.  Not under DDP with ``use_distributed_sampler``:
        there the strategy rebuilds every DataLoader (or refuses it) itself.
        """
        from .data._auto import resumable

        loader, reason = resumable(loader, self.config.seed)
        sharded = self.strategy.distributed and getattr(self.strategy, "use_distributed_sampler", False)
        if reason is not None and not sharded and self.state == "fit" and stage not in self._warned_as_given:
            self._warned_as_given.add(stage)
            warnings.warn(f"The {stage} DataLoader is iterated as given, not made resumable: {reason}. A resume "
                          "from the middle of its epoch restarts it and is not exact. Use a plain DataLoader "
                          "(shuffle/batch_size/drop_last), a statemachine_trainer.data.ResumableLoader or a loader "
                          "with state_dict()/load_state_dict(); Trainer(resumable_data=False) silences this.",
                          stacklevel=2)
        return loader

    def restore_data(self, positions: dict[str, Any]) -> None:
        """Put the sources at a checkpoint's positions now, and keep them for sources replaced during the resume."""
        for stage, position in positions.items():
            if stage in self.sources:
                self.sources[stage].load_state_dict(position)
        self.remember_restored_data(positions)

    def remember_restored_data(self, positions: dict[str, Any]) -> None:
        """Keep a checkpoint's positions, already loaded into the current sources, for sources replaced during the
        resume (``resume_source``)."""
        self._restored_data = dict(positions)
        self._restored_into = {stage: self.sources[stage] for stage in positions if stage in self.sources}

    def resume_source(self, stage: str) -> None:
        """Called by the loop reading ``stage``'s source as it resumes mid-run: put a *new* source at the position.

        A loop that wraps the fit loop rebuilds its data in its own
        ``on_restart`` (``use_data``), after the checkpoint was loaded and
        before the inner loops resume: the source the interrupted epoch reads
        is then a new object, and takes the checkpoint's position here.  A
        position only means something to a loop interrupted mid-run, so
        between two rounds the next round's loader starts afresh.  Each
        position is used once.
        """
        position = self._restored_data.pop(stage, None)
        source = self.sources.get(stage)
        if position is not None and source is not None and source is not self._restored_into.get(stage):
            source.load_state_dict(position)

    def reset_parameters(self, seed: int | None = None) -> None:
        """Fresh weights: ``reset_parameters()`` on every submodule that has one (torch's own initialisation).

        With ``seed``, the initialisation draws from a generator seeded with it
        (the global RNG streams are left as they were), so round *k* of an
        outer loop can start from the same weights on every run and resume.
        Partial gradients are dropped and torchmetrics metrics reset too.
        """
        from torchmetrics import Metric

        with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            for submodule in self.module.modules():
                if isinstance(submodule, Metric):
                    submodule.reset()
                elif submodule is not self.module and callable(getattr(submodule, "reset_parameters", None)):
                    submodule.reset_parameters()
        for param in self.module.parameters():
            param.grad = None

    def reset_optimizers(self) -> None:
        """Fresh optimizers and schedulers: ``configure_optimizers()`` again, checked and wired like at fit start."""
        if self._configure_optimization is None:
            raise RuntimeError("reset_optimizers() is for a fit run: this run has no optimization to reset.")
        self._configure_optimization(self)
        if self.hooks is not None and self.optimization is not None:
            self.optimization.hooks = self.hooks


def _add_flag_and_advice_properties(cls: type) -> None:
    """Give ``cls`` a read-only property per Trainer flag it does not define (``run.max_epochs`` reads
    ``run.config.max_epochs``), and one per Lightning attribute or flag it lacks that raises the error naming
    the replacement (``run.lightning_module``)."""
    for name in sorted(FLAG_NAMES):
        if not hasattr(cls, name):
            setattr(cls, name, property(attrgetter(f"config.{name}"), doc=f"The ``{name}`` flag (``config.{name}``)."))
    for name in sorted({*ATTRIBUTE_ADVICE, *FLAG_ADVICE}):
        if not hasattr(cls, name):
            setattr(cls, name, property(_refusal(name)))


def _refusal(name: str) -> Callable[[Any], Any]:
    """A property getter that raises the error naming what to read instead of Lightning's ``name``."""
    def refuse(run: Any) -> Any:
        raise missing_attribute("trainer (the run)", name, ())

    return refuse


_add_flag_and_advice_properties(Run)

#: Stage name -> the name its limit flag uses (limit_val_batches for "validate").
_LIMIT_NAMES = {"train": "train", "validate": "val", "test": "test", "predict": "predict"}

