"""``ModelCheckpoint``: save the run during ``fit`` and keep the best (or latest) *k* files.

When a save happens (Lightning's rules):

* every ``every_n_train_steps`` optimizer steps, at ``on_train_batch_end``;
* every ``every_n_epochs`` epochs (default 1 when no step interval is given):
  at ``on_train_epoch_end`` when validation runs once at the end of every
  epoch or not at all -- both the epoch's training and validation values are
  then final -- otherwise after each validation (``on_validation_end``);
* never during the sanity check, ``fast_dev_run``, or outside ``fit``;
* at most once per global step, so two triggers at one step write one file.

Which files are kept: with ``monitor``, the ``save_top_k`` best by that value
(``mode`` "min" or "max"); without it, the ``save_top_k`` latest.  ``-1``
keeps all, ``0`` none (``save_last`` still writes ``last.ckpt``).  A file that
drops out of the top *k* is deleted.  The bookkeeping (paths and scores) is
this callback's ``state_dict``, so a resumed run keeps pruning the same files.

``async_save=True`` (ours; one process only): training is blocked only while
the state is copied to host memory; the write, checksums, fsyncs and commit
run in a background thread, one at a time.  A file that drops out of the top
*k* is deleted by that thread once its replacement is committed.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._optim import ConfigError
from ._base import Callback

if TYPE_CHECKING:
    from .._run import Run
    from ..module import TrainingModule

__all__ = ["ModelCheckpoint"]

_DEFAULT_FILENAME = "{epoch}-{step}"
#: A ``{name}`` or ``{name:spec}`` placeholder of ``filename`` (names may hold ``/`` and ``.``, as logged keys do).
_PLACEHOLDER = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")


class ModelCheckpoint(Callback):
    """Save checkpoints while fitting; ``best_model_path`` feeds ``trainer.validate(ckpt_path="best")``.

    ``filename`` is a template of ``{epoch}``, ``{step}`` and any logged
    value by name, with a format spec if you like: as in Lightning,
    ``"{epoch}-{val_loss:.2f}"`` writes ``epoch=1-val_loss=0.68.ckpt``
    (``auto_insert_metric_name=False`` leaves the ``name=`` out: ``1-0.68``).
    The default is ``"{epoch}-{step}"``.  ``.ckpt`` is appended.

    Lightning's class constants are here too; a subclass may change them
    (``CHECKPOINT_NAME_LAST = "{epoch}-last"`` names the last checkpoint by
    the same template rules).
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None,
                 monitor: str | None = None, mode: str = "min", save_top_k: int = 1, save_last: bool = False,
                 every_n_train_steps: int | None = None, every_n_epochs: int | None = None,
                 save_on_train_epoch_end: bool | None = None, auto_insert_metric_name: bool = True,
                 async_save: bool = False) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"ModelCheckpoint(mode={mode!r}): use 'min' or 'max'.")
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise ConfigError(f"ModelCheckpoint(save_top_k={save_top_k!r}) must be an int >= -1 "
                              "(-1 keeps every checkpoint, 0 none).")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"ModelCheckpoint({name}={value!r}) must be an int >= 0, or None.")
        if not isinstance(async_save, bool):
            raise ConfigError(f"ModelCheckpoint(async_save={async_save!r}) must be True or False.")
        if monitor is not None and not (isinstance(monitor, str) and monitor):
            raise ConfigError(f"ModelCheckpoint(monitor={monitor!r}) must be the name of a logged value, or None.")
        self.dirpath = Path(dirpath) if dirpath is not None else None  # None: <default_root_dir>/checkpoints
        self.filename = filename if filename is not None else _DEFAULT_FILENAME
        self.auto_insert_metric_name = auto_insert_metric_name
        self.monitor, self.mode, self.save_top_k, self.save_last = monitor, mode, save_top_k, save_last
        self.every_n_train_steps = every_n_train_steps or 0  # 0: no step-based saving
        # Lightning: epochs default to 1 unless only a step interval was asked for.
        self.every_n_epochs = (every_n_epochs if every_n_epochs is not None
                               else 0 if every_n_train_steps else 1)
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.async_save = async_save  # write in a background thread (one process only; see the module docstring)
        self._given_dirpath = None if dirpath is None else str(dirpath)
        # What the state_dict holds: --------------------------------------------------------
        self.best_k_models: dict[str, float] = {}  # path -> score of every kept top-k file
        self.best_model_path = ""  # the best kept file ("" until a save); without monitor, the latest
        self._best_score: float | None = None  # its monitored value (best_model_score); None without monitor
        self.kth_best_model_path = ""  # the worst of the kept top-k: the next to go
        self.last_model_path = ""  # last.ckpt once save_last wrote it
        self.last_global_step_saved = -1  # the step of the latest save; -1 before any

    @property
    def state_key(self) -> str:
        settings = {"monitor": self.monitor, "mode": self.mode, "every_n_train_steps": self.every_n_train_steps,
                    "every_n_epochs": self.every_n_epochs, "dirpath": self._given_dirpath}
        return f"ModelCheckpoint{settings!r}"

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "dirpath": None if self.dirpath is None else str(self.dirpath),
            "best_k_models": dict(self.best_k_models),
            "best_model_path": self.best_model_path,
            "best_model_score": self._best_score,
            "kth_best_model_path": self.kth_best_model_path,
            "last_model_path": self.last_model_path,
            "last_global_step_saved": self.last_global_step_saved,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_global_step_saved = int(state["last_global_step_saved"])
        # Files in another directory are not ours to prune: keep only the counters then.
        if self.dirpath is not None and state["dirpath"] is not None and Path(state["dirpath"]) != self.dirpath:
            return
        if state["dirpath"] is not None:
            self.dirpath = Path(state["dirpath"])
        self.best_k_models = {str(k): float(v) for k, v in state["best_k_models"].items()}
        self.best_model_path = state["best_model_path"]
        score = state["best_model_score"]
        self._best_score = None if score is None else float(score)
        self.kth_best_model_path = state["kth_best_model_path"]
        self.last_model_path = state["last_model_path"]

    # -- hooks ----------------------------------------------------------------------------------
    def setup(self, trainer: Run, module: TrainingModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "checkpoints"

    def on_train_batch_end(self, trainer: Run, module: TrainingModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = self.every_n_train_steps
        if not n:  # the common case: one comparison per batch
            return
        step = trainer.global_step
        if step > 0 and step % n == 0 and self._may_save(trainer):
            self._save(trainer)

    def _on_epoch_end(self, trainer: Run) -> bool:
        """Whether epoch-based saves happen at the epoch's end (else after each validation), as Lightning decides.

        Read when the hooks run, not in ``setup``: the data (and so where
        validation falls) is set up after the ``setup`` hooks.
        """
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        return trainer.validation_ends_each_epoch

    def on_train_epoch_end(self, trainer: Run, module: TrainingModule) -> None:
        if self._on_epoch_end(trainer) and self._epoch_due(trainer) and self._may_save(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: Run, module: TrainingModule) -> None:
        if (not self._on_epoch_end(trainer) and trainer.state == "fit" and not trainer.sanity_checking
                and self._epoch_due(trainer) and self._may_save(trainer)):
            self._save(trainer)

    def _epoch_due(self, trainer: Run) -> bool:
        return self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _may_save(self, trainer: Run) -> bool:
        # (The sanity check is ruled out in on_validation_end: it is the only hook it reaches.)
        return trainer.state == "fit" and not trainer.fast_dev_run and trainer.global_step != self.last_global_step_saved

    # -- saving -----------------------------------------------------------------------------------
    def _save(self, trainer: Run) -> None:
        """Write the top-k file (if it makes the cut) and last.ckpt, then delete what fell out."""
        self.last_global_step_saved = trainer.global_step
        if self.save_top_k != 0:
            self._save_top_k(trainer)
        if self.save_last:
            self.last_model_path = self._path(trainer, self.CHECKPOINT_NAME_LAST)
            trainer.request_checkpoint(self.last_model_path, async_save=self.async_save)

    def _save_top_k(self, trainer: Run) -> None:
        if self.monitor is None:
            score = float(trainer.global_step)  # the latest is the "best": keep the newest k
        else:
            score = _as_score(trainer.monitored(self.monitor, "ModelCheckpoint"), self.mode)
        if not self._makes_the_cut(score):
            return
        dropped = self.kth_best_model_path if self._full() else ""
        path = self._unique_path(self._path(trainer, self.filename), dropped)
        if dropped:
            del self.best_k_models[dropped]
        self.best_k_models[path] = score
        self._update_ranks()
        # Written at the next transition boundary (after this hook), with this bookkeeping in its state;
        # the file that fell out of the top k goes only once its replacement is on disk.  Rank 0 deletes it, as
        # rank 0 committed it: every rank deleting the one shared directory raced (the loser warned "could not
        # delete", seen with two torchrun nodes).
        obsolete = dropped if dropped and dropped != path and dropped != self.last_model_path else None
        obsolete = obsolete if trainer.is_global_zero else None
        trainer.request_checkpoint(path, on_written=None if obsolete is None else lambda _: _remove(obsolete),
                                   async_save=self.async_save)

    def _full(self) -> bool:
        return self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k

    def _makes_the_cut(self, score: float) -> bool:
        if not self._full():
            return True
        kth = self.best_k_models[self.kth_best_model_path]
        if self.monitor is None:
            return True
        return score < kth if self.mode == "min" else score > kth

    def _update_ranks(self) -> None:
        # Without a monitor the score is the step, and newer is better.
        best_is_max = self.mode == "max" or self.monitor is None
        ranked = sorted(self.best_k_models, key=self.best_k_models.__getitem__, reverse=best_is_max)
        self.best_model_path, self.kth_best_model_path = ranked[0], ranked[-1]
        self._best_score = None if self.monitor is None else self.best_k_models[ranked[0]]

    @property
    def best_model_score(self) -> torch.Tensor | None:
        """The monitored value of ``best_model_path`` as a tensor (Lightning's type); None without monitor."""
        return None if self._best_score is None else torch.tensor(self._best_score)

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None,
                               prefix: str | None = None) -> str:
        """Lightning's: the path ``filename`` (default: this callback's) names for these values.

        ``format_checkpoint_name({"epoch": 3, "val_loss": torch.tensor(0.5)})``
        gives ``<dirpath>/epoch=3-val_loss=0.50.ckpt`` for ``"{epoch}-{val_loss:.2f}"``;
        ``ver`` appends ``-v<ver>``, ``prefix`` goes in front.  A placeholder
        with no value is a ConfigError listing the values given.
        """
        def value(name: str) -> float:
            if name not in metrics:
                raise ConfigError(f"ModelCheckpoint.format_checkpoint_name(): the filename names {name!r}, which is "
                                  f"not in the metrics given ({', '.join(sorted(metrics)) or 'none'}); pass it.")
            return float(metrics[name]) if isinstance(metrics[name], torch.Tensor) else metrics[name]

        name = self._fill(filename if filename is not None else self.filename, value)
        join = self.CHECKPOINT_JOIN_CHAR
        name = f"{prefix}{join}{name}" if prefix else name
        name = f"{name}{join}v{ver}" if ver is not None else name
        return str(self.dirpath / f"{name}{self.FILE_EXTENSION}") if self.dirpath else f"{name}{self.FILE_EXTENSION}"

    def _path(self, trainer: Run, template: str) -> str:
        """The path for a save now: ``template`` filled in with epoch, step and logged values."""
        fixed: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}

        def value(name: str) -> Any:
            if name in fixed:
                return fixed[name]
            return float(trainer.monitored(name, f"ModelCheckpoint(filename={template!r})"))

        return str(self.dirpath / f"{self._fill(template, value)}{self.FILE_EXTENSION}")

    def _fill(self, template: str, value: Any) -> str:
        """``template`` with each ``{name[:spec]}`` replaced by ``value(name)`` (``name=`` first, by default)."""
        def fill(match: re.Match[str]) -> str:
            name, spec = match.group(1), match.group(2) or ""
            text = format(value(name), spec)
            return f"{name}{self.CHECKPOINT_EQUALS_CHAR}{text}" if self.auto_insert_metric_name else text

        return _PLACEHOLDER.sub(fill, template)

    def _unique_path(self, path: str, dropped: str) -> str:
        """``path``, or ``path`` with ``-v1``, ``-v2``... when a kept file already has that name."""
        taken = (set(self.best_k_models) - {dropped}) | {self.last_model_path}
        ext = self.FILE_EXTENSION
        stem, version = path[: -len(ext)], 1
        while path in taken:
            path = f"{stem}{self.CHECKPOINT_JOIN_CHAR}v{version}{ext}"
            version += 1
        return path


def _as_score(value: Any, mode: str) -> float:
    """The monitored value as a float; NaN counts as the worst possible score."""
    score = float(value)
    if math.isnan(score):
        return math.inf if mode == "min" else -math.inf
    return score


def _remove(path: str) -> None:
    """Delete a checkpoint that fell out of the top k: hidden first, then deleted in the background (a kill in
    between leaves only a hidden entry, which the next save removes); a symlink is unlinked, never followed."""
    import warnings

    from ..checkpoint import remove_checkpoint

    try:
        remove_checkpoint(path, wait=False)
    except OSError as exc:  # training goes on; the checkpoint stays, as a valid one
        warnings.warn(f"ModelCheckpoint could not delete {path}, which fell out of the top k ({exc}); delete it "
                      "yourself.", stacklevel=2)
