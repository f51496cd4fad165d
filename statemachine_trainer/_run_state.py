"""The run's state set: what a checkpoint holds, how it is checked, how it is put back.

Everything that decides the future of a run is captured here and nothing
else is: a resumed run is the same function of this data as the
uninterrupted one.  The parts, by top-level key:

* ``module`` -- parameters and buffers; ``grads`` -- partial ``.grad``
  tensors inside a gradient-accumulation window; ``held_grads`` (FSDP only)
  -- the unsharded gradients FSDP2 keeps off ``.grad`` inside such a window;
* ``optimizers``, ``schedulers`` (ReduceLROnPlateau included), ``precision``
  (the GradScaler);
* ``loops`` -- every loop's FSM position, progress and fields (the state of a
  step under way too, e.g. whether this batch already stepped: the batch
  loop's fields);
* ``metrics`` (torchmetrics states, which ``state_dict()`` leaves out) and
  ``results`` (the epoch's accumulated logged values);
* ``rng`` (Python, NumPy, torch CPU and every CUDA device) and ``data``
  (each resumable loader's position);
* ``hparams`` -- what ``save_hyperparameters`` recorded, for ``load_from_checkpoint``
  (values that are not JSON-able are named under ``omitted``, not stored);
* ``callbacks`` and ``loggers`` (e.g. ModelCheckpoint's best scores, the CSV
  rows logged so far), and ``extra`` from the user's ``on_save_checkpoint``;
* ``datamodule`` (only when the run has one) -- its class name and what its
  ``state_dict()`` returned: JSON-able values and tensors, like every part
  (anything else is refused when the checkpoint is written, naming its path).

Loading checks every part against the run it goes into *before* applying
any of it, so a checkpoint from another model fails with the key that does
not fit, and leaves the module, optimizers and loops untouched: first
:func:`structure` (the types of every part, through ``_run_schema``, and the
fit with the module and the loop tree), then :func:`check` once the
optimizers exist, then :func:`restore`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from ._optim import ConfigError
from .checkpoint import CheckpointError
from .state import StateError

if TYPE_CHECKING:
    from ._run import Run
    from .machine import Loop

__all__ = [
    "CheckpointMismatch",
    "LoopTreeMismatch",
    "apply_undoably",
    "capture",
    "check",
    "check_datamodule",
    "check_module_state",
    "check_optimizer_states",
    "conforms",
    "restore",
    "restore_datamodule",
    "split",
    "structure",
]

#: The keys a checkpoint written during ``fit`` has (one written outside fit holds weights only).
RUN_KEYS = ("module", "loops", "callbacks", "rng", "optimizers", "schedulers", "precision", "grads", "metrics",
            "results", "data", "loggers", "extra")


#: Parts that differ between the ranks of a DDP run: each rank saves and loads its own.  The rest is
#: replicated (equal on every rank by construction) and written once.
RANK_LOCAL = ("rng", "data", "grads", "held_grads", "results", "metrics", "loggers")


def split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(replicated, rank_local)`` parts of a state set."""
    return ({k: v for k, v in state.items() if k not in RANK_LOCAL},
            {k: v for k, v in state.items() if k in RANK_LOCAL})


def capture(run: Run, root: Loop) -> dict[str, Any]:
    """The state set of ``run`` with loop tree ``root`` (tensors are not copied: write or compare it right away)."""
    from .checkpoint import capture_rng

    module = run.module
    state: dict[str, Any] = {
        "module": dict(module.state_dict()),
        "loops": root.state_dict(),
        "callbacks": {cb.state_key: cb.state_dict() for cb in run.callbacks},
        "rng": capture_rng(),
        "hparams": _storable_hparams(module),
    }
    optimization = run.optimization
    if optimization is not None:
        state["optimizers"] = [opt.state_dict() for opt in optimization.optimizers]
        state["schedulers"] = [c.scheduler.state_dict() for c in optimization.setup.schedulers]
        state["precision"] = run.precision.state_dict()
    state["grads"] = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    held = run.strategy.held_grads(module)
    if held is not None:
        state["held_grads"] = held
    state["metrics"] = _metric_states(module)
    state["results"] = run.results.state_dict()
    state["data"] = {stage: source.state_dict() for stage, source in run.sources.items() if source.resumable}
    state["loggers"] = {_logger_key(i, lg): lg.state_dict() for i, lg in enumerate(run.loggers)}
    if run.datamodule is not None:
        state["datamodule"] = _datamodule_state(run.datamodule)
    extra: dict[str, Any] = {}
    module.on_save_checkpoint(extra)
    for callback in run.callbacks:
        callback.on_save_checkpoint(run, module, extra)
    state["extra"] = extra
    return state


class CheckpointMismatch(CheckpointError, ConfigError):
    """A readable checkpoint that does not fit this run (another model, loop tree, optimizers...).

    Both a :class:`CheckpointError` (the checkpoint is refused) and a
    ``ConfigError`` (the run is configured for other state), so either catches it.
    """


class LoopTreeMismatch(CheckpointMismatch, StateError):
    """A checkpoint whose loop state set does not fit this loop tree (also the :class:`StateError` it was)."""


def structure(run: Run, root: Loop, state: Any, path: Path, whole_run: bool) -> Any:
    """Phase one of a resume: the typed checkpoint, checked against everything the run has before ``fit`` builds
    its optimizers (module, gradients, metrics, loop tree); raises before anything -- even the data module's
    state -- is applied.  In a multi-process run every rank raises if any rank's part is refused."""
    typed, own = None, None
    try:
        typed = _structure(run, root, state, path, whole_run)
    except CheckpointError as exc:
        own = exc
    if run.strategy.world_size > 1:
        from .checkpoint._dist import agree

        agree(own, f"to check its part of checkpoint {path}")
    if own is not None:
        raise own
    return typed


def _structure(run: Run, root: Loop, state: Any, path: Path, whole_run: bool) -> Any:
    from ._run_schema import RunCheckpoint, WeightsCheckpoint, structure_checkpoint

    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: $ is a {type(state).__name__}, not the mapping a checkpoint holds; the "
                              "state file was edited or damaged.")
    if "module" not in state:
        raise CheckpointMismatch(f"{path} holds no module state ($.module); it was not written by a Trainer.")
    missing = [key for key in RUN_KEYS if key not in state]
    if whole_run and missing:
        raise CheckpointMismatch(f"{path} cannot resume fit(): it has no {', '.join('$.' + k for k in missing)} "
                                 "(it was written outside fit, so it holds weights only); pass it to "
                                 "validate/test/predict, or resume from a checkpoint written during fit.")
    typed = structure_checkpoint(state, RunCheckpoint if whole_run else WeightsCheckpoint, path)
    _check_module(run.module, typed.module, path)
    if whole_run:
        _check_grads(run.module, typed.grads, path)
        _check_held_grads(run, typed.held_grads, path)
        _check_metrics(run.module, typed.metrics, path)
        _check_results(path, typed.results)
        try:
            root.check_state_dict(typed.loops)
        except ValueError as error:
            raise LoopTreeMismatch(f"{path} does not match this loop tree: {error}") from None
    return typed


def check(run: Run, root: Loop, typed: Any, path: Path, whole_run: bool) -> None:
    """Phase two, once the optimizers exist: raise naming the first part of ``typed`` that misfits; change nothing."""
    if not whole_run:
        return
    _check_optimizers(run, typed, path)
    if run.strategy.world_size > 1:
        from .distributed import all_equal

        if not all_equal(typed.loops):
            raise CheckpointMismatch(f"{path}: the ranks' parts put the loop tree at different transitions; the "
                                     "checkpoint is inconsistent, resume from an earlier one.")


def restore(run: Run, root: Loop, typed: Any, path: Path, whole_run: bool) -> None:
    """Put a checked checkpoint back: weights only, or (``whole_run``) everything ``capture`` took.

    The parts whose format another component owns go first, each one's
    current state kept: if one refuses its part, those already given theirs
    get their own state back and a :class:`CheckpointMismatch` names the part.
    The module, gradients, metrics and RNGs, checked completely beforehand,
    follow.
    """
    from .checkpoint import restore_rng

    module = run.module
    if whole_run:
        _apply_on_every_rank(run, path, _owned_parts(run, root, typed))
        run.remember_restored_data(typed.data)
    module.load_state_dict(typed.module)
    if whole_run:
        params = dict(module.named_parameters())
        for name, grad in typed.grads.items():
            params[name].grad = grad.to(params[name].device)
        if typed.held_grads is not None:
            run.strategy.restore_held_grads(module, typed.held_grads)
        _load_metric_states(module, typed.metrics)
        rng = typed.rng
        restore_rng({"python": rng.python, "numpy": rng.numpy, "torch": rng.torch}
                    | ({} if rng.cuda is None else {"cuda": rng.cuda}))
    module.on_load_checkpoint(typed.extra)
    for callback in run.callbacks:
        callback.on_load_checkpoint(run, module, typed.extra)


def _owned_parts(run: Run, root: Loop, typed: Any) -> list[tuple[str, Any, Any]]:
    """``(key path, component, its saved state)`` for each part a component checks itself, in load order."""
    optimization = run.optimization
    parts: list[tuple[str, Any, Any]] = [(f"$.data.{stage}", run.sources[stage], position)
                                         for stage, position in typed.data.items() if stage in run.sources]
    parts.append(("$.results", run.results, typed.results))
    parts += [(f"$.callbacks[{cb.state_key!r}]", cb, typed.callbacks[cb.state_key]) for cb in run.callbacks
              if cb.state_key in typed.callbacks]
    parts += [(f"$.loggers[{_logger_key(i, lg)!r}]", lg, typed.loggers[_logger_key(i, lg)])
              for i, lg in enumerate(run.loggers) if _logger_key(i, lg) in typed.loggers]  # added since: afresh
    parts += [(f"$.optimizers[{i}]", opt, attrs.asdict(saved, recurse=False))
              for i, (opt, saved) in enumerate(zip(optimization.optimizers, typed.optimizers))]
    parts += [(f"$.schedulers[{i}]", config.scheduler, saved)
              for i, (config, saved) in enumerate(zip(optimization.setup.schedulers, typed.schedulers))]
    parts.append(("$.precision", run.precision, typed.precision))
    parts.append(("$.loops", root, typed.loops))
    return parts


def _apply_on_every_rank(run: Run, path: Path, parts: list[tuple[str, Any, Any]]) -> None:
    """:func:`apply_undoably`; in a multi-process run, if any rank's components refused, every rank undoes its own
    and raises (a rank's data position is its own, so one rank alone may refuse)."""
    touched, own = [], None
    try:
        touched = apply_undoably(path, parts)
    except CheckpointError as exc:
        own = exc
    if run.strategy.world_size > 1:
        from .checkpoint._dist import agree

        try:
            agree(own, f"to restore its part of checkpoint {path}")
        except CheckpointError:
            _undo(touched)
            raise
    if own is not None:
        raise own


def apply_undoably(path: Path, parts: list[tuple[str, Any, Any]]) -> list[tuple[Any, Any]]:
    """``load_state_dict`` each part; if one raises, give every component touched its own state back, then raise.

    Returns each component with the state it had, for an undo decided later.
    """
    touched: list[tuple[Any, Any]] = []
    for where, component, saved in parts:
        touched.append((component, copy.deepcopy(component.state_dict())))
        try:
            component.load_state_dict(saved)
        except Exception as exc:  # noqa: BLE001 -- each component refuses in its own way
            _undo(touched)
            raise _refused(path, where, component, exc) from None
    return touched


def _refused(path: Path, where: str, component: Any, exc: Exception) -> CheckpointMismatch:
    return CheckpointMismatch(f"{path}: {where} was refused by {type(component).__name__} ({type(exc).__name__}: "
                              f"{str(exc)[:300]}); nothing of the checkpoint was applied. The state file was edited, "
                              "or written with other components: resume from another checkpoint, or with the "
                              "components that wrote it.")


def _undo(touched: list[tuple[Any, Any]]) -> None:
    for component, before in reversed(touched):
        try:
            component.load_state_dict(before)
        except Exception:  # noqa: BLE001, S110 -- best effort: the refusal raised next is what matters
            pass


# -- the data module ------------------------------------------------------------------------------
def _datamodule_state(datamodule: Any) -> dict[str, Any]:
    saved = datamodule.state_dict()
    if not isinstance(saved, dict):
        raise ConfigError(f"{type(datamodule).__name__}.state_dict() returned {type(saved).__name__}; return a dict "
                          "of numbers, strings, lists, dicts and tensors (an empty one when there is nothing to keep).")
    return {"class": type(datamodule).__qualname__, "state": saved}


def check_datamodule(run: Run, typed: Any, path: Path) -> None:
    """Raise when the checkpoint's data module state is not the run's data module's; change nothing."""
    import warnings

    saved, datamodule = typed.datamodule, run.datamodule
    if saved is None:
        if datamodule is not None and not getattr(datamodule.load_state_dict, "__noop_hook__", False):
            warnings.warn(f"{path} holds no data module state (it was written without one); "
                          f"{type(datamodule).__name__}.load_state_dict is not called and the data module keeps "
                          "its own state.", stacklevel=4)
        return
    if not (set(saved) == {"class", "state"} and isinstance(saved["class"], str) and isinstance(saved["state"], dict)):
        raise CheckpointError(f"{path}: $.datamodule is not a data module's saved state ({{'class', 'state'}}); "
                              "the checkpoint was edited or damaged. Resume from another one.")
    if datamodule is None:
        if saved["state"]:
            warnings.warn(f"{path} holds the state of data module {saved['class']}, but this run has no data "
                          "module; it is not used. Pass the data module (datamodule=dm) to restore it.", stacklevel=4)
        return
    ours = type(datamodule).__qualname__
    if saved["class"] != ours:
        raise CheckpointMismatch(f"{path} holds the state of data module {saved['class']}, but this run's data "
                                 f"module is {ours}; resume with the data module that wrote the checkpoint.")


def restore_datamodule(run: Run, typed: Any, path: Path) -> None:
    """Give the data module its saved state (checked by ``check_datamodule``), before its dataloaders are read:
    the first part of a checkpoint applied, so if the data module refuses it nothing else has been."""
    saved = typed.datamodule
    if saved is not None and run.datamodule is not None:
        try:  # not undoable: its state_dict() is the user's hook, not called at a resume
            run.datamodule.load_state_dict(saved["state"])
        except Exception as exc:  # noqa: BLE001 -- the user's load_state_dict refuses in its own way
            raise _refused(path, "$.datamodule.state", run.datamodule, exc) from None


# -- checks ---------------------------------------------------------------------------------------
_FIX = "resume with the module (and configure_optimizers) that wrote the checkpoint"


def check_module_state(module: torch.nn.Module, saved: Any, path: Path, grads: Any = None) -> None:
    """ConfigError naming the first key of ``saved`` (a state_dict, and partial ``grads``) that misfits ``module``."""
    _check_module(module, saved, path)
    if grads is not None:
        _check_grads(module, grads, path)


def check_optimizer_states(path: Path, optimizers: Any, saved: Any, schedulers: Any, saved_schedulers: Any) -> None:
    """Raise when the saved optimizers/schedulers (typed: ``_run_schema.OptimizerState``, dicts) are not as many
    as these, hold other param groups, or other kinds of values than these have."""
    if len(saved) != len(optimizers) or len(saved_schedulers) != len(schedulers):
        raise CheckpointMismatch(f"{path} holds {len(saved)} optimizer(s) and {len(saved_schedulers)} "
                                 f"scheduler(s), but {len(optimizers)} and {len(schedulers)} were given "
                                 f"(configure_optimizers() returns them in a Trainer run); {_FIX}.")
    for i, (opt, opt_state) in enumerate(zip(optimizers, saved)):
        _check_optimizer(path, i, opt, opt_state)
    for i, (sched, sched_state) in enumerate(zip(schedulers, saved_schedulers)):
        conforms(sched_state, sched.state_dict(), path, f"$.schedulers[{i}]")


def _check_optimizer(path: Path, i: int, opt: Any, saved: Any) -> None:
    sizes = [len(g.get("params", [])) if isinstance(g.get("params"), list) else -1 for g in saved.param_groups]
    ours = [len(g["params"]) for g in opt.param_groups]
    if sizes != ours:
        raise CheckpointMismatch(f"{path} does not match optimizer {i} ({type(opt).__name__}): "
                                 f"$.optimizers[{i}].param_groups hold {sizes} parameters per group in the checkpoint "
                                 f"but {ours} here; {_FIX}.")
    indices = [p for g in saved.param_groups for p in g["params"]]
    if any(type(p) is not int for p in indices) or sorted(indices) != list(range(len(indices))):
        raise CheckpointError(f"{path}: $.optimizers[{i}].param_groups number their parameters {indices[:10]}..., "
                              f"not 0..{len(indices) - 1} once each; the state file was edited or damaged.")
    stray = sorted(set(saved.state) - set(indices))
    if stray:
        raise CheckpointError(f"{path}: $.optimizers[{i}].state[{stray[0]}] belongs to no parameter of its groups; "
                              "the state file was edited or damaged.")
    _check_param_states(path, i, [p for g in opt.param_groups for p in g["params"]], saved.state)
    live = opt.state_dict()["param_groups"]
    filled = _as_loaded(path, i, opt, saved.param_groups)
    for g, (group, ours_group) in enumerate(zip(filled, live)):
        where = f"$.optimizers[{i}].param_groups[{g}]"
        missing = sorted(set(ours_group) - set(group))
        if missing:
            raise CheckpointError(f"{path}: {where} lacks {missing}, which {type(opt).__name__} needs to step; the "
                                  "state file was edited or damaged.")
        conforms({k: v for k, v in group.items() if k != "params"},
                 {k: v for k, v in ours_group.items() if k != "params"}, path, where)


def _as_loaded(path: Path, i: int, opt: Any, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The saved param groups as ``opt.load_state_dict`` would leave them: through the optimizer class's own
    ``__setstate__`` (which fills in keys older torch versions did not save), on a scratch instance."""
    scratch = object.__new__(type(opt))
    try:
        scratch.__setstate__({"defaults": copy.deepcopy(opt.defaults), "state": {},
                              "param_groups": [copy.deepcopy(group) for group in groups]})
        return scratch.param_groups
    except Exception as exc:  # noqa: BLE001 -- whatever the optimizer's own loading raises
        raise CheckpointError(f"{path}: $.optimizers[{i}].param_groups cannot be loaded into {type(opt).__name__} "
                              f"({type(exc).__name__}: {str(exc)[:200]}); the state file was edited or "
                              "damaged.") from None


#: Per-parameter buffers of torch's optimizers, which have their parameter's shape (None: not allocated yet).
_PARAM_SHAPED = frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "acc_delta",
                           "grad_avg", "sum", "exp_inf", "prev", "step_size", "ax"})


def _check_param_states(path: Path, i: int, params: list[torch.Tensor], states: dict[int, Any]) -> None:
    """What a step would trip over later: a non-tensor buffer, or one not of its parameter's shape."""
    for index, state in states.items():
        for key, value in state.items():
            where = f"$.optimizers[{i}].state[{index}][{key!r}]"
            if isinstance(value, (str, dict)) or key in _PARAM_SHAPED and value is not None and not (
                    isinstance(value, torch.Tensor) and value.shape == params[index].shape):
                raise CheckpointError(f"{path}: {where} is {_describe_value(value)}, not a buffer for a parameter of "
                                      f"shape {tuple(params[index].shape)}; the state file was edited or damaged.")


def conforms(saved: Any, live: Any, path: Path, where: str) -> None:
    """Raise :class:`CheckpointError` unless ``saved`` has the shape of ``live`` (what the component holds now).

    Dicts may hold no key the live one lacks (unless the live one is empty:
    filled as it runs); keys they lack keep their live value, as torch's own
    loaders fill in what older versions did not save.  Values must be of the
    same kind -- a number for a number (an lr given as ``1`` is an int until
    a scheduler scales it), a bool for a bool, a string for a string, a
    tensor of the same dtype for a tensor.  A live None accepts anything:
    its saved form is not known yet.
    """
    problem = _misfit(saved, live)
    if problem is not None:
        inner, text = problem
        raise CheckpointError(f"{path}: {where}{inner} {text}; the state file was edited, or written by another "
                              "version of the component. Use an earlier checkpoint.")


def _misfit(saved: Any, live: Any) -> tuple[str, str] | None:
    if live is None:
        return None
    kinds = ((bool, (bool,)), (int, (int, float)), (float, (int, float)), (str, (str,)))
    for live_kind, accepted in kinds:
        if isinstance(live, live_kind):
            ok = isinstance(saved, accepted) and (live_kind is bool or not isinstance(saved, bool))
            what = "a number" if live_kind in (int, float) else live_kind.__name__
            return None if ok else ("", f"is {type(saved).__name__} {_short(saved)}, not {what}")
    if isinstance(live, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.dtype != live.dtype:
            return "", f"is {_describe_value(saved)}, not a {live.dtype} tensor"
        return None
    if isinstance(live, dict):
        return _dict_misfit(saved, live)
    if isinstance(live, (list, tuple)):
        if not isinstance(saved, (list, tuple)):
            return "", f"is {type(saved).__name__}, not a list"
        if isinstance(live, tuple) and len(saved) != len(live):  # a tuple is a record (Adam's betas), not a log
            return "", f"holds {len(saved)} values, not {len(live)}"
        for index, (a, b) in enumerate(zip(saved, live)):
            found = _misfit(a, b)
            if found is not None:
                return f"[{index}]{found[0]}", found[1]
    return None


def _dict_misfit(saved: Any, live: dict[Any, Any]) -> tuple[str, str] | None:
    if not isinstance(saved, dict):
        return "", f"is {type(saved).__name__}, not a mapping"
    unknown = sorted(map(str, set(saved) - set(live)))
    if live and unknown:
        return "", f"has key(s) {unknown}, which {'it' if len(unknown) == 1 else 'they'} should not have"
    for key, value in saved.items():
        found = _misfit(value, live.get(key)) if live else None
        if found is not None:
            return f"[{key!r}]{found[0]}", found[1]
    return None


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**50 else "<a huge int>"
    return text if len(text) < 60 else text[:57] + "..."


def _describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {_short(value)}"


def _check_module(module: torch.nn.Module, saved: Any, path: Path) -> None:
    """Missing, unexpected and differently-shaped keys, named -- torch's own message lists them all at once."""
    ours = module.state_dict()
    name = type(module).__name__
    missing = [k for k in ours if k not in saved]
    if missing:
        raise CheckpointMismatch(f"{path} does not match {name}: $.module[{missing[0]!r}] is missing from the "
                                 f"checkpoint ({len(missing)} key(s) missing); {_FIX}.")
    unexpected = [k for k in saved if k not in ours]
    if unexpected:
        raise CheckpointMismatch(f"{path} does not match {name}: $.module[{unexpected[0]!r}] is in the checkpoint "
                                 f"but not in the module ({len(unexpected)} unexpected key(s)); {_FIX}.")
    for key, tensor in ours.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        if not isinstance(saved[key], torch.Tensor):
            raise CheckpointError(f"{path}: $.module[{key!r}] is {_describe_value(saved[key])}, not a tensor; the "
                                  "state file was edited or damaged.")
        if tuple(saved[key].shape) != tuple(tensor.shape):
            raise CheckpointMismatch(f"{path} does not match {name}: $.module[{key!r}] has shape "
                                     f"{tuple(saved[key].shape)} in the checkpoint but {tuple(tensor.shape)} in the "
                                     f"module; {_FIX}.")


#: What ``_results``' state keeps under each key it routes logged values by: checked here because its own
#: ``load_state_dict`` takes them as they are, and a wrong type would only fail at the next ``self.log``.
_RESULTS_FIELDS = {"fx": (str, type(None)), "stage": (str, type(None)), "dataloader_idx": (int, type(None)),
                   "slots": (list,), "callback_metrics": (dict,), "progress_bar_metrics": (dict,),
                   "logged_metrics": (dict,), "pending_log": (dict,)}
_SLOT_FIELDS = {"stage": (str, type(None)), "fx": (str, type(None)), "name": (str,),
                "dataloader_idx": (int, type(None)), "on_step": (bool,), "on_epoch": (bool,), "prog_bar": (bool,),
                "logger": (bool,), "reduce_fx": (str,), "direct": (bool,), "sync_dist": (bool,),
                "has_metric": (bool,), "weight": (int, float, torch.Tensor),
                "last": (torch.Tensor, type(None)), "total": (torch.Tensor, int, float, type(None))}


def _check_results(path: Path, results: dict[str, Any]) -> None:
    _check_fields(path, "$.results", results, _RESULTS_FIELDS)
    for i, slot in enumerate(results.get("slots", [])):
        if not isinstance(slot, dict):
            raise CheckpointError(f"{path}: $.results.slots[{i}] is a {type(slot).__name__}, not a mapping; the "
                                  "state file was edited or damaged.")
        _check_fields(path, f"$.results.slots[{i}]", slot, _SLOT_FIELDS)
    for view in ("callback_metrics", "progress_bar_metrics", "logged_metrics", "pending_log"):
        if any(not isinstance(key, str) for key in results.get(view, {})):
            raise CheckpointError(f"{path}: $.results.{view} has a key that is not a string; the state file was "
                                  "edited or damaged.")


def _check_fields(path: Path, where: str, data: dict[str, Any], fields: dict[str, tuple[type, ...]]) -> None:
    for key, kinds in fields.items():
        value = data.get(key)
        if key in data and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
            raise CheckpointError(f"{path}: {where}.{key} is {_describe_value(value)}, not "
                                  f"{' or '.join(k.__name__ for k in kinds)}; the state file was edited or damaged.")


def _check_optimizers(run: Run, typed: Any, path: Path) -> None:
    check_optimizer_states(path, run.optimization.optimizers, typed.optimizers,
                           [c.scheduler for c in run.optimization.setup.schedulers], typed.schedulers)
    conforms(typed.precision, run.precision.state_dict(), path, "$.precision")


def _check_grads(module: torch.nn.Module, grads: Any, path: Path) -> None:
    params = dict(module.named_parameters())
    for name, grad in grads.items():
        if name not in params or tuple(grad.shape) != tuple(params[name].shape):
            raise CheckpointMismatch(f"{path} does not match {type(module).__name__}: $.grads[{name!r}] has no "
                                     f"parameter of that name and shape; {_FIX}.")
        if grad.dtype != params[name].dtype:
            raise CheckpointError(f"{path}: $.grads[{name!r}] is a {grad.dtype} tensor but its parameter is "
                                  f"{params[name].dtype}; the state file was edited or damaged.")


def _check_held_grads(run: Run, held: Any, path: Path) -> None:
    """Held gradients only where the strategy holds some (FSDP), each shaped like its (whole) parameter."""
    if held is None:
        return
    if run.strategy.held_grads(run.module) is None:
        raise CheckpointMismatch(f"{path} holds gradients FSDP kept inside an accumulation window ($.held_grads), "
                                 f"but this run's strategy is {run.strategy.name!r}, which cannot take them; resume "
                                 "it with strategy='fsdp', or from a checkpoint at an optimizer step.")
    params = dict(run.module.named_parameters())
    for name, grad in held.items():
        if name not in params or tuple(grad.shape) != tuple(params[name].shape):
            raise CheckpointMismatch(f"{path} does not match {type(run.module).__name__}: $.held_grads[{name!r}] "
                                     f"has no parameter of that name and shape; {_FIX}.")


def _check_metrics(module: torch.nn.Module, saved: dict[str, Any], path: Path) -> None:
    """Each saved metric state has the live metric's state names, tensors where it has tensors (same dtype and
    shape), lists of tensors where it accumulates lists."""
    from torchmetrics import Metric

    for name, metric in module.named_modules():
        if not (isinstance(metric, Metric) and name in saved):
            continue
        where, entry = f"$.metrics[{name!r}]", saved[name]
        if set(entry.state) != set(metric.metric_state) or entry.update_count < 0:
            raise CheckpointError(f"{path}: {where} holds states {sorted(entry.state)} (update_count "
                                  f"{entry.update_count}), but {type(metric).__name__} has "
                                  f"{sorted(metric.metric_state)}; the state file was edited, or written with "
                                  "another metric.")
        for key, live in metric.metric_state.items():
            value = entry.state[key]
            fits = (isinstance(value, torch.Tensor) and value.dtype == live.dtype and value.shape == live.shape
                    if isinstance(live, torch.Tensor) else
                    isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value))
            if not fits:
                raise CheckpointError(f"{path}: {where}.state[{key!r}] is {_describe_value(value)}, which "
                                      f"{type(metric).__name__} cannot hold there; the state file was edited or "
                                      "damaged.")


# -- hyperparameters ---------------------------------------------------------------------------------
def _storable_hparams(module: torch.nn.Module) -> dict[str, Any]:
    """The module's ``hparams`` that a checkpoint can hold, and the names of those it cannot (for
    ``load_from_checkpoint``, which asks for them)."""
    hparams = dict(getattr(module, "hparams", None) or {})
    values = {name: value for name, value in hparams.items() if _is_plain(value)}
    return {"values": values, "omitted": sorted(set(hparams) - set(values))}


def _is_plain(value: Any) -> bool:
    """Numbers, strings, None, tensors, and lists/tuples/str-keyed dicts of them: what JSON + tensors can say."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


# -- torchmetrics and loggers -----------------------------------------------------------------------
def _metric_states(module: torch.nn.Module) -> dict[str, Any]:
    """Every torchmetrics Metric's accumulated state (not in ``state_dict()``: its states are non-persistent)."""
    from torchmetrics import Metric

    return {name: {"state": dict(metric.metric_state), "update_count": metric.update_count}
            for name, metric in module.named_modules() if isinstance(metric, Metric)}


def _load_metric_states(module: torch.nn.Module, states: dict[str, Any]) -> None:
    from torchmetrics import Metric

    for name, metric in module.named_modules():
        if isinstance(metric, Metric) and name in states:
            metric.reset()  # drops any cached compute() result
            values = {key: list(value) if isinstance(value, (list, tuple)) else value
                      for key, value in states[name].state.items()}
            # A Metric's load_state_dict takes its states whether or not they are persistent.
            metric.load_state_dict(values, strict=False)
            # torchmetrics has no public way to set the update count (compute() warns when it is 0).
            metric._update_count = states[name].update_count


def _logger_key(index: int, logger: Any) -> str:
    return f"{index}:{type(logger).__name__}"
