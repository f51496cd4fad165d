"""Elastic resume: a checkpoint written by N processes resumed by M, under a fixed global batch.

Theory of operation
-------------------
A DDP checkpoint holds the replicated state once (module, optimizers,
schedulers, loops, callbacks) and one part per rank: RNG states, data
positions, partial gradients, the epoch's logged accumulators, torchmetrics
states, logger states (``_run_state.RANK_LOCAL``).  At the same world size
each rank loads its own part.  At another one there is none to load, and the
parts are re-derived -- which is only meaningful when the run's data order and
randomness do not depend on the world size: ``Trainer(global_batch_size=G)``
(``data/_global``).  Without it the load is refused as before
(:class:`~statemachine_trainer.checkpoint.WorldSizeError`, naming both world
sizes).  With it, each new rank reads all N parts
(``checkpoint/_resize``) and takes:

* **data** -- the training loader's position, a global quantity at a step
  boundary (equal on every rank; the loader converts it to its own world
  size).  Evaluation loaders start their next run afresh, as every run of
  theirs does: in this mode no checkpoint is taken during one (below);
* **grads** -- none: a checkpoint taken inside an accumulation window holds
  each rank's partial gradient and is refused (at the same world size it
  resumes exactly);
* **rng** -- its own rank's saved states (rank 0's for a rank that did not
  exist).  Every draw of a training step is re-seeded per micro-batch in
  this mode, so these only decide draws made outside steps;
* **results** -- the epoch's accumulators of values logged with
  ``on_epoch=True, sync_dist=True`` are merged: rank 0 gets the N ranks'
  combined sum and count (or max / min), the others the identity, so the
  epoch's reduced value is the uninterrupted run's (up to summation order).
  An accumulator logged without ``sync_dist`` is each rank's own value
  (Lightning logs rank 0's): it cannot be re-split, and is refused;
* **metrics** -- torchmetrics states merged by their ``dist_reduce_fx`` the
  same way (sum, cat, max, min into rank 0, defaults elsewhere), so the
  synchronized ``compute()`` is unchanged; ``mean``, custom or no reduction
  of an accumulated state is refused;
* **loggers** -- its own rank's (loggers live on rank 0).

The loops are replicated but count *batches*, which are micro-batches of
this rank: the training epoch loops' progress is rescaled by ``N / M`` (a
step boundary is ``s * a`` batches, ``a = G / (b * W)``), while optimizer
steps, epochs and everything else continue as saved.

Where checkpoints are taken.  With a global batch the training epoch loop is
``checkpointable`` only between two of its transitions at a step boundary
(``TrainingEpochLoop.checkpointable``), so every checkpoint of such a run --
requested by a callback, or on preemption -- can move to another world size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .checkpoint import WorldSizeError

__all__ = ["merge_parts", "read_resized", "rescale_progress"]


def read_resized(trainer: Any, path: Path, saved_world_size: int, whole_run: bool) -> dict[str, Any]:
    """Collective: the state set of this rank, from a checkpoint written at ``saved_world_size`` ranks.

    Outside fit (weights only) any world size reads the replicated state.
    During fit the run needs ``global_batch_size``, else :class:`WorldSizeError` names both world sizes.
    """
    from .checkpoint._dist import agree
    from .checkpoint._resize import load_all_parts

    strategy, config = trainer.strategy, trainer.config
    if whole_run and config.global_batch_size is None:
        raise WorldSizeError(f"{path} was written at world size {saved_world_size}, but this run has world size "
                             f"{strategy.world_size}. Resume it with {saved_world_size} process(es) (torchrun "
                             f"--nproc-per-node {saved_world_size} ...): each rank's RNG states and data position "
                             "belong to that rank. To resume at another world size, train with a fixed global batch "
                             "(Trainer(global_batch_size=G)) in both runs.")
    from ._sharded_state import sharded_templates

    # An FSDP checkpoint's shards are read into this world's split of each tensor: DCP reshards.
    replicated, parts, _ = load_all_parts(path, map_location=trainer.run.device,
                                          template=sharded_templates(trainer.run.module))
    if not whole_run:
        return {**replicated, **parts[0]}
    merged, own = None, None
    try:
        merged = merge_parts(parts, strategy.rank, strategy.world_size, trainer.run.module, path)
    except WorldSizeError as exc:
        own = exc
    agree(own, f"to resume checkpoint {path} at world size {strategy.world_size}")
    return {**replicated, **merged}


def merge_parts(parts: list[dict[str, Any]], rank: int, world_size: int, module: torch.nn.Module,
                path: Path) -> dict[str, Any]:
    """Rank ``rank`` of ``world_size``'s rank-local state, derived from the N saved ``parts`` (module docstring)."""
    saved = len(parts)
    where = f"{path} (world size {saved}) at world size {world_size}"
    _refuse_partial_gradients(parts, where)
    own = parts[rank] if rank < saved else parts[0]
    return {"rng": own["rng"], "loggers": own["loggers"], "grads": {},
            "data": _data(parts, where),
            "results": _results(parts, own["results"], rank == 0, where),
            "metrics": _metrics(parts, rank == 0, module, where)}


def rescale_progress(root: Any, saved_world_size: int, world_size: int) -> None:
    """The training epoch loops' batch counters, counted at ``saved_world_size`` ranks, as ``world_size`` counts them."""
    from .loops import TrainingEpochLoop

    for _, loop in root.walk():
        if not isinstance(loop, TrainingEpochLoop):
            continue
        for tracker in (loop.progress.current, loop.progress.total):
            for name in ("ready", "started", "processed", "completed"):
                batches = getattr(tracker, name) * saved_world_size
                if batches % world_size:
                    raise WorldSizeError(f"The training loop had counted {getattr(tracker, name)} batches at world "
                                         f"size {saved_world_size}, which is no whole number of batches at world "
                                         f"size {world_size}: the checkpoint was not taken at a step boundary.")
                setattr(tracker, name, batches // world_size)


# -- the parts ----------------------------------------------------------------------------------------
def _refuse_partial_gradients(parts: list[dict[str, Any]], where: str) -> None:
    if any(part["grads"] or part.get("held_grads") for part in parts):  # held_grads: FSDP's, inside a window
        raise WorldSizeError(f"{where}: the checkpoint was taken inside a gradient-accumulation window, so each "
                             "rank holds its own partial gradient, which cannot be re-split. Resume it at its own "
                             "world size, or from a checkpoint taken at an optimizer-step boundary.")


def _data(parts: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """The training position (equal on every rank at a step boundary); evaluation loaders start afresh."""
    states = [part["data"].get("train") for part in parts]
    if states[0] is None:
        return {}
    if not isinstance(states[0], dict) or "global_batch_size" not in states[0]:
        raise WorldSizeError(f"{where}: the training data was not read in the global-batch order when the "
                             "checkpoint was written (it was saved without Trainer(global_batch_size=...)), so each "
                             "rank's position belongs to that rank. Resume it at its own world size.")
    if any(state != states[0] for state in states):
        raise WorldSizeError(f"{where}: the ranks' training positions differ ({[s['position'] for s in states]}), "
                             "so the checkpoint was not taken at an optimizer-step boundary. Resume it at its own "
                             "world size.")
    return {"train": states[0]}


def _slot_key(slot: dict[str, Any]) -> tuple[Any, ...]:
    return slot["stage"], slot["fx"], slot["name"], slot["dataloader_idx"]


def _results(parts: list[dict[str, Any]], own: dict[str, Any], rank_zero: bool, where: str) -> dict[str, Any]:
    """``own``'s results with every epoch accumulator merged into rank 0 (identity elements elsewhere)."""
    slots_by_rank = [{_slot_key(slot): slot for slot in part["results"]["slots"]} for part in parts]
    keys = set(slots_by_rank[0])
    if any(set(slots) != keys for slots in slots_by_rank):
        raise WorldSizeError(f"{where}: the ranks logged different names this epoch, so their accumulators cannot "
                             "be merged. Resume it at its own world size.")
    merged = []
    for slot in own["slots"]:
        entries = [slots[_slot_key(slot)] for slots in slots_by_rank]
        merged.append(_merged_slot(slot, entries, rank_zero, where))
    return {**own, "slots": merged}


def _merged_slot(slot: dict[str, Any], entries: list[dict[str, Any]], rank_zero: bool, where: str) -> dict[str, Any]:
    totals = [entry["total"] for entry in entries if entry["total"] is not None]
    if not totals:
        return slot
    if not slot["sync_dist"]:
        raise WorldSizeError(f"{where}: {slot['name']!r} was logged with on_epoch=True but without sync_dist, so its "
                             "epoch value is each rank's own and cannot be re-split. Log it with sync_dist=True (the "
                             "value over all ranks) to resume at another world size, or resume at the world size "
                             "that wrote the checkpoint.")
    fx = slot["reduce_fx"]
    if rank_zero:
        total = totals[0]
        for other in totals[1:]:
            total = (torch.maximum(total, other) if fx == "max" else torch.minimum(total, other) if fx == "min"
                     else total + other)
        return {**slot, "total": total, "weight": sum(entry["weight"] for entry in entries)}
    return {**slot, "total": _identity(totals[0], fx), "weight": 0}


def _identity(like: Any, fx: str) -> Any:
    """The element that leaves a cross-rank ``fx`` reduction unchanged: 0 for sums, -inf / +inf for max / min."""
    like = torch.as_tensor(like)
    if fx not in ("max", "min"):
        return torch.zeros_like(like)
    if like.is_floating_point():
        return torch.full_like(like, -math.inf if fx == "max" else math.inf)
    info = torch.iinfo(like.dtype)
    return torch.full_like(like, info.min if fx == "max" else info.max)


def _metrics(parts: list[dict[str, Any]], rank_zero: bool, module: torch.nn.Module, where: str) -> dict[str, Any]:
    """Every torchmetrics Metric's state: merged into rank 0 by its reduction, the defaults elsewhere."""
    from torchmetrics import Metric

    live = {name: metric for name, metric in module.named_modules() if isinstance(metric, Metric)}
    if any(set(part["metrics"]) != set(parts[0]["metrics"]) for part in parts):
        raise WorldSizeError(f"{where}: the ranks saved different torchmetrics metrics, so their states cannot be "
                             "merged. Resume it at its own world size.")
    merged: dict[str, Any] = {}
    for name, entry in parts[0]["metrics"].items():
        metric = live.get(name)
        entries = [part["metrics"][name] for part in parts]
        if metric is None:
            merged[name] = entry  # the structure check names it
            continue
        state = {key: _merged_state(metric, key, [e["state"][key] for e in entries], rank_zero, f"{where}: "
                                    f"metric {name!r}") for key in entry["state"]}
        count = sum(e["update_count"] for e in entries) if rank_zero else 0
        merged[name] = {"state": state, "update_count": count}
    return merged


def _merged_state(metric: Any, key: str, values: list[Any], rank_zero: bool, where: str) -> Any:
    from torchmetrics.utilities.data import dim_zero_cat, dim_zero_max, dim_zero_min, dim_zero_sum

    default = metric._defaults.get(key)  # torchmetrics keeps them here: no public accessor
    if all(_is_default(value, default) for value in values):
        return values[0]
    reduction = metric._reductions.get(key)
    if reduction is dim_zero_cat and isinstance(default, list):
        return [item for value in values for item in value] if rank_zero else []
    if reduction in (dim_zero_sum, dim_zero_max, dim_zero_min) and isinstance(default, torch.Tensor):
        if not rank_zero:
            return default.to(values[0].device).clone()
        stacked = torch.stack([torch.as_tensor(v) for v in values])
        return (stacked.sum(0) if reduction is dim_zero_sum else stacked.amax(0) if reduction is dim_zero_max
                else stacked.amin(0)).to(values[0].dtype)
    raise WorldSizeError(f"{where}: its state {key!r} has accumulated values and is reduced across ranks by "
                         f"{getattr(reduction, '__name__', reduction)!r}, which cannot be re-split for another world "
                         "size (sum, cat, max and min can). Resume at the world size that wrote the checkpoint, or "
                         "from one taken where the metric was reset (an epoch boundary).")


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(default, list):
        return isinstance(value, (list, tuple)) and len(value) == 0
    return isinstance(value, torch.Tensor) and value.shape == default.shape and bool(
        torch.equal(value.to(default.device), default))
