"""The hook specification: every hook's name, arguments and stage, written once.

Everything that knows hook names reads this table: the relay that calls the
module's and callbacks' hooks (:mod:`._hooks`), the no-op stubs on
``TrainingModule`` and ``Callback`` (generated from it, so a stub cannot
drift from the relay), the evaluation and prediction loops (which take their
stage's hooks from :data:`STAGE_HOOKS` instead of building names from
strings), and ``self.log``'s per-step defaults (:data:`PER_BATCH`).

A callback's hook takes ``(trainer, module, *params)``; the module's and a
data module's take ``(*params)``.  ``owners`` says which of the three have the
hook (``prepare_data`` is the module's and the data module's, not a
callback's; the batch transfer hooks and ``on_*_model_eval/train`` are the
module's only, as Lightning's ModelHooks/DataHooks).  ``relayed`` hooks are
fired by loop transitions through the relay; the others are called once per
run -- the run's lifecycle (``configure_callbacks``, ``prepare_data``,
``setup``, ``configure_model``, ``teardown``) by the rows of the entry loops
(:mod:`._entry`) through :mod:`._lifecycle`, the checkpoint hooks by the
checkpoint code -- or, for the step hooks below, by
their rows.

``default`` hooks have a real body on ``TrainingModule`` -- Lightning's
default behaviour, marked :func:`default_hook` -- instead of a generated
no-op, and a module that keeps it does not "override" the hook.  Two kinds:

* relayed ones (``on_*_model_eval/train``, the batch transfer hooks): the
  relay calls the default when nobody overrides it, and reports the hook as
  not overridden, so a loop can leave out what the default makes unnecessary
  (moving a CPU batch to the CPU);
* the step hooks (``backward``, ``optimizer_step``, ``optimizer_zero_grad``,
  ``configure_gradient_clipping``, ``lr_scheduler_step``; :data:`OVERRIDABLE`):
  the loops do that work themselves, and a row (or ``Run.step_schedulers``)
  calls the module's method only when it overrides the default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs

from .machine import noop_hook

__all__ = ["HOOKS", "HOOK_NAMES", "LIFECYCLE", "OVERRIDABLE", "PER_BATCH", "RELAYED", "STAGE_HOOKS", "TRANSFER_HOOKS",
           "Hook", "StageHooks", "default_hook", "install_stubs", "is_default_hook"]

_DEFAULT = "__default_hook__"


def default_hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a ``TrainingModule`` method as Lightning's default body of a ``default`` hook: not an override."""
    setattr(fn, _DEFAULT, True)
    return fn


def is_default_hook(fn: Any) -> bool:
    return bool(getattr(fn, _DEFAULT, False))


@attrs.frozen
class Hook:
    name: str
    params: tuple[str, ...]  # after (trainer, module) for a callback, after self for the module
    stage: str  # fit, train, validate, test, predict, sanity, optimizer, setup, checkpoint, exception, data
    doc: str
    per_batch: bool = False  # fired once per batch: self.log inside it defaults to on_step in training
    relayed: bool = True  # fired by a loop transition through the relay
    owners: tuple[str, ...] = ("module", "callback")  # who has the hook: "module", "callback", "datamodule"
    default: bool = False  # TrainingModule has a real default body (default_hook), not a generated no-op stub


def _h(name: str, params: str, stage: str, doc: str, owners: str = "module callback", **kw: bool) -> Hook:
    return Hook(name, tuple(params.split()), stage, doc, owners=tuple(owners.split()), **kw)


HOOKS: tuple[Hook, ...] = (
    _h("configure_callbacks", "", "setup", "Return callbacks to add to the trainer's (replacing ones of the same "
       "type); called first, at every entry point.", owners="module", relayed=False),
    _h("prepare_data", "", "setup", "Download or write data once per machine (local rank 0 only): assign no "
       "state here, the other ranks do not run it.", owners="datamodule module", relayed=False),
    _h("setup", "stage", "setup", "Called once per fit/validate/test/predict, before the dataloaders and "
       "configure_optimizers: build data and layers here (data module, then callbacks, then the module).",
       owners="datamodule callback module", relayed=False),
    _h("configure_model", "", "setup", "Build (large) layers here, on the run's device: called after setup, at "
       "every entry point, so make it idempotent (return early when the layers exist).", owners="module",
       relayed=False),
    _h("teardown", "stage", "setup", "Called once per run, after everything ran (also after a failure): data "
       "module, then callbacks, then the module.", owners="datamodule callback module", relayed=False),
    _h("on_fit_start", "", "fit", "The fit begins (every fit call: a resumed one too)."),
    _h("on_fit_end", "", "fit", "The fit is over."),
    _h("on_train_start", "", "train", "Training begins, after the sanity check (a resumed fit too)."),
    _h("on_train_end", "", "train", "Training is over."),
    _h("on_train_epoch_start", "", "train", "A training epoch begins."),
    _h("on_train_epoch_end", "", "train", "A training epoch ended; its epoch-level values are reduced."),
    _h("on_train_batch_start", "batch batch_idx", "train",
       "Before a training batch; return -1 to skip the rest of this epoch (and its validation).", per_batch=True),
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
       owners="module", default=True),
    _h("on_validation_model_train", "", "validate",
       "Validation ended: the default restores each submodule's training mode as it was before.",
       owners="module", default=True),
    _h("on_test_model_eval", "", "test", "Testing begins: put the module in eval mode (default).",
       owners="module", default=True),
    _h("on_test_model_train", "", "test",
       "Testing ended: the default restores each submodule's training mode as it was before.",
       owners="module", default=True),
    _h("on_predict_model_eval", "", "predict", "Prediction begins: put the module in eval mode (default).",
       owners="module", default=True),
    _h("on_before_batch_transfer", "batch dataloader_idx", "data",
       "A fetched batch, before it moves to the device: return it (possibly changed).", owners="module",
       default=True),
    _h("transfer_batch_to_device", "batch device dataloader_idx", "data",
       "Move the batch to ``device`` and return it (default: every tensor in nested lists/tuples/dicts).",
       owners="module", default=True),
    _h("on_after_batch_transfer", "batch dataloader_idx", "data",
       "The batch on the device, before the step: return it (possibly changed).", owners="module", default=True),
    _h("on_sanity_check_start", "", "sanity", "The sanity check (a few validation batches before fit) begins."),
    _h("on_sanity_check_end", "", "sanity", "The sanity check ended; nothing it logged is kept."),
    _h("on_before_backward", "loss", "optimizer", "Before backward on a loss.", per_batch=True),
    _h("on_after_backward", "", "optimizer", "After backward: the gradients are there.", per_batch=True),
    _h("on_before_optimizer_step", "optimizer", "optimizer", "Before an optimizer steps (before clipping).",
       per_batch=True),
    _h("on_before_zero_grad", "optimizer", "optimizer", "After a step, before the gradients are zeroed.",
       per_batch=True),
    _h("backward", "loss *args **kwargs", "optimizer",
       "Backpropagate the (precision-scaled) loss; the default is loss.backward(*args, **kwargs).",
       per_batch=True, default=True, owners="module", relayed=False),
    _h("optimizer_step", "epoch batch_idx optimizer optimizer_closure", "optimizer",
       "Step the optimizer (a TrainingOptimizer); the default is optimizer.step(closure=optimizer_closure).",
       per_batch=True, default=True, owners="module", relayed=False),
    _h("optimizer_zero_grad", "epoch batch_idx optimizer", "optimizer",
       "Zero the optimizer's gradients after its step; the default is optimizer.zero_grad().", per_batch=True,
       default=True, owners="module", relayed=False),
    _h("configure_gradient_clipping", "optimizer gradient_clip_val gradient_clip_algorithm", "optimizer",
       "Clip before the optimizer steps; the default is self.clip_gradients(...) with the Trainer's flags.",
       per_batch=True, default=True, owners="module", relayed=False),
    _h("lr_scheduler_step", "scheduler metric", "optimizer",
       "Step one scheduler when its interval is due (automatic optimization); the default is scheduler.step(), "
       "or scheduler.step(metric) for a ReduceLROnPlateau. Override it for a scheduler that is not a torch "
       "LRScheduler.", default=True, owners="module", relayed=False),
    _h("on_save_checkpoint", "checkpoint", "checkpoint", "Add JSON-able entries to checkpoint['extra'] data.",
       relayed=False),
    _h("on_load_checkpoint", "checkpoint", "checkpoint", "Receive what on_save_checkpoint added.", relayed=False),
    _h("on_exception", "exception", "exception", "The run raised (KeyboardInterrupt and preemption included): "
       "callbacks, then the data module, before teardown; the exception still propagates.",
       owners="callback datamodule", relayed=False),
)

HOOK_NAMES: tuple[str, ...] = tuple(h.name for h in HOOKS if h.relayed)
#: The run's lifecycle hooks (called once per entry point, by the entry loop's rows of the same names).
LIFECYCLE: tuple[str, ...] = tuple(h.name for h in HOOKS if h.stage == "setup")
RELAYED: tuple[Hook, ...] = tuple(h for h in HOOKS if h.relayed)
#: The module's step hooks with a working default: called from their rows only when the module overrides them.
OVERRIDABLE: tuple[Hook, ...] = tuple(h for h in HOOKS if h.default and not h.relayed)
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


def install_stubs(cls: type | None = None, *, owner: str = "module") -> Any:
    """Give ``cls`` a do-nothing method per hook of the spec that ``owner`` has (skipped until overridden).

    ``owner="callback"``: the stubs take ``(trainer, module, *params)``, as
    callback hooks do; otherwise (``"module"``, ``"datamodule"``)
    ``(*params)``.  Used as a class decorator by ``TrainingModule``,
    ``Callback`` and ``DataModule``.
    """
    if cls is None:
        return lambda c: install_stubs(c, owner=owner)
    if owner not in ("module", "callback", "datamodule"):
        raise ValueError(f"install_stubs(owner={owner!r}): the owners are 'module', 'callback', 'datamodule'.")
    for hook in HOOKS:
        if owner in hook.owners and not (hook.default and owner == "module"):
            setattr(cls, hook.name, _stub(cls, hook, owner == "callback"))
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
