"""One entry point (``fit``/``validate``/``test``/``predict``) as a table: the run's lifecycle hooks are its rows.

The Trainer checks an entry point's arguments, begins a
:class:`~statemachine_trainer._run.Run` and runs the stage's entry loop, whose
table is Lightning's order of the lifecycle hooks written down::

    START      --run-->      CONFIGURED / configure_callbacks, find_checkpoint
    CONFIGURED --advance-->  PREPARED   / prepare_data
    PREPARED   --advance-->  SET_UP     / setup, configure_model, read_checkpoint, claim_checkpoint_dir  (fit)
    PREPARED   --advance-->  SET_UP     / setup, configure_model, read_checkpoint      (validate/test/predict)
    SET_UP     --advance-->  CONNECTED  / connect_data, configure_optimizers, assemble     (fit)
    SET_UP     --advance-->  CONNECTED  / connect_data, assemble                           (validate/test/predict)
    CONNECTED  --advance-->  RAN        / restore_checkpoint, log_hyperparameters, run_tree  (fit)
    CONNECTED  --advance-->  RAN        / restore_checkpoint, run_tree                     (validate/test/predict)
    RAN        --advance-->  END        / teardown

``run_tree`` runs the stage's loop tree (``trainer.fit_loop`` for fit), so
the drawn entry loop holds the whole tree (``statemachine-trainer diagram``
of a Trainer).  The hooks with a user-visible name call the user's hooks of
that name, in :mod:`._lifecycle`; the others assemble the run.

**Not part of a checkpoint.**  The entry loop is outside the state set: a
checkpoint is only ever written while ``run_tree`` runs (at a boundary of the
tree), so the entry loop's position in any checkpoint would be the same
(CONNECTED, in ``run_tree``).  A resumed run goes through the table from
START again -- ``setup`` and ``configure_optimizers`` run again, as in
Lightning -- and ``restore_checkpoint`` puts the tree back where it was.

**Failures.**  An exception in any row after ``prepare_data`` runs the
``teardown`` row's hook before it propagates (Lightning tears down a failed
run too); the table's machine is put back to START at the next entry call.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import attrs

from . import _lifecycle, _optim, _run_state
from ._config import check_optimization_mode, defines
from ._optim import ConfigError
from ._optimization import ManualOptimizer, Optimization
from .data._source import is_loader_collection
from .loops import FitLoop
from .loops._base import TrainerLoop
from .machine import END, START, Loop, Row, Table

__all__ = ["ENTRY_TABLE", "FIT_ENTRY_TABLE", "EntryCall", "EntryLoop", "FitEntryLoop", "request_loader"]


def _entry_table(name: str, fit: bool) -> Table:
    """The lifecycle table; fit adds its checkpoint directory's claim, ``configure_optimizers`` and the hparams."""
    claim = ("claim_checkpoint_dir",) if fit else ()
    optimizers = ("configure_optimizers",) if fit else ()
    hyperparameters = ("log_hyperparameters",) if fit else ()
    return Table(
        name=name,
        states=(START, "CONFIGURED", "PREPARED", "SET_UP", "CONNECTED", "RAN", END),
        rows=(
            Row("run", START, "CONFIGURED", hooks=("configure_callbacks", "find_checkpoint")),
            Row("advance", "CONFIGURED", "PREPARED", hooks="prepare_data"),
            Row("advance", "PREPARED", "SET_UP", hooks=("setup", "configure_model", "read_checkpoint", *claim)),
            Row("advance", "SET_UP", "CONNECTED", hooks=("connect_data", *optimizers, "assemble")),
            Row("advance", "CONNECTED", "RAN", hooks=("restore_checkpoint", *hyperparameters, "run_tree")),
            Row("advance", "RAN", END, hooks="teardown"),
        ),
    )


#: ``validate``/``test``/``predict``: one pass of the stage's loop over its data.
ENTRY_TABLE = _entry_table("EntryLoop", fit=False)
#: ``fit``: the same lifecycle, with the optimizers configured and the hyperparameters logged.
FIT_ENTRY_TABLE = _entry_table("FitEntryLoop", fit=True)

#: States from which a failure still tears the run down (``prepare_data`` has run, ``teardown`` has not).
_TEAR_DOWN_ON_FAILURE = ("PREPARED", "SET_UP", "CONNECTED")


@attrs.define
class EntryCall:
    """What one call of an entry point was given, checked by the Trainer before the entry loop runs."""

    module: Any
    datamodule: Any = None
    loaders: dict[str, Any] = attrs.Factory(dict)  # stage -> the dataloader(s) given (None: request them)
    ckpt_path: Any = None  # as given: "best"/"last" are resolved before configure_callbacks, the rest after
    setup: Any = None  # what configure_optimizers returned, parsed (fit)
    checkpoint: Path | None = None  # the checkpoint directory to load, once resolved
    saved: Any = None  # (state, path) read from it
    resized_from: int | None = None  # the world size that wrote it, when another one than this run's (_elastic)
    result: Any = None  # what the stage's tree returned


class EntryLoop(Loop):
    """The lifecycle of ``validate``/``test``/``predict`` (one per stage; the Trainer holds them)."""

    table = ENTRY_TABLE
    checkpointed = False  # it runs around the tree a checkpoint holds (see the module docstring)

    def __init__(self, stage: str, trainer: Any) -> None:
        super().__init__()
        self.stage = stage
        self.name = stage
        self._trainer = trainer  # private: not a sub-loop; the tree is ``children()``
        self._call: EntryCall | None = None
        self._failure: BaseException | None = None  # what escaped this call's rows, for on_exception

    def children(self) -> dict[str, Loop]:
        """The stage's tree, read from the Trainer now (``trainer.fit_loop = MyLoop()`` swaps it)."""
        return {f"{self.stage}_loop": self.tree}

    @property
    def tree(self) -> Loop:
        return self._trainer._roots()[self.stage]

    @property
    def run_context(self) -> Any:
        return self._trainer.run

    @property
    def call(self) -> EntryCall:
        assert self._call is not None, "the entry loop's hooks run only inside run(call)"
        return self._call

    def run(self, call: EntryCall) -> Any:  # type: ignore[override]
        """Run the lifecycle for ``call`` from START; return what the stage's tree returned."""
        self.abandon_run()  # an earlier failed call left the machine where it failed
        self._recover(call)
        self._call = call
        try:
            super().run()
        except BaseException as failure:  # KeyboardInterrupt and preemption too: on_exception, then re-raised
            if self.state in _TEAR_DOWN_ON_FAILURE:
                self._failure = failure
                self.teardown()
            raise
        finally:
            self._call = self._failure = None
        return call.result

    def _recover(self, call: EntryCall) -> None:
        """The stage's tree, left inside a transition by an exception that escaped an earlier call, made runnable.

        Evaluation and prediction start over (a pass holds nothing worth
        keeping).  A fit stopped mid-transition holds half of one: its
        counters, data position and gradients are not at any boundary, so
        going on from there would train on a state no uninterrupted run
        passes through.  It goes on only from a checkpoint, which replaces
        all of it.
        """
        stopped = self.tree.active_path()
        if not stopped:
            return
        if self.stage == "fit" and call.ckpt_path is None:
            raise ConfigError(f"This trainer's last fit stopped inside a transition ({stopped[-1]}) when an exception "
                              "escaped it, so its loops are not at a point a run can go on from. Resume from a "
                              "checkpoint written before the failure -- trainer.fit(model, ckpt_path='latest') -- or "
                              "start over with a new Trainer.")
        for _, loop in self.tree.walk():
            loop.abandon_run()

    # -- START -> CONFIGURED -----------------------------------------------------------------
    def configure_callbacks(self) -> None:
        """The module's ``configure_callbacks()`` merged into the trainer's callbacks."""
        trainer, run = self._trainer, self.run_context
        trainer.callbacks = run.callbacks = _lifecycle.merge_callbacks(trainer.callbacks, run.module)

    def find_checkpoint(self) -> None:
        """The checkpoint a path or "latest" names, searched after the module's own ModelCheckpoint joined."""
        call = self.call
        if call.ckpt_path is not None and call.checkpoint is None:
            call.checkpoint = self._trainer._checkpoint_path(call.ckpt_path)
            self.run_context.ckpt_path = str(call.checkpoint)

    # -- CONFIGURED -> PREPARED -> SET_UP ------------------------------------------------------
    def prepare_data(self) -> None:
        _lifecycle.prepare_data(self.run_context)

    def setup(self) -> None:
        _lifecycle.setup(self.run_context, self.stage)

    def configure_model(self) -> None:
        """The module's ``configure_model()``, then the module on its device with no gradients left over."""
        run = self.run_context
        _lifecycle.configure_model(run)
        run.module.to(self._trainer.device)  # after setup and configure_model, which may build layers
        run.module.zero_grad()  # as Lightning: gradients left from before the run never reach its first step
        # FSDP: shard now, before configure_optimizers builds optimizers over the (then DTensor) parameters.
        self._trainer.strategy.configure_module(run.module, self._trainer.device, self._trainer.precision)

    def read_checkpoint(self) -> None:
        """Read the checkpoint and give the data module its state back, before any dataloader is requested.

        The rest is checked against the run and applied once the optimizers
        exist (``restore_checkpoint``), as Lightning does.
        """
        call, run = self.call, self.run_context
        if call.checkpoint is None:
            return
        state, path, call.resized_from = _read(self._trainer, call.checkpoint, whole_run=self.stage == "fit")
        # Structured and checked as far as the run allows before the optimizers exist: nothing applied yet.
        typed = _run_state.structure(run, self._trainer.fit_loop, state, path, whole_run=self.stage == "fit")
        _run_state.check_datamodule(run, typed, path)
        _run_state.restore_datamodule(run, typed, path)
        call.saved = typed, path

    # -- SET_UP -> CONNECTED ---------------------------------------------------------------------
    def connect_data(self) -> None:
        stage, run = self.stage, self.run_context
        run.use_data(**{stage: request_loader(self._trainer, run, self.call.loaders.get(stage), stage,
                                              required=True)})

    def assemble(self) -> None:
        """The strategy's step, the optimization (fit), the hook relay; the loops are attached last."""
        trainer, run = self._trainer, self.run_context
        module, setup = run.module, self.call.setup
        one_backward = setup is None or Optimization.runs_one_backward(module, setup)
        forward_step = trainer.strategy.wrap_step(module, trainer.device, one_backward)  # DDP: rank 0's weights
        if setup is not None:
            configure_optimization(trainer, run, setup, forward_step)
        from ._hooks import HookRelay

        # After setup, so a callback that switched itself off there (enabled = False) costs nothing.
        run.hooks = HookRelay(module, [cb for cb in run.callbacks if cb.enabled], run, run.results)
        if run.optimization is not None:
            run.optimization.hooks = run.hooks
        _attach(trainer, run, self.tree)

    # -- CONNECTED -> RAN -> END -----------------------------------------------------------------
    def restore_checkpoint(self) -> None:
        """Apply the checkpoint structured in ``read_checkpoint``: the weights, and for fit the whole run; checked first."""
        if self.call.saved is not None:
            typed, path = self.call.saved
            whole_run = self.stage == "fit"
            _run_state.check(self.run_context, self._trainer.fit_loop, typed, path, whole_run)
            _run_state.restore(self.run_context, self._trainer.fit_loop, typed, path, whole_run)
            if whole_run and self.call.resized_from is not None:  # batches counted at another world size
                from ._elastic import rescale_progress

                rescale_progress(self._trainer.fit_loop, self.call.resized_from, self._trainer.strategy.world_size)

    def run_tree(self) -> None:
        self.call.result = self.tree.run()

    def teardown(self) -> None:
        """``on_exception`` after a failure, the user's ``teardown(stage)`` hooks; then the run's resources released.

        First the asynchronous checkpoint write in flight is waited for, so
        the teardown hooks (and the process's exit) see it on disk.  Its
        failure is raised after the teardown -- or, when the run already
        failed, warned beside that failure.
        """
        trainer, run, failure = self._trainer, self.run_context, self._failure
        write_failure = trainer._flush_writes(close=True)
        try:
            self._tear_down(trainer, run, failure)
        finally:
            if write_failure is not None and failure is not None:
                warnings.warn(str(write_failure), stacklevel=2)
        if write_failure is not None and failure is None:
            raise write_failure

    def _tear_down(self, trainer: Any, run: Any, failure: BaseException | None) -> None:
        trainer._modes.exit(run, self.tree)
        try:
            if failure is not None:
                _lifecycle.on_exception(run, failure)
            _lifecycle.teardown(run, self.stage)
        finally:
            for logger in trainer.loggers:
                logger.save()
            self.tree.teardown()
            run.end(interrupted=failure is not None)


class FitEntryLoop(EntryLoop):
    """The lifecycle of ``fit``: validation data too, ``configure_optimizers``, hyperparameters for the loggers."""

    table = FIT_ENTRY_TABLE

    def __init__(self, trainer: Any) -> None:
        super().__init__("fit", trainer)
        self._claim: Any = None  # the checkpoint directory held for this fit (_run_dir)

    def claim_checkpoint_dir(self) -> None:
        """The run id (new, or the resumed checkpoint's), and the checkpoint directory locked for this run.

        Only when the fit writes checkpoints there (a ModelCheckpoint, or
        ``save_on_exception``); see :mod:`._run_dir`.
        """
        from ._run_dir import claim_run_dir, new_run_id, run_of
        from .callbacks import ModelCheckpoint

        trainer, run, call = self._trainer, self.run_context, self.call
        resumed = call.checkpoint is not None
        writes = trainer.config.save_on_exception or (not trainer.config.fast_dev_run and any(
            isinstance(cb, ModelCheckpoint) and cb.enabled for cb in run.callbacks))  # fast_dev_run saves nothing
        run_id, error = None, None
        if trainer.strategy.is_rank_zero:
            run_id = (run_of(call.checkpoint) if resumed else None) or trainer.run_id or new_run_id()
            if writes:
                try:
                    self._claim = claim_run_dir(trainer._checkpoint_dir(), run_id, fresh=not resumed)
                except ConfigError as exc:
                    error = str(exc)
        if trainer.strategy.distributed:
            from .distributed import broadcast_object

            run_id, error = broadcast_object((run_id, error))
        if error is not None:
            raise ConfigError(error)
        trainer.run_id = run_id

    def configure_callbacks(self) -> None:
        """The merged callbacks; asynchronous checkpoints are refused under DDP now, before anything runs."""
        super().configure_callbacks()
        from ._boundary import ASYNC_UNDER_DDP
        from .callbacks import ModelCheckpoint

        if self._trainer.strategy.distributed and any(
                isinstance(cb, ModelCheckpoint) and cb.async_save for cb in self.run_context.callbacks):
            raise ConfigError(f"ModelCheckpoint(async_save=True) under strategy='ddp': {ASYNC_UNDER_DDP}")

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            if self._claim is not None:
                self._claim, claim = None, self._claim
                claim.release()

    def connect_data(self) -> None:
        """The fit's data: the loaders given, else the data module's, else the module's own methods.

        As in Lightning, validation data is read first, and only when the
        module has a ``validation_step`` to run on it (a data module's
        ``val_dataloader`` is not called otherwise; loaders passed explicitly
        without one are refused).  A user's loop around the fit loop may bring
        its own training data (``self.context.use_data(train=...)``).
        """
        trainer, run, given = self._trainer, self.run_context, self.call.loaders
        model = run.module
        has_step = defines(model, "validation_step")
        if given.get("validate") is not None and not has_step:
            raise ConfigError(f"fit() was given val_dataloaders, but {type(model).__name__} defines no "
                              "validation_step; define it, or do not pass validation data.")
        val = _sanity_isolated(trainer, lambda: request_loader(trainer, run, given.get("validate"), "validate",
                                                               required=False)) if has_step else None
        wrapped = not isinstance(trainer.fit_loop, FitLoop)
        train = request_loader(trainer, run, given.get("train"), "train", required=not wrapped)
        run.use_data(**{name: loader for name, loader in (("train", train), ("validate", val)) if loader is not None})

    def configure_optimizers(self) -> None:
        """``configure_optimizers()``, checked; its ``self.trainer`` already has the data (estimated_stepping_batches)."""
        module = self.run_context.module
        setup = _optim.configure_optimizers(module)  # called and checked; None -> NoOptimizer, with a warning
        check_optimization_mode(module, setup, self._trainer.config)
        self.call.setup = setup

    def log_hyperparameters(self) -> None:
        """After the restore: a resumed run logs into the run's own logger version."""
        hparams = _hyperparameters(self.run_context.module, self.run_context.datamodule)
        for logger in self._trainer.loggers:
            logger.log_hyperparams(hparams)

    def run_tree(self) -> None:
        """The fit tree, with checkpoints written at its transition boundaries and preemption signals caught."""
        trainer = self._trainer
        with trainer._boundaries.watch(trainer.fit_loop, getattr(self.run_context.fit_loop, "epoch_loop", None)):
            self.call.result = self.tree.run()


# -- the parts of an assembly the Trainer calls again (reloaded data, reset optimizers) -------------
def request_loader(trainer: Any, run: Any, given: Any, stage: str, required: bool) -> Any:
    """The dataloader of ``stage``: the one given, else the data module's, else the module's own method."""
    method = {"train": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
              "predict": "predict_dataloader"}[stage]
    owner = run.datamodule if run.datamodule is not None else run.module
    loader = given
    trainer._requested_data[stage] = given is None
    if loader is None and callable(getattr(owner, method, None)):
        loader = getattr(owner, method)()
    if loader is None:
        if required:
            entry = "fit" if stage == "train" else stage
            raise ConfigError(f"No {stage} data: pass a dataloader to trainer.{entry}(model, ...) or "
                              f"define {type(owner).__name__}.{method}().")
        return None
    if stage == "train" and is_loader_collection(loader):  # evaluation stages take several (dataloader_idx)
        raise ConfigError(f"The {stage} data is a {type(loader).__name__} of loaders; training takes one "
                          "dataloader: combine them into one dataset (torch.utils.data.ConcatDataset).")
    return loader


def configure_optimization(trainer: Any, run: Any, setup: Any, forward_step: Any) -> None:
    """The run's Optimization for what ``configure_optimizers`` returned, with the strategy's step parts."""
    config = trainer.config
    optimization = Optimization(run.module, setup, trainer.precision, run.hooks, run.results,
                                run.accumulate_grad_batches, config.gradient_clip_val,
                                config.gradient_clip_algorithm)
    optimization.forward_step = forward_step
    optimization.gate = trainer.strategy.step_gate()  # after wrap_step: it decides whether losses pass DDP
    optimization.no_sync = trainer.strategy.no_sync
    run.optimization = optimization
    run.manual_optimizers = tuple(ManualOptimizer(opt, optimization, _manual_progress(run))
                                  for opt in setup.optimizers)


def _attach(trainer: Any, run: Any, root: Loop) -> None:
    """Point every loop of every tree at the run; the tree about to run resolves its per-run choices.

    A loop that wraps the fit loop runs evaluation or prediction as its own
    sub-loops (so their state is in its checkpoints): they are in ``root``.
    """
    for tree in trainer._roots().values():
        for _, node in tree.walk():
            if isinstance(node, TrainerLoop):
                node.context = run
    for _, node in root.walk():
        if isinstance(node, TrainerLoop):
            node.on_attach()
    trainer._modes.enter(run, root)


def _read(trainer: Any, path: Path, whole_run: bool) -> tuple[dict[str, Any], Path, int | None]:
    """``(state, path, resized_from)`` of the checkpoint at ``path``: every rank its own part and the replicated one.

    A checkpoint of another world size or format (one process / per-rank
    parts) is re-derived for this run by ``_elastic`` -- during fit only with
    ``global_batch_size``, else refused naming both world sizes; outside fit
    its weights load.  ``resized_from`` is then the world size that wrote it.
    """
    from .checkpoint._resize import saved_world_size

    saved = saved_world_size(path)  # None: one process wrote it (no rank parts)
    same_size = (saved or 1) == trainer.strategy.world_size
    same_format = (saved is not None) == trainer.strategy.distributed
    elastic = trainer.config.global_batch_size is not None or not whole_run
    if not same_size or (not same_format and elastic):
        from ._elastic import read_resized

        return read_resized(trainer, path, saved or 1, whole_run), path, saved or 1
    if not trainer.strategy.distributed:
        from .checkpoint import load_checkpoint_dir

        state, _ = load_checkpoint_dir(path, map_location=trainer.run.device)
        return state, path, None
    from ._sharded_state import sharded_templates
    from .checkpoint import load_checkpoint_parts

    # Sharded tensors (FSDP) are read into this run's split of them; without any, nothing is asked of the template.
    template = sharded_templates(trainer.run.module)
    replicated, rank_local, _ = load_checkpoint_parts(path, map_location=trainer.run.device, template=template)
    return {**replicated, **rank_local}, path, None


def _sanity_isolated(trainer: Any, request: Any) -> Any:
    """``request()`` -- the validation loader -- without moving the global RNGs when a sanity check will run.

    Lightning asks for it inside the sanity check, which runs on saved RNG
    states: whatever ``val_dataloader()`` draws (a dataset built with
    ``torch.randn``, as the BoringModel's) leaves the training data and
    weights alone.  Asking here, under the same isolation, keeps a ported
    program's training bit-identical.
    """
    if not trainer.config.num_sanity_val_steps:
        return request()
    from .checkpoint import capture_rng, restore_rng

    saved = capture_rng()
    try:
        return request()
    finally:
        restore_rng(saved)


def _hyperparameters(model: Any, datamodule: Any) -> dict[str, Any]:
    """The module's and the data module's saved hyperparameters, for the loggers (Lightning merges them too)."""
    merged = model.hyperparameters_to_log()
    for name, value in (datamodule.hyperparameters_to_log() if datamodule is not None else {}).items():
        if name in merged and merged[name] != value:
            raise ConfigError(f"The hyperparameter {name!r} is {merged[name]!r} in {type(model).__name__} but "
                              f"{value!r} in {type(datamodule).__name__}; the loggers record one set, so rename "
                              "one of them.")
        merged[name] = value
    return merged


def _manual_progress(run: Any) -> Any:
    """Where a manual optimizer counts its steps: the fit loop's manual optimization loop."""
    def progress() -> Any:
        return run.fit_loop.epoch_loop.batch_loop.manual_loop.progress
    return progress
