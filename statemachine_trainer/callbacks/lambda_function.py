"""``LambdaCallback``: a callback made of functions, one per hook, as Lightning's.

``LambdaCallback(on_train_epoch_end=lambda trainer, module: ...)``: each
function takes the hook's callback arguments, ``(trainer, module, *args)``.
The names are checked against the hook specification when the callback is
made, so a misspelt hook is an error instead of a function never called.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from .._hook_spec import HOOKS
from .._optim import ConfigError
from ._base import Callback

__all__ = ["LambdaCallback"]

#: The hooks a callback has (what LambdaCallback accepts).
CALLBACK_HOOKS = tuple(hook.name for hook in HOOKS if "callback" in hook.owners)


class LambdaCallback(Callback):
    """One function per hook: ``LambdaCallback(on_fit_start=fn, on_train_batch_end=fn2)``."""

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        for name, fn in hooks.items():
            if name not in CALLBACK_HOOKS:
                close = difflib.get_close_matches(name, CALLBACK_HOOKS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"LambdaCallback({name}=...): {name!r} is not a callback hook here.{hint} The hooks "
                                  "are statemachine_trainer._hook_spec.HOOKS.")
            if fn is None:
                continue  # Lightning's default for every hook: not given
            if not callable(fn):
                raise ConfigError(f"LambdaCallback({name}={fn!r}) needs a function of (trainer, module, ...).")
            setattr(self, name, fn)  # an instance attribute: the relay sees an override and calls fn(trainer, module...)
