"""The hook specification: every hook's name, arguments and stage, written once.

Everything that knows hook names reads this table: the relay that calls the
module's and callbacks' hooks (:mod:`._hooks`), the no-op stubs on
``TrainingModule`` and ``Callback`` (generated from it, so a stub cannot
drift from the relay), the evaluation and prediction loops (which take their
stage's hooks from :data:`STAGE_HOOKS` instead of building names from
strings), and ``self.log``'s per-step defaults (:data:`PER_BATCH`).

A callback's hook takes ``(trainer, module, *params)``; the module's takes
``(*params)``.  ``relayed`` hooks are fired by loop transitions through the
relay; the others (``setup``, ``teardown``, the checkpoint hooks) are called
once per run by the Trainer or the checkpoint code.  ``module_only`` hooks
(the batch transfer hooks, ``on_*_model_eval/train``: Lightning's
ModelHooks/DataHooks) have no callback version; ``default`` ones have a real
body on ``TrainingModule`` (Lightning's default behaviour, marked with
:func:`hook_default`) instead of a generated no-op.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs

from .machine import noop_hook

__all__ = ["HOOKS", "HOOK_NAMES", "PER_BATCH", "RELAYED", "STAGE_HOOKS", "TRANSFER_HOOKS", "Hook", "StageHooks",
           "hook_default", "install_stubs", "is_hook_default"]

_DEFAULT = "__hook_default__"


def hook_default(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a module hook whose body is Lightning's default behaviour (not a no-op): not an override.

    The relay calls such a default when nobody overrides it, but reports the
    hook as not overridden, so a loop can leave out what the default makes
    unnecessary (e.g. moving a CPU batch to the CPU).
    """
    setattr(fn, _DEFAULT, True)
    return fn


def is_hook_default(fn: Any) -> bool:
    return bool(getattr(fn, _DEFAULT, False))


@attrs.frozen
class Hook:
    name: str
    params: tuple[str, ...]  # after (trainer, module) for a callback, after self for the module
    stage: str  # fit, train, validate, test, predict, sanity, optimizer, setup, checkpoint, data (every stage)
    doc: str
    per_batch: bool = False  # fired once per batch: self.log inside it defaults to on_step in training
    relayed: bool = True  # fired by a loop transition through the relay
    callback_only: bool = False  # setup/teardown: the module has no such hook (yet)
    module_only: bool = False  # callbacks have no such hook (Lightning's ModelHooks/DataHooks only)
    default: bool = False  # the module defines a real default (hook_default), not a generated no-op stub


def _h(name: str, params: str, stage: str, doc: str, **kw: bool) -> Hook:
    return Hook(name, tuple(params.split()), stage, doc, **kw)


HOOKS: tuple[Hook, ...] = (
    _h("setup", "stage", "setup", "Called once per fit/validate/test/predict, before anything runs.",
       relayed=False, callback_only=True),
    _h("teardown", "stage", "setup", "Called once per run, after everything ran (also after a failure).",
       relayed=False, callback_only=True),
    _h("on_fit_start", "", "fit", "The fit begins (not called again when a fit resumes past it)."),
    _h("on_fit_end", "", "fit", "The fit is over."),
    _h("on_train_start", "", "train", "Training begins, after the sanity check."),
    _h("on_train_end", "", "train", "Training is over."),
    _h("on_train_epoch_start", "", "train", "A training epoch begins."),
    _h("on_train_epoch_end", "", "train", "A training epoch ended; its epoch-level values are reduced."),
    _h("on_train_batch_start", "batch batch_idx", "train",
       "Before a training batch; return -1 to skip the rest of this epoch.", per_batch=True),
    _h("on_train_batch_end", "outputs batch batch_idx", "train", "After a training batch's optimization.",
       per_batch=True),
    _h("on_validation_start", "", "validate", "A validation run begins."),
    _h("on_validation_end", "", "validate", "A validation run ended."),
    _h("on_validation_epoch_start", "", "validate", "Validation's pass over its data begins."),
    _h("on_validation_epoch_end", "", "validate", "Validation's pass ended; its values are reduced."),
    _h("on_validation_batch_start", "batch batch_idx", "validate", "Before a validation batch."),
    _h("on_validation_batch_end", "outputs batch batch_idx", "validate", "After a validation batch."),
    _h("on_test_start", "", "test", "A test run begins."),
    _h("on_test_end", "", "test", "A test run ended."),
    _h("on_test_epoch_start", "", "test", "The test pass over its data begins."),
    _h("on_test_epoch_end", "", "test", "The test pass ended; its values are reduced."),
    _h("on_test_batch_start", "batch batch_idx", "test", "Before a test batch."),
    _h("on_test_batch_end", "outputs batch batch_idx", "test", "After a test batch."),
    _h("on_predict_start", "", "predict", "A prediction run begins."),
    _h("on_predict_end", "", "predict", "A prediction run ended."),
    _h("on_predict_epoch_start", "", "predict", "The prediction pass begins."),
    _h("on_predict_epoch_end", "", "predict", "The prediction pass ended."),
    _h("on_predict_batch_start", "batch batch_idx", "predict", "Before a prediction batch."),
    _h("on_predict_batch_end", "outputs batch batch_idx", "predict", "After a prediction batch."),
    _h("on_validation_model_eval", "", "validate", "Validation begins: put the module in eval mode (default).",
       module_only=True, default=True),
    _h("on_validation_model_train", "", "validate",
       "Validation ended: the default restores each submodule's training mode as it was before.",
       module_only=True, default=True),
    _h("on_test_model_eval", "", "test", "Testing begins: put the module in eval mode (default).",
       module_only=True, default=True),
    _h("on_test_model_train", "", "test",
       "Testing ended: the default restores each submodule's training mode as it was before.",
       module_only=True, default=True),
    _h("on_predict_model_eval", "", "predict", "Prediction begins: put the module in eval mode (default).",
       module_only=True, default=True),
    _h("on_before_batch_transfer", "batch dataloader_idx", "data",
       "A fetched batch, before it moves to the device: return it (possibly changed).", module_only=True,
       default=True),
    _h("transfer_batch_to_device", "batch device dataloader_idx", "data",
       "Move the batch to ``device`` and return it (default: every tensor in nested lists/tuples/dicts).",
       module_only=True, default=True),
    _h("on_after_batch_transfer", "batch dataloader_idx", "data",
       "The batch on the device, before the step: return it (possibly changed).", module_only=True, default=True),
    _h("on_sanity_check_start", "", "sanity", "The sanity check (a few validation batches before fit) begins."),
    _h("on_sanity_check_end", "", "sanity", "The sanity check ended; nothing it logged is kept."),
    _h("on_before_backward", "loss", "optimizer", "Before backward on a loss.", per_batch=True),
    _h("on_after_backward", "", "optimizer", "After backward: the gradients are there.", per_batch=True),
    _h("on_before_optimizer_step", "optimizer", "optimizer", "Before an optimizer steps (before clipping).",
       per_batch=True),
    _h("on_before_zero_grad", "optimizer", "optimizer", "After a step, before the gradients are zeroed.",
       per_batch=True),
    _h("on_save_checkpoint", "checkpoint", "checkpoint", "Add JSON-able entries to checkpoint['extra'] data.",
       relayed=False),
    _h("on_load_checkpoint", "checkpoint", "checkpoint", "Receive what on_save_checkpoint added.", relayed=False),
)

HOOK_NAMES: tuple[str, ...] = tuple(h.name for h in HOOKS if h.relayed)
RELAYED: tuple[Hook, ...] = tuple(h for h in HOOKS if h.relayed)
#: Hooks whose self.log calls default to per-step values in training (with the training step itself).
PER_BATCH: frozenset[str] = frozenset(h.name for h in HOOKS if h.per_batch)


@attrs.frozen
class StageHooks:
    """The hooks of one evaluation or prediction stage, and the module method that is its step."""

    step: str
    model_eval: str
    model_train: str | None  # None for predict: Lightning has no on_predict_model_train (modes are restored)
    start: str
    end: str
    epoch_start: str
    epoch_end: str
    batch_start: str
    batch_end: str


STAGE_HOOKS: dict[str, StageHooks] = {
    "validate": StageHooks("validation_step", "on_validation_model_eval", "on_validation_model_train",
                           "on_validation_start", "on_validation_end", "on_validation_epoch_start",
                           "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end"),
    "test": StageHooks("test_step", "on_test_model_eval", "on_test_model_train", "on_test_start", "on_test_end",
                       "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end"),
    "predict": StageHooks("predict_step", "on_predict_model_eval", None, "on_predict_start", "on_predict_end",
                          "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start",
                          "on_predict_batch_end"),
}


def _check() -> None:
    """The stage table names only hooks of the spec (checked at import: a typo fails loudly, at once)."""
    names = {h.name for h in HOOKS}
    for stage, hooks in STAGE_HOOKS.items():
        for field in attrs.fields(StageHooks):
            name = getattr(hooks, field.name)
            if field.name != "step" and name is not None and name not in names:
                raise AssertionError(f"STAGE_HOOKS[{stage!r}].{field.name} = {name!r} is not in HOOKS")


_check()

#: The batch transfer hooks, in the order every loop fires them on a fetched batch (Lightning's).
TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def install_stubs(cls: type | None = None, *, for_callbacks: bool = False) -> Any:
    """Give ``cls`` a do-nothing method per hook of the spec (skipped by the relay until overridden).

    ``for_callbacks``: the stubs take ``(trainer, module, *params)``, as
    callback hooks do; otherwise ``(*params)``, as the module's do.  Used as a
    class decorator by ``TrainingModule`` and ``Callback``.
    """
    if cls is None:
        return lambda c: install_stubs(c, for_callbacks=for_callbacks)
    for hook in HOOKS:
        if (hook.callback_only and not for_callbacks) or (hook.module_only and for_callbacks):
            continue
        if hook.default and not for_callbacks:
            continue  # TrainingModule defines it (marked hook_default)
        setattr(cls, hook.name, _stub(cls, hook, for_callbacks))
    return cls


def _stub(cls: type, hook: Hook, for_callbacks: bool) -> Callable[..., Any]:
    def stub(self: Any, *args: Any) -> None:
        return None

    names = ("self", *(("trainer", "module") if for_callbacks else ()), *hook.params)
    stub.__name__ = hook.name
    stub.__qualname__ = f"{cls.__qualname__}.{hook.name}"
    stub.__doc__ = hook.doc
    stub.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return noop_hook(stub)
