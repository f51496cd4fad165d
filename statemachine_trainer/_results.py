"""Where ``self.log`` puts values, and how they are reduced at epoch end.

Why this shape: logging happens on the hot path (once or more per step), so a
call does one dict lookup and one assignment; defaults, checks and key names
are worked out the first time a (hook, name) pair is logged and cached in a
:class:`_Slot`.  Values stay tensors -- no ``.item()`` (a host sync on GPU)
until a logger or the progress bar actually reads them.

Defaults follow Lightning: values logged from ``training_step`` and the
per-batch training hooks are per-step; values logged from evaluation steps and
from any epoch-level hook are per-epoch.  A value logged both ways appears as
``name_step`` and ``name_epoch``.

The views (``callback_metrics``, ``progress_bar_metrics``,
``logged_metrics``) hold, per key, the value written last, as Lightning's
logger connector, which copies each batch's values into them as the batch
ends.  Here the per-step values are copied lazily, when a view is read
(:meth:`Results.refresh_step_views`), and only those logged since the last
copy (``_Slot.shown``); every other write -- an epoch's reduced values, a
value logged from an epoch-level hook -- first copies the pending per-step
values, so the later write wins as in Lightning (``on_train_epoch_end``
logging a key that ``training_step`` logs too leaves the epoch-end value).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor  # a global, not torch.Tensor: torch's module __getattr__ defeats attribute caching
from torchmetrics import Metric

from ._hook_spec import HOOKS, PER_BATCH, STAGE_HOOKS

__all__ = ["STEP_HOOKS", "LogError", "Results"]

#: Hooks whose self.log() calls default to on_step=True, on_epoch=False.
STEP_HOOKS = frozenset({"training_step"} | PER_BATCH)
#: Per-batch evaluation hooks: their values are accumulated over the epoch (on_epoch=True by default).
EVAL_STEP_HOOKS = frozenset(
    {STAGE_HOOKS[s].step for s in ("validate", "test")}
    | {h.name for h in HOOKS if h.stage in ("validate", "test") and "batch" in h.params})
_REDUCE_FX = ("mean", "sum", "max", "min")


class LogError(ValueError):
    """A ``self.log`` call that cannot be honoured; the message names the key and the fix."""


class _Slot:
    """One logged key from one hook: its settings, latest value and epoch accumulator."""

    __slots__ = (
        "dataloader_idx",
        "direct",
        "last",
        "logger",
        "metric",
        "name",
        "on_epoch",
        "on_step",
        "prog_bar",
        "reduce_fx",
        "shown",
        "stage",
        "sync_dist",
        "total",
        "weight",
    )

    def __init__(self, name: str, stage: str, on_step: bool, on_epoch: bool, prog_bar: bool, logger: bool,
                 reduce_fx: str, direct: bool) -> None:
        self.name, self.stage, self.direct = name, stage, direct
        self.on_step, self.on_epoch, self.prog_bar, self.logger, self.reduce_fx = (
            on_step, on_epoch, prog_bar, logger, reduce_fx)
        self.last: torch.Tensor | None = None
        self.shown: torch.Tensor | None = None  # the value of ``last`` last copied into the views (per-step slots)
        self.total: torch.Tensor | None = None  # running sum (mean, sum), or max / min
        self.weight = 0  # total batch size seen this epoch (mean's denominator)
        self.metric: Metric | None = None
        self.sync_dist = False  # reduce the epoch value across ranks (DDP) before publishing it
        self.dataloader_idx: int | None = None  # the evaluation dataloader whose suffix the name has, if any

    @property
    def step_key(self) -> str:
        return f"{self.name}_step" if self.on_epoch else self.name

    @property
    def epoch_key(self) -> str:
        return f"{self.name}_epoch" if self.on_step else self.name

    def accumulate(self, value: torch.Tensor, batch_size: int) -> None:
        fx = self.reduce_fx
        if self.total is None:
            self.total = value * batch_size if fx == "mean" else value.clone()
        elif fx == "mean":
            self.total = self.total + value * batch_size
        elif fx == "sum":
            self.total = self.total + value
        elif fx == "max":
            self.total = torch.maximum(self.total, value)
        else:
            self.total = torch.minimum(self.total, value)
        self.weight += batch_size

    def epoch_value(self, reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None) -> torch.Tensor | None:
        """The epoch's value (``reduce``: across ranks -- weighted mean, sum, max or min of every rank's data)."""
        if self.metric is not None:
            value = self.metric.compute()
            self.metric.reset()
            return value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if self.total is None:
            return None
        total, weight = self.total, self.weight
        if reduce is not None:
            total = reduce(total, "sum" if self.reduce_fx == "mean" else self.reduce_fx)
            if self.reduce_fx == "mean":
                weight = reduce(torch.tensor(float(weight), device=total.device), "sum")
        value = total / weight if self.reduce_fx == "mean" else total
        self.total, self.weight = None, 0
        return value


class Results:
    """Everything logged in one Trainer: per-stage slots and the merged views callbacks read."""

    def __init__(self, reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None) -> None:
        self.reduce = reduce  # the strategy's cross-rank reduction, for self.log(..., sync_dist=True)
        self.fx = "training_step"  # the hook running now; the loops set it before calling user code
        self.stage = "train"  # "train", "validate", "test", "predict", "sanity_check"
        # The evaluation dataloader now running when there are several (None with one, and in training): it
        # is part of a slot's key, and a name logged with add_dataloader_idx gets "/dataloader_idx_N".
        self.dataloader_idx: int | None = None
        self.batch: Any = None  # the batch being processed, for batch-size inference
        self._batch_size: int | None = None
        self._slots: dict[tuple[str, str, str, int | None], _Slot] = {}  # (stage, fx, name, dataloader_idx)
        self._unique: list[_Slot] = []  # each slot once (a shared one has a key per dataloader)
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.progress_bar_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, torch.Tensor] = {}
        self.pending_log: dict[str, torch.Tensor] = {}  # epoch values not yet written to the logger

    def new_batch(self, batch: Any) -> None:
        self.batch, self._batch_size = batch, None

    # -- the hot path ------------------------------------------------------------------
    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool = True, on_step: bool | None = None,
            on_epoch: bool | None = None, reduce_fx: str = "mean", batch_size: int | None = None,
            sync_dist: bool = False, add_dataloader_idx: bool = True) -> None:
        slot = self._slots.get((self.stage, self.fx, name, self.dataloader_idx))
        if slot is None:
            slot = self._shared_slot(name, add_dataloader_idx)
        if slot is None:
            slot = self._new_slot(name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, add_dataloader_idx)
            slot.sync_dist = sync_dist
        if slot.direct:
            self._publish(slot, value)
            return
        if type(value) is Tensor:  # the common case first: an exact type test is the cheapest
            if not slot.on_epoch:
                # Per-step only: keep the tensor as is.  Backward has already freed its graph's buffers,
                # and detaching is left to whoever reads it (every log_every_n_steps), not every step.
                slot.last = value
                return
            value = value.detach()
        elif isinstance(value, Metric):
            slot.metric = value
            cached = getattr(value, "_forward_cache", None)
            if slot.on_step and isinstance(cached, Tensor):
                slot.last = cached.detach()
            return
        elif isinstance(value, Tensor):
            value = value.detach()
        else:
            value = torch.tensor(float(value))
        if slot.on_step:
            slot.last = value
        if slot.on_epoch:
            slot.accumulate(value, batch_size if batch_size is not None else self.batch_size())

    def batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = _infer_batch_size(self.batch)
        return self._batch_size

    def _shared_slot(self, name: str, add_dataloader_idx: bool) -> _Slot | None:
        """With several dataloaders and ``add_dataloader_idx=False``: the one slot every dataloader logs into."""
        if add_dataloader_idx or self.dataloader_idx is None:
            return None
        slot = self._slots.get((self.stage, self.fx, name, None))
        if slot is not None:
            self._slots[(self.stage, self.fx, name, self.dataloader_idx)] = slot  # found at once next time
        return slot

    def _new_slot(self, name: str, value: Any, prog_bar: bool, logger: bool, on_step: bool | None,
                  on_epoch: bool | None, reduce_fx: str, add_dataloader_idx: bool = True) -> _Slot:
        if not isinstance(name, str) or not name:
            raise LogError(f"self.log() needs a non-empty str name, got {name!r}.")
        if reduce_fx not in _REDUCE_FX:
            raise LogError(f"self.log({name!r}, reduce_fx={reduce_fx!r}): use one of {', '.join(_REDUCE_FX)}.")
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise LogError(f"self.log({name!r}) got a tensor of shape {tuple(value.shape)}; log a scalar "
                           "(e.g. value.mean()) or a torchmetrics Metric.")
        if not isinstance(value, (torch.Tensor, Metric, int, float)):
            raise LogError(f"self.log({name!r}) got {type(value).__name__}; log a number, a scalar tensor or a "
                           "torchmetrics Metric.")
        per_step = self.fx in STEP_HOOKS and self.stage == "train"
        on_step = per_step if on_step is None else on_step
        on_epoch = (not per_step) if on_epoch is None else on_epoch
        if not (on_step or on_epoch):
            raise LogError(f"self.log({name!r}, on_step=False, on_epoch=False) would record nothing; set one.")
        if isinstance(value, Metric) and reduce_fx != "mean":
            raise LogError(f"self.log({name!r}, <Metric>) reduces with the metric's own compute(); drop reduce_fx.")
        # A value logged from an epoch-level hook (on_validation_epoch_end, ...) has no epoch left to
        # reduce over: it is published at once, so callbacks running after the hook see it.
        direct = self.fx not in STEP_HOOKS and self.fx not in EVAL_STEP_HOOKS
        suffixed = add_dataloader_idx and self.dataloader_idx is not None
        slot = _Slot(f"{name}/dataloader_idx_{self.dataloader_idx}" if suffixed else name, self.stage,
                     on_step and not direct, True if direct else on_epoch, prog_bar, logger, reduce_fx, direct)
        slot.dataloader_idx = self.dataloader_idx if suffixed else None
        self._slots[(self.stage, self.fx, name, self.dataloader_idx)] = slot
        self._unique.append(slot)
        if not suffixed:
            self._slots[(self.stage, self.fx, name, None)] = slot  # shared: other dataloaders find it there
        return slot

    def _publish(self, slot: _Slot, value: Any) -> None:
        self.refresh_step_views()  # the step values logged before this one reach the views first
        if isinstance(value, Metric):
            value = value.compute()
            slot_value = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        elif isinstance(value, torch.Tensor):
            slot_value = value.detach()
        else:
            slot_value = torch.tensor(float(value))
        self.callback_metrics[slot.name] = slot_value
        if slot.prog_bar:
            self.progress_bar_metrics[slot.name] = slot_value
        if slot.logger:
            self.logged_metrics[slot.name] = slot_value
            self.pending_log[slot.name] = slot_value

    def take_pending(self) -> dict[str, torch.Tensor]:
        """Values published from epoch-level hooks since the last call, for the logger."""
        pending, self.pending_log = self.pending_log, {}
        return pending

    # -- views ---------------------------------------------------------------------------
    def step_metrics(self) -> dict[str, torch.Tensor]:
        """The latest per-step training values (what a logger writes every few steps)."""
        return {s.step_key: s.last.detach() for s in self._unique
                if s.stage == "train" and s.on_step and s.logger and s.last is not None}

    def refresh_step_views(self) -> None:
        """Copy the per-step values logged since the last copy into the views (logged_metrics: ``logger=True``).

        A value copied before is not copied again, so a view written since
        (an epoch-end value of the same name) keeps the later value.
        """
        for slot in self._unique:
            last = slot.last
            if last is not None and last is not slot.shown and slot.on_step and slot.stage == "train":
                last = slot.last = slot.shown = last.detach()
                self.callback_metrics[slot.step_key] = last
                if slot.on_epoch:
                    self.callback_metrics.setdefault(slot.name, last)
                if slot.prog_bar:
                    self.progress_bar_metrics[slot.step_key] = last
                if slot.logger:
                    self.logged_metrics[slot.step_key] = last

    def epoch_end(self, stage: str) -> dict[str, torch.Tensor]:
        """Reduce ``stage``'s per-epoch values, publish them, and return what goes to the logger."""
        self.refresh_step_views()  # the epoch's last step values reach the views before its epoch values
        out = {}
        for slot in self._unique:
            if slot.stage != stage or not slot.on_epoch or slot.direct:
                continue
            value = slot.epoch_value(self.reduce if slot.sync_dist else None)
            if value is None:
                continue
            self.callback_metrics[slot.epoch_key] = value
            self.callback_metrics[slot.name] = value
            if slot.prog_bar:
                self.progress_bar_metrics[slot.epoch_key] = value
            if slot.logger:
                out[slot.epoch_key] = value
                self.logged_metrics[slot.epoch_key] = value
        return out

    def reset_stage(self, stage: str) -> None:
        """Forget a stage's partial epoch values (a new run of an evaluation loop)."""
        for slot in self._unique:
            if slot.stage == stage:
                slot.total, slot.weight, slot.last = None, 0, None
                if slot.metric is not None:
                    slot.metric.reset()

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything logged so far that decides what is reported later: per-slot accumulators and the views.

        torchmetrics ``Metric`` objects keep their own state (they are module
        attributes); only the fact that a slot reports one is recorded here.
        The views are brought up to date first, so every slot's ``last`` is
        in them (``shown``) when they are loaded back.
        """
        self.refresh_step_views()
        slots = []
        for (stage, fx, name, dataloader_idx), slot in self._slots.items():
            if dataloader_idx != slot.dataloader_idx:
                continue  # another dataloader's key for a shared slot: rebuilt at its first log after a resume
            slots.append({"stage": stage, "fx": fx, "name": name, "dataloader_idx": dataloader_idx, "on_step": slot.on_step, "on_epoch": slot.on_epoch,
                          "prog_bar": slot.prog_bar, "logger": slot.logger, "reduce_fx": slot.reduce_fx,
                          "direct": slot.direct, "sync_dist": slot.sync_dist, "weight": slot.weight, "has_metric": slot.metric is not None,
                          "last": None if slot.last is None else slot.last.detach(), "total": slot.total})
        return {"fx": self.fx, "stage": self.stage, "dataloader_idx": self.dataloader_idx, "slots": slots,
                "callback_metrics": dict(self.callback_metrics), "progress_bar_metrics": dict(self.progress_bar_metrics),
                "logged_metrics": dict(self.logged_metrics), "pending_log": dict(self.pending_log)}

    def load_state_dict(self, state: dict[str, Any], metrics: dict[str, Metric] | None = None) -> None:
        self.fx, self.stage = state["fx"], state["stage"]
        self.dataloader_idx = state.get("dataloader_idx")  # absent in checkpoints from before several loaders
        self._slots, self._unique = {}, []
        for entry in state["slots"]:
            index = entry.get("dataloader_idx")
            name = entry["name"] if index is None else f"{entry['name']}/dataloader_idx_{index}"
            slot = _Slot(name, entry["stage"], entry["on_step"], entry["on_epoch"], entry["prog_bar"],
                         entry["logger"], entry["reduce_fx"], entry["direct"])
            slot.last, slot.total, slot.weight = entry["last"], entry["total"], entry["weight"]
            slot.shown = slot.last  # state_dict refreshed the views: they hold it
            slot.sync_dist, slot.dataloader_idx = entry["sync_dist"], index
            self._slots[(entry["stage"], entry["fx"], entry["name"], index)] = slot
            self._unique.append(slot)
        for view in ("callback_metrics", "progress_bar_metrics", "logged_metrics", "pending_log"):
            setattr(self, view, dict(state[view]))

    def forget(self, keys: Any) -> None:
        """Drop published values (e.g. the sanity check's), so nothing downstream acts on them."""
        for key in keys:
            for view in (self.callback_metrics, self.progress_bar_metrics, self.logged_metrics):
                view.pop(key, None)


def _infer_batch_size(batch: Any) -> int:
    """Size of the first dimension of the first tensor in the batch (1 if there is none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _infer_batch_size(item)
            if size:
                return size
    return 1
