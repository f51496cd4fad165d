"""The run's state set: what a checkpoint holds, how it is checked, how it is put back.

Everything that decides the future of a run is captured here and nothing
else is: a resumed run is the same function of this data as the
uninterrupted one.  The parts, by top-level key:

* ``module`` -- parameters and buffers; ``grads`` -- partial ``.grad``
  tensors inside a gradient-accumulation window;
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
not fit, and leaves the module, optimizers and loops untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._optim import ConfigError

if TYPE_CHECKING:
    from ._run import Run
    from .machine import Loop

__all__ = ["capture", "check", "check_datamodule", "check_module_state", "check_optimizer_states", "restore",
           "restore_datamodule", "split"]

#: The keys a checkpoint written during ``fit`` has (one written outside fit holds weights only).
RUN_KEYS = ("module", "loops", "callbacks", "rng", "optimizers", "schedulers", "precision", "grads", "metrics",
            "results", "data", "loggers", "extra")


#: Parts that differ between the ranks of a DDP run: each rank saves and loads its own.  The rest is
#: replicated (equal on every rank by construction) and written once.
RANK_LOCAL = ("rng", "data", "grads", "results", "metrics", "loggers")


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


def check(run: Run, root: Loop, state: Any, path: Path, whole_run: bool) -> None:
    """Raise ConfigError naming the first key of ``state`` that does not fit this run; change nothing."""
    if not isinstance(state, dict) or "module" not in state:
        raise ConfigError(f"{path} holds no module state ($.module); it was not written by a Trainer.")
    _check_module(run.module, state["module"], path)
    if not whole_run:
        return
    missing = [key for key in RUN_KEYS if key not in state]
    if missing:
        raise ConfigError(f"{path} cannot resume fit(): it has no {', '.join('$.' + k for k in missing)} "
                          "(it was written outside fit, so it holds weights only); pass it to "
                          "validate/test/predict, or resume from a checkpoint written during fit.")
    _check_optimizers(run, state, path)
    _check_grads(run.module, state["grads"], path)
    try:
        root.check_state_dict(state["loops"])
    except ValueError as error:
        raise ConfigError(f"{path} does not match this loop tree: {error}") from None
    if run.strategy.world_size > 1:
        from .distributed import all_equal

        if not all_equal(state["loops"]):
            raise ConfigError(f"{path}: the ranks' parts put the loop tree at different transitions; the "
                              "checkpoint is inconsistent, resume from an earlier one.")


def restore(run: Run, root: Loop, state: dict[str, Any], whole_run: bool) -> None:
    """Put a checked state set back: weights only, or (``whole_run``) everything ``capture`` took."""
    from .checkpoint import restore_rng

    module = run.module
    module.load_state_dict(state["module"])
    if whole_run:
        _restore_optimization(run, state)
        params = dict(module.named_parameters())
        for name, grad in state["grads"].items():
            params[name].grad = grad.to(params[name].device)
        _load_metric_states(module, state["metrics"])
        run.results.load_state_dict(state["results"])
        run.restore_data(state["data"])
        root.load_state_dict(state["loops"])
        for callback in run.callbacks:
            if callback.state_key in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][callback.state_key])
        for i, logger in enumerate(run.loggers):  # a logger added or removed since just starts afresh
            if _logger_key(i, logger) in state["loggers"]:
                logger.load_state_dict(state["loggers"][_logger_key(i, logger)])
        restore_rng(state["rng"])
    module.on_load_checkpoint(state.get("extra", {}))
    for callback in run.callbacks:
        callback.on_load_checkpoint(run, module, state.get("extra", {}))


def _restore_optimization(run: Run, state: dict[str, Any]) -> None:
    optimization = run.optimization
    for opt, opt_state in zip(optimization.optimizers, state["optimizers"]):
        opt.load_state_dict(opt_state)
    for config, sched_state in zip(optimization.setup.schedulers, state["schedulers"]):
        config.scheduler.load_state_dict(sched_state)
    run.precision.load_state_dict(state["precision"])


# -- the data module ------------------------------------------------------------------------------
def _datamodule_state(datamodule: Any) -> dict[str, Any]:
    saved = datamodule.state_dict()
    if not isinstance(saved, dict):
        raise ConfigError(f"{type(datamodule).__name__}.state_dict() returned {type(saved).__name__}; return a dict "
                          "of numbers, strings, lists, dicts and tensors (an empty one when there is nothing to keep).")
    return {"class": type(datamodule).__qualname__, "state": saved}


def check_datamodule(run: Run, state: dict[str, Any], path: Path) -> None:
    """ConfigError when the checkpoint's data module state is not the run's data module's; change nothing."""
    import warnings

    saved, datamodule = state.get("datamodule"), run.datamodule
    if saved is None:
        if datamodule is not None and not getattr(datamodule.load_state_dict, "__noop_hook__", False):
            warnings.warn(f"{path} holds no data module state (it was written without one); "
                          f"{type(datamodule).__name__}.load_state_dict is not called and the data module keeps "
                          "its own state.", stacklevel=4)
        return
    if not (isinstance(saved, dict) and set(saved) == {"class", "state"} and isinstance(saved["state"], dict)):
        raise ConfigError(f"{path}: $.datamodule is not a data module's saved state ({{'class', 'state'}}); the "
                          "checkpoint was edited or damaged. Resume from another one.")
    if datamodule is None:
        if saved["state"]:
            warnings.warn(f"{path} holds the state of data module {saved['class']}, but this run has no data "
                          "module; it is not used. Pass the data module (datamodule=dm) to restore it.", stacklevel=4)
        return
    ours = type(datamodule).__qualname__
    if saved["class"] != ours:
        raise ConfigError(f"{path} holds the state of data module {saved['class']}, but this run's data module is "
                          f"{ours}; resume with the data module that wrote the checkpoint.")


def restore_datamodule(run: Run, state: dict[str, Any]) -> None:
    """Give the data module its saved state (checked by ``check_datamodule``), before its dataloaders are read."""
    saved = state.get("datamodule")
    if saved is not None and run.datamodule is not None:
        run.datamodule.load_state_dict(saved["state"])


# -- checks ---------------------------------------------------------------------------------------
_FIX = "resume with the module (and configure_optimizers) that wrote the checkpoint"


def check_module_state(module: torch.nn.Module, saved: Any, path: Path, grads: Any = None) -> None:
    """ConfigError naming the first key of ``saved`` (a state_dict, and partial ``grads``) that misfits ``module``."""
    _check_module(module, saved, path)
    if grads is not None:
        _check_grads(module, grads, path)


def check_optimizer_states(path: Path, optimizers: Any, saved: Any, schedulers: Any, saved_schedulers: Any) -> None:
    """ConfigError when the saved optimizers/schedulers are not as many as these, or hold other param groups."""
    if len(saved) != len(optimizers) or len(saved_schedulers) != len(schedulers):
        raise ConfigError(f"{path} holds {len(saved)} optimizer(s) and {len(saved_schedulers)} "
                          f"scheduler(s), but {len(optimizers)} and {len(schedulers)} were given "
                          f"(configure_optimizers() returns them in a Trainer run); {_FIX}.")
    for i, (opt, opt_state) in enumerate(zip(optimizers, saved)):
        groups = opt_state.get("param_groups", []) if isinstance(opt_state, dict) else []
        sizes = [len(g.get("params", [])) for g in groups]
        ours = [len(g["params"]) for g in opt.param_groups]
        if sizes != ours:
            raise ConfigError(f"{path} does not match optimizer {i} ({type(opt).__name__}): "
                              f"$.optimizers[{i}].param_groups hold {sizes} parameters per group in the checkpoint "
                              f"but {ours} here; {_FIX}.")


def _check_module(module: torch.nn.Module, saved: Any, path: Path) -> None:
    """Missing, unexpected and differently-shaped keys, named -- torch's own message lists them all at once."""
    ours = module.state_dict()
    name = type(module).__name__
    missing = [k for k in ours if k not in saved]
    if missing:
        raise ConfigError(f"{path} does not match {name}: $.module[{missing[0]!r}] is missing from the checkpoint "
                          f"({len(missing)} key(s) missing); {_FIX}.")
    unexpected = [k for k in saved if k not in ours]
    if unexpected:
        raise ConfigError(f"{path} does not match {name}: $.module[{unexpected[0]!r}] is in the checkpoint but "
                          f"not in the module ({len(unexpected)} unexpected key(s)); {_FIX}.")
    for key, tensor in ours.items():
        if isinstance(tensor, torch.Tensor) and tuple(saved[key].shape) != tuple(tensor.shape):
            raise ConfigError(f"{path} does not match {name}: $.module[{key!r}] has shape "
                              f"{tuple(saved[key].shape)} in the checkpoint but {tuple(tensor.shape)} in the "
                              f"module; {_FIX}.")


def _check_optimizers(run: Run, state: dict[str, Any], path: Path) -> None:
    check_optimizer_states(path, run.optimization.optimizers, state["optimizers"],
                           [c.scheduler for c in run.optimization.setup.schedulers], state["schedulers"])


def _check_grads(module: torch.nn.Module, grads: Any, path: Path) -> None:
    params = dict(module.named_parameters())
    for name, grad in grads.items():
        if name not in params or tuple(grad.shape) != tuple(params[name].shape):
            raise ConfigError(f"{path} does not match {type(module).__name__}: $.grads[{name!r}] has no parameter "
                              f"of that name and shape; {_FIX}.")


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
                      for key, value in states[name]["state"].items()}
            # A Metric's load_state_dict takes its states whether or not they are persistent.
            metric.load_state_dict(values, strict=False)
            # torchmetrics has no public way to set the update count (compute() warns when it is 0).
            metric._update_count = states[name]["update_count"]


def _logger_key(index: int, logger: Any) -> str:
    return f"{index}:{type(logger).__name__}"
