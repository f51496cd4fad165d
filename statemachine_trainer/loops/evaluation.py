"""``EvaluationLoop``: one pass over validation or test data, without gradients.

::

    START   --run [skip]-->               END     / on_skip
    START   --run-->                      ADVANCE / reset, on_run_start    # model_eval, on_{stage}_start, _epoch_start
    ADVANCE --advance [done]-->           END     / on_run_end             # reduce, _epoch_end, _end, model_train
    ADVANCE --advance [dataloader_done]--> ADVANCE / next_dataloader       # the next of several dataloaders
    ADVANCE --advance-->                  ADVANCE / fetch, on_before_batch_transfer, transfer_batch_to_device,
                                                    on_after_batch_transfer, advance  # _batch_start, step, _batch_end

One class serves both stages: ``EvaluationLoop("validate")`` calls
``validation_step`` and the ``on_validation_*`` hooks, ``EvaluationLoop("test")``
the test ones.  ``run(sanity=True)`` is the sanity check: at most
``num_sanity_val_steps`` batches of each dataloader, and nothing it logs is kept.

Several dataloaders (a list or dict of them) run one after the other, as
Lightning's ``CombinedLoader`` in "sequential" mode: ``batch_idx`` starts at 0
for each, the step and the batch hooks receive ``dataloader_idx`` as a third
argument (only when there are several, as in Lightning), values logged get the
suffix ``/dataloader_idx_N``, and the run returns one dict per dataloader.
Which dataloader runs, and where its batches began, are fields: a checkpoint
taken in the second dataloader resumes there.

Model mode, as in Lightning: ``on_{stage}_model_eval`` (default
``module.eval()``) at the start; at the end ``on_{stage}_model_train`` if
the module overrides it, otherwise every submodule gets back the training
mode it had when the run began (recorded in ``fields.modes``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import attrs
import torch

from .._hook_spec import STAGE_HOOKS
from .._optim import ConfigError
from .._step_args import takes_batch_idx
from ..data._source import source_key
from ..machine import ADVANCE, END, START, Row, Table
from ..state import BatchProgress
from ._fetch import FETCH, FetchingLoop

if TYPE_CHECKING:
    from .._hooks import StageRelay
    from ..data import BatchSource

__all__ = ["EVALUATION_TABLE", "EvaluationFields", "EvaluationLoop", "capture_modes", "check_dataloader_idx",
           "restore_modes"]

EVALUATION_TABLE = Table(
    name="EvaluationLoop",
    states=(START, ADVANCE, END),
    rows=(
        Row("run", START, END, conditions="skip", hooks="on_skip"),
        Row("run", START, ADVANCE, hooks=("reset", "on_run_start")),
        Row("advance", ADVANCE, END, conditions="done", hooks="on_run_end"),
        Row("advance", ADVANCE, ADVANCE, conditions="dataloader_done", hooks="next_dataloader"),
        Row("advance", ADVANCE, ADVANCE, hooks=(*FETCH, "advance")),
    ),
)


@attrs.define
class EvaluationFields:
    sanity: bool = False  # this run is the sanity check before fitting
    # Each submodule's training mode (by qualified name, "" is the module) when the run started; restored at the end.
    modes: dict[str, bool] = attrs.field(factory=dict)
    runs: int = 0  # runs started so far; each is one "epoch" of the loaders, so a resumable one starts over
    dataloader_idx: int = 0  # the dataloader running now (0 with one); < the stage's number of dataloaders
    loader_start: int = 0  # progress.current.ready when this dataloader began: batch_idx counts from here


def capture_modes(module: torch.nn.Module) -> dict[str, bool]:
    """The training mode of every submodule, by name (Lightning's ``_ModuleMode.capture``)."""
    return {name: sub.training for name, sub in module.named_modules()}


def restore_modes(module: torch.nn.Module, modes: dict[str, bool]) -> None:
    """Give each submodule back its recorded mode; submodules added since keep theirs."""
    for name, sub in module.named_modules():
        if name in modes:
            sub.training = modes[name]


class EvaluationLoop(FetchingLoop):
    table = EVALUATION_TABLE
    progress_class = BatchProgress
    fields_class = EvaluationFields

    def __init__(self, stage: str = "validate") -> None:
        super().__init__()
        if stage not in ("validate", "test"):
            raise ValueError(f"EvaluationLoop(stage={stage!r}): use 'validate' or 'test'.")
        self.stage = stage
        self.name = f"{stage}_loop"
        self._step_name = STAGE_HOOKS[stage].step
        self._hooks: StageRelay | None = None  # this stage's hooks, resolved when a run attaches
        self._sources: list[BatchSource] = []  # the stage's sources by dataloader_idx, taken when a run starts
        self._several = False  # more than one dataloader: hooks get dataloader_idx, names get its suffix
        self._checked: int | None = None  # the number of dataloaders the signatures were checked for
        self._takes_batch_idx = True  # the step's signature has batch_idx (else it is called without it)

    def on_attach(self) -> None:
        self._hooks = self.context.hooks.stage(self.stage)
        self.skip_transfer_hooks()
        self._takes_batch_idx = takes_batch_idx(getattr(self.context.module, self._step_name, None))
        self._checked = None
        self._check_signatures(len(self.context.stage_sources(self.stage)))  # early: before anything runs

    def _check_signatures(self, count: int) -> None:
        # Again when an outer loop changed the data between runs (use_data): once per number of dataloaders.
        if count != self._checked:
            check_dataloader_idx(self.context, self.stage, count)
            self._checked = count

    # -- conditions ------------------------------------------------------------------------
    @property
    def skip(self) -> bool:
        return not any(source.num_batches for source in self.context.stage_sources(self.stage))

    @property
    def done(self) -> bool:
        return self.fields.dataloader_idx + 1 >= len(self._sources) and self.dataloader_done

    @property
    def dataloader_done(self) -> bool:
        return self.progress.current.completed - self.fields.loader_start >= self._num_batches()

    def _num_batches(self) -> int:
        total = self._sources[self.fields.dataloader_idx].num_batches
        sanity = self.context.config.num_sanity_val_steps
        return min(total, sanity) if self.fields.sanity and sanity != -1 else total  # -1: the whole loader

    # -- hooks -----------------------------------------------------------------------------
    def on_skip(self, sanity: bool = False) -> dict[str, float]:
        return {}

    def reset(self, sanity: bool = False) -> None:
        self.progress.reset_on_run()
        self.fields.sanity = sanity
        self.fields.dataloader_idx = self.fields.loader_start = 0
        self._take_sources()

    def on_run_start(self, sanity: bool = False) -> None:
        run = self.context
        self.fields.modes = capture_modes(run.module)
        self._enter()
        run.results.reset_stage(self.stage)
        self._sources[0].start_epoch(self.fields.runs)
        self.fields.runs += 1
        self._hooks.start()
        self._hooks.epoch_start()

    def on_restart(self) -> None:
        self._take_sources()
        for index in range(len(self._sources)):
            self.context.resume_source(source_key(self.stage, index))
        self._enter()

    def _take_sources(self) -> None:
        self._sources = self.context.stage_sources(self.stage)
        self._several = len(self._sources) > 1
        self._check_signatures(len(self._sources))

    def _enter(self) -> None:
        run = self.context
        self._hooks.model_eval()
        run.results.stage = self.stage
        run.results.dataloader_idx = self.fields.dataloader_idx if self._several else None

    def next_dataloader(self, sanity: bool = False) -> None:
        """The current dataloader is done: the next one begins (its batch_idx from 0)."""
        fields = self.fields
        self._sources[fields.dataloader_idx].end_epoch()
        fields.dataloader_idx += 1
        fields.loader_start = self.progress.current.ready
        self.context.results.dataloader_idx = fields.dataloader_idx
        self._sources[fields.dataloader_idx].start_epoch(fields.runs - 1)  # the epoch on_run_start counted

    def fetch(self, sanity: bool = False) -> None:
        index = self.fields.dataloader_idx
        self.progress.increment_ready()
        self.fetch_from(self._sources[index], index)

    def advance(self, sanity: bool = False) -> None:
        run, progress, index = self.context, self.progress, self.fields.dataloader_idx
        batch_idx = progress.current.ready - 1 - self.fields.loader_start
        if self.restarting:  # resumed while this batch was in flight: fetch it again, counters already moved
            source = self._sources[index]
            source.refetch()
            batch = self.transfer(source.next_batch(), index)
        else:
            batch = self.take_batch()
        run.results.new_batch(batch)
        progress.is_last_batch = batch_idx + 1 >= self._num_batches()
        args = (batch, batch_idx, index) if self._several else (batch, batch_idx)
        self._hooks.batch_start(*args)
        if not self.restarting:
            progress.increment_started()
        run.results.fx = self._step_name
        with run.evaluation_grad_mode(), run.precision.autocast():
            step = getattr(run.module, self._step_name)
            outputs = step(*args) if self._takes_batch_idx else step(batch, *args[2:])
        progress.increment_processed()
        self._hooks.batch_end(outputs, *args)
        progress.increment_completed()
        self.done_with_batch()

    def on_run_end(self, sanity: bool = False) -> dict[str, float] | list[dict[str, float]]:
        run = self.context
        self._sources[self.fields.dataloader_idx].end_epoch()
        metrics = run.results.epoch_end(self.stage)
        self._hooks.epoch_end()
        self._hooks.end()
        metrics.update(run.results.take_pending())
        if self._hooks.model_train_overridden:
            self._hooks.model_train()
        else:
            restore_modes(run.module, self.fields.modes)
        run.results.stage, run.results.dataloader_idx = "train", None
        if sanity:
            run.results.forget(metrics)  # sanity-check values must not steer callbacks or schedulers
            return {}
        run.log_metrics(metrics)
        values = {key: float(value) for key, value in metrics.items()}
        return per_dataloader(values, len(self._sources)) if self._several else values


def per_dataloader(values: dict[str, float], count: int) -> list[dict[str, float]]:
    """One dict per dataloader: its own ``/dataloader_idx_N`` values and those logged without a suffix."""
    out: list[dict[str, float]] = [{} for _ in range(count)]
    for key, value in values.items():
        _, sep, tail = key.rpartition("/dataloader_idx_")
        if sep and tail.isdigit() and int(tail) < count:
            out[int(tail)][key] = value
        else:
            for one in out:
                one[key] = value
    return out


def check_dataloader_idx(run: Any, stage: str, count: int) -> None:
    """Refuse, before anything runs, a step or batch hook that cannot take ``dataloader_idx`` (or must not).

    As in Lightning: with several dataloaders, the step and the overridden
    batch hooks get ``dataloader_idx`` as a third argument; with one, they do
    not, so a ``dataloader_idx`` parameter needs a default.
    """
    if count == 0:
        return  # nothing will be called
    names = STAGE_HOOKS[stage]
    module = run.module
    targets = [(type(module).__name__, names.step, getattr(module, names.step, None))]
    for owner in (module, *[cb for cb in run.callbacks if getattr(cb, "enabled", True)]):
        for hook in (names.batch_start, names.batch_end):
            fn = getattr(owner, hook, None)
            if fn is not None and not getattr(fn, "__noop_hook__", False):
                targets.append((type(owner).__name__, hook, fn))
    for owner, hook, fn in targets:
        if fn is not None:
            _check_one(owner, hook, fn, count, stage)


def _check_one(owner: str, hook: str, fn: Any, count: int, stage: str) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to inspect
    takes_any = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    named = params.get("dataloader_idx")
    what = {"validate": "val", "test": "test", "predict": "predict"}[stage]
    if count > 1 and named is None and not takes_any:
        raise ConfigError(f"There are {count} {what} dataloaders, so {owner}.{hook}() is called with a "
                          "dataloader_idx argument, but its signature has none. Add `dataloader_idx=0` to it.")
    if count <= 1 and named is not None and named.default is inspect.Parameter.empty:
        raise ConfigError(f"There is one {what} dataloader, so {owner}.{hook}() is called without dataloader_idx, "
                          "but its signature requires it. Give it a default: `dataloader_idx=0`.")
