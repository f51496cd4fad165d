"""``HookRelay``: the module's and callbacks' hooks, resolved once per run.

Loops never look a user hook up by name at run time.  At the start of
fit/validate/test/predict the relay works out, for every relayed hook of the
spec (:mod:`._hook_spec`), which of the module and callbacks override it, and
stores one callable per name: a shared no-op when nobody does (the common
case: zero cost beyond a call), the bound method itself when exactly one
does, or a small fan-out otherwise.  Order: the module first, then callbacks
in the order given -- so a callback's ``on_validation_epoch_end`` sees what
the module logged in its own.

While a module hook runs, ``results.fx`` names it, so ``self.log`` inside it
gets that hook's defaults (per-step or per-epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from ._hook_spec import HOOK_NAMES, OVERRIDABLE, RELAYED, STAGE_HOOKS, is_default_hook
from ._results import Results

__all__ = ["HOOK_NAMES", "HookRelay", "StageRelay"]


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _overrides(obj: Any, name: str) -> bool:
    fn = getattr(obj, name, None)
    return fn is not None and not getattr(fn, "__noop_hook__", False) and not is_default_hook(fn)


class StageRelay:
    """One evaluation/prediction stage's hooks under stage-free names (``start``, ``batch_end``...)."""

    def __init__(self, relay: HookRelay, stage: str) -> None:
        names = STAGE_HOOKS[stage]
        self.step_name = names.step
        self.model_eval = getattr(relay, names.model_eval)
        self.model_train = None if names.model_train is None else getattr(relay, names.model_train)
        #: Whether the module overrides its model_train hook (otherwise the loop restores the modes it captured).
        self.model_train_overridden = names.model_train is not None and relay.overrides(names.model_train)
        self.start, self.end = getattr(relay, names.start), getattr(relay, names.end)
        self.epoch_start, self.epoch_end = getattr(relay, names.epoch_start), getattr(relay, names.epoch_end)
        self.batch_start, self.batch_end = getattr(relay, names.batch_start), getattr(relay, names.batch_end)


class HookRelay:
    """One attribute per relayed hook, each a callable taking the hook's own arguments."""

    def __init__(self, module: Any, callbacks: Sequence[Any], trainer: Any, results: Results) -> None:
        self._overridden: set[str] = set()
        for hook in RELAYED:
            name = hook.name
            targets: list[Callable[..., Any]] = []
            if _overrides(module, name):
                targets.append(_module_hook(getattr(module, name), name, results))
            for callback in callbacks if "callback" in hook.owners else ():
                if _overrides(callback, name):
                    targets.append(_callback_hook(getattr(callback, name), trainer, module))
            if targets:
                self._overridden.add(name)
            elif hook.default:  # nobody overrides it: Lightning's default behaviour, defined on the module
                targets.append(_module_hook(getattr(module, name), name, results))
            setattr(self, name, _fan_out(targets))
        for hook in OVERRIDABLE:  # the module's own step hooks: the override, or _nothing (the loop does the work)
            name = hook.name
            overridden = _overrides(module, name)
            if overridden:
                self._overridden.add(name)
            setattr(self, name, _module_step_hook(getattr(module, name), name, results) if overridden else _nothing)
        self._stages = {stage: StageRelay(self, stage) for stage in STAGE_HOOKS}

    def overrides(self, name: str) -> bool:
        """Whether the module or a callback overrides hook ``name`` (not a no-op stub, not the module's default).

        For an :data:`~._hook_spec.OVERRIDABLE` step hook: whether the module replaced
        ``TrainingModule``'s default, so the loop must call it instead of doing the work itself.
        """
        return name in self._overridden

    def idle(self, name: str) -> bool:
        """Whether calling hook ``name`` does nothing this run (nobody overrides it, and it has no default body).

        A loop may then leave the call out of its step altogether.
        """
        return getattr(self, name) is _nothing

    def stage(self, name: str) -> StageRelay:
        """The hooks of evaluation/prediction stage ``name`` ("validate", "test", "predict")."""
        return self._stages[name]

    # No __getattr__ (for a custom message on an unknown hook): a class with one gets no cached attribute reads
    # from Python 3.11, and loops read hooks from here every step.  Python's own message names the closest hook.


def _module_hook(fn: Callable[..., Any], name: str, results: Results) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        previous, results.fx = results.fx, name
        try:
            return fn(*args)
        finally:
            results.fx = previous

    return call


def _module_step_hook(fn: Callable[..., Any], name: str, results: Results) -> Callable[..., Any]:
    """Like ``_module_hook``, with keyword arguments (``backward(loss, *args, **kwargs)``)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        previous, results.fx = results.fx, name
        try:
            return fn(*args, **kwargs)
        finally:
            results.fx = previous

    return call


def _callback_hook(fn: Callable[..., Any], trainer: Any, module: Any) -> Callable[..., Any]:
    # partial, not a closure: it prepends (trainer, module) in C, so a callback's hook costs one Python frame.
    return partial(fn, trainer, module)


def _fan_out(targets: list[Callable[..., Any]]) -> Callable[..., Any]:
    if not targets:
        return _nothing
    if len(targets) == 1:
        return targets[0]

    def call(*args: Any) -> Any:
        result = None
        for target in targets:
            out = target(*args)
            result = out if result is None else result
        return result

    return call
