"""``HookRelay``: the module's and callbacks' hooks, resolved once per run.

Loops never look a user hook up by name at run time.  At the start of
fit/validate/test/predict the relay works out, for every hook name, which of
the module and callbacks override it, and stores one callable per name: a
shared no-op when nobody does (the common case: zero cost beyond a call), the
bound method itself when exactly one does, or a small fan-out otherwise.
Order: the module first, then callbacks in the order given -- so a callback's
``on_validation_epoch_end`` sees what the module logged in its own.

While a module hook runs, ``results.fx`` names it, so ``self.log`` inside it
gets that hook's defaults (per-step or per-epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._results import Results

__all__ = ["HOOK_NAMES", "HookRelay"]

HOOK_NAMES = (
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end",
    "on_sanity_check_start", "on_sanity_check_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _overrides(obj: Any, name: str) -> bool:
    fn = getattr(obj, name, None)
    return fn is not None and not getattr(fn, "__noop_hook__", False)


class HookRelay:
    """One attribute per hook name, each a callable taking the hook's own arguments."""

    def __init__(self, module: Any, callbacks: Sequence[Any], trainer: Any, results: Results) -> None:
        for name in HOOK_NAMES:
            targets: list[Callable[..., Any]] = []
            if _overrides(module, name):
                targets.append(_module_hook(getattr(module, name), name, results))
            for callback in callbacks:
                if _overrides(callback, name):
                    targets.append(_callback_hook(getattr(callback, name), trainer, module))
            setattr(self, name, _fan_out(targets))

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"HookRelay has no hook {name!r}; hooks are: {', '.join(HOOK_NAMES)}.")


def _module_hook(fn: Callable[..., Any], name: str, results: Results) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        previous, results.fx = results.fx, name
        try:
            return fn(*args)
        finally:
            results.fx = previous

    return call


def _callback_hook(fn: Callable[..., Any], trainer: Any, module: Any) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return fn(trainer, module, *args)

    return call


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
