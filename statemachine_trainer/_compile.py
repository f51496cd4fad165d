"""``trainer.fit(torch.compile(model))``: train the module inside the compiled wrapper, as Lightning does.

``torch.compile`` returns a wrapper module (``OptimizedModule``) whose
parameters are the original's under an ``_orig_mod.`` prefix and which has
none of the module's steps or hooks.  Training the wrapper would write
checkpoints that the plain module cannot load and would lose every hook, so
the Trainer takes the original module back and compiles what runs on the hot
path in place -- ``forward`` and the step methods the module defines -- with
the wrapper's own compile settings (backend, mode, options).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from torch import nn

__all__ = ["from_compiled"]

#: What is compiled on the module itself: its forward and the steps it defines.
_COMPILED = ("forward", "training_step", "validation_step", "test_step", "predict_step")


def from_compiled(model: Any) -> Any:
    """``model`` itself, or -- for a ``torch.compile``d module -- the original with its hot path compiled."""
    # torch.compile's wrapper type (no public alias).  Not imported here: importing dynamo costs ~0.15 s, and a
    # model can only be its instance if torch.compile ran, which imported it.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is None or not isinstance(model, eval_frame.OptimizedModule):
        return model
    original: nn.Module = model._orig_mod
    compile_with = model.dynamo_ctx  # the wrapper's settings, applied to each method
    for name in _COMPILED:
        method = getattr(original, name, None)
        if method is None or not _defined_by(original, name) or inspect.isgeneratorfunction(method):
            continue  # a generator step cannot be traced; it runs eagerly, calling the compiled forward
        setattr(original, name, compile_with(method))
    return original


def _defined_by(module: nn.Module, name: str) -> bool:
    """Whether ``module``'s class (below TrainingModule) defines ``name``: only those are compiled."""
    from .module import TrainingModule

    return any(name in vars(cls) for cls in type(module).__mro__ if cls not in (TrainingModule, nn.Module, object))
