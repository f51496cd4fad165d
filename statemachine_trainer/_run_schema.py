"""The shape of a run's checkpoint, as attrs classes, structured by the library's converter before anything is applied.

Theory of operation.  Reading a checkpoint (``checkpoint.load_checkpoint_dir``)
proves the bytes are the ones written; it says nothing about whether they
hold what a run needs.  An edited ``state.json`` with recomputed checksums, or
one written by other code, may put a list where the partial gradients go or an
int where Python's RNG state goes.  Applying such a state part by part would
fail half-way, with the module already overwritten.  So a resume has two
phases, and this module is the first:

1. **structure**: the decoded state goes through one ``cattrs`` converter
   (``state.make_converter()``'s strict rules plus tensors and arrays) into
   :class:`RunCheckpoint` (a ``fit`` resume), :class:`WeightsCheckpoint`
   (validate/test/predict) or :class:`LoopCheckpoint` (a loop tree without a
   Trainer).  Every key is required, none may be extra, every leaf has its
   type; the RNG states are put into scratch generators, which check them the
   way the real ones would.  A misfit raises :class:`CheckpointError` naming
   the file and the key path (``$.rng.python[1]``) -- and nothing has been
   touched;
2. **apply** (``_run_state.restore``, ``_loop_checkpoint``), from the typed
   object only.

Parts whose format belongs to another component (a callback's, a logger's, a
data loader's state) are typed as mappings here and checked by that
component's own ``load_state_dict``; ``_run_state`` applies those first and
puts back what they held if any of them refuses, before the module, the
optimizers or the RNGs are touched.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
import cattrs
import numpy as np
import torch

from .checkpoint import CheckpointError
from .state import make_converter

__all__ = ["LoopCheckpoint", "RngState", "RunCheckpoint", "WeightsCheckpoint", "structure_checkpoint"]


@attrs.frozen
class RngState:
    """Every global RNG a run draws from (see ``checkpoint.capture_rng``)."""

    python: tuple[int, tuple[int, ...], float | None]  # random.getstate(): version, 625 words, cached gauss
    numpy: tuple[str, np.ndarray, int, int, float]  # np.random.get_state(): name, 624 words, pos, has_gauss, gauss
    torch: torch.Tensor  # torch.get_rng_state(): a uint8 tensor
    cuda: list[torch.Tensor] | None  # torch.cuda.get_rng_state_all(), None when CUDA was not in use


@attrs.frozen
class OptimizerState:
    """A torch optimizer's ``state_dict()``: per-parameter state keyed by index, and the parameter groups."""

    state: dict[int, dict[str, Any]]
    param_groups: list[dict[str, Any]]


@attrs.frozen
class MetricState:
    """A torchmetrics Metric's accumulated states (not in ``state_dict()``) and how often it was updated."""

    state: dict[str, Any]
    update_count: int


@attrs.frozen
class Hparams:
    """What ``save_hyperparameters`` recorded: the JSON-able values, and the names of those left out."""

    values: dict[str, Any]
    omitted: list[str]


@attrs.frozen
class WeightsCheckpoint:
    """What validate/test/predict take from any Trainer checkpoint: the weights, and the user's ``extra``."""

    module: dict[str, Any]  # a state_dict: tensors (and the _extra_state a module may add)
    extra: dict[str, Any]
    datamodule: dict[str, Any] | None


@attrs.frozen
class RunCheckpoint:
    """A checkpoint written during ``fit``: everything ``_run_state.capture`` took (``_run_state`` documents it)."""

    module: dict[str, Any]  # a state_dict: tensors (and the _extra_state a module may add)
    loops: dict[str, Any]  # the loop tree's state set; checked by the tree itself (Loop.check_state_dict)
    callbacks: dict[str, dict[str, Any]]  # state_key -> the callback's state_dict()
    rng: RngState
    hparams: Hparams | None
    optimizers: list[OptimizerState]
    schedulers: list[dict[str, Any]]
    precision: dict[str, Any]
    grads: dict[str, torch.Tensor]
    held_grads: dict[str, torch.Tensor] | None  # FSDP only (strategy.held_grads)
    metrics: dict[str, MetricState]
    results: dict[str, Any]
    data: dict[str, Any]  # stage -> the source's position (its own format)
    loggers: dict[str, dict[str, Any]]
    extra: dict[str, Any]
    datamodule: dict[str, Any] | None


@attrs.frozen
class LoopCheckpoint:
    """What ``save_loop_checkpoint`` writes: a loop tree and the objects given beside it."""

    loops: dict[str, Any]
    rng: RngState
    extra: dict[str, Any]
    module: dict[str, Any] | None
    grads: dict[str, torch.Tensor] | None
    optimizers: list[OptimizerState]
    schedulers: list[dict[str, Any]]
    data: dict[str, Any]


#: Keys a checkpoint may lack (written before they existed, or not applicable); structured as None.
_OPTIONAL = {RunCheckpoint: ("hparams", "datamodule", "held_grads"), WeightsCheckpoint: ("datamodule",),
             LoopCheckpoint: ("module", "grads")}


def _exact(kind: type) -> Any:
    def structure(value: Any, _: type) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"expected a {kind.__module__}.{kind.__qualname__}, got {type(value).__name__}")
        return value

    return structure


def _make_converter() -> cattrs.Converter:
    conv = make_converter()
    conv.register_structure_hook(torch.Tensor, _exact(torch.Tensor))
    conv.register_structure_hook(np.ndarray, _exact(np.ndarray))
    return conv


_converter = _make_converter()


def structure_checkpoint(state: Any, cls: type, path: Path) -> Any:
    """``state`` as an instance of ``cls`` (one of this module's checkpoint classes), RNG states tried out.

    Raises :class:`CheckpointError` naming ``path`` and every misfitting key path.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: $ is a {type(state).__name__}, not the mapping a checkpoint holds; the state "
                              "file was edited or damaged.")
    names = {field.name for field in attrs.fields(cls)}
    data = {key: state.get(key) for key in _OPTIONAL.get(cls, ())} | dict(state)
    if cls is WeightsCheckpoint:  # validate/test/predict read these parts of any checkpoint and ignore the rest
        data = {key: data[key] for key in names if key in data} | {"extra": state.get("extra", {})}
    if isinstance(data.get("rng"), dict):
        data["rng"] = {"cuda": None} | data["rng"]
    try:
        structured = _converter.structure(data, cls)
    except Exception as exc:  # noqa: BLE001 -- cattrs raises ClassValidationError, ExceptionGroup, TypeError...
        raise CheckpointError(f"{path} does not hold a valid {cls.__name__}: {_describe(exc)}; the state file was "
                              "edited or written by other code. Use an earlier checkpoint.") from None
    if getattr(structured, "rng", None) is not None:
        check_rng(structured.rng, path)
    return structured


def _describe(exc: Exception, limit: int = 5) -> str:
    try:
        details = cattrs.transform_error(exc, path="$")
    except Exception:  # noqa: BLE001 -- e.g. a non-string extra key, which cattrs cannot even print
        details = [f"$: {type(exc).__name__} (a key that is not a string, or a value of an unexpected kind)"]
    details = [detail if len(detail) < 300 else detail[:297] + "..." for detail in details]
    more = f" (and {len(details) - limit} more)" if len(details) > limit else ""
    return "; ".join(details[:limit]) + more


def _byte_state(state: torch.Tensor) -> None:
    """A CUDA generator's state can only be tried on a CUDA device; here its form is checked."""
    if state.dtype != torch.uint8 or state.dim() != 1:
        raise TypeError(f"expected a 1-D uint8 tensor, got {state.dtype} of shape {list(state.shape)}")


def check_rng(rng: RngState, path: Path) -> None:
    """Put each saved RNG state into a scratch generator: whatever the real one would refuse is refused now."""
    trials = [("python", lambda: random.Random().setstate((rng.python[0], tuple(rng.python[1]), rng.python[2]))),
              ("numpy", lambda: np.random.RandomState().set_state(rng.numpy)),
              ("torch", lambda: torch.Generator().set_state(rng.torch.cpu()))]
    trials += [(f"cuda[{i}]", lambda s=s: _byte_state(s)) for i, s in enumerate(rng.cuda or ())]
    for name, trial in trials:
        try:
            trial()
        except Exception as exc:  # noqa: BLE001 -- each generator has its own error types
            raise CheckpointError(f"{path}: $.rng.{name} is not a valid RNG state ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); the state file was edited or damaged. Use an earlier "
                                  "checkpoint.") from None
    if rng.cuda and torch.cuda.is_available() and len(rng.cuda) > torch.cuda.device_count():
        raise CheckpointError(f"{path}: $.rng.cuda holds {len(rng.cuda)} CUDA RNG states but this machine has "
                              f"{torch.cuda.device_count()} device(s); resume on a machine with as many GPUs.")
