"""``ProgressBar``: a ``rich`` display of the epoch, the batch count, the loss and ``prog_bar`` values.

Why it looks like this:

* It is off -- prints nothing at all -- unless its console is a terminal
  (``sys.stdout.isatty()`` when no console is given), so logs, CI output and
  piped runs stay clean.  That is decided once, in ``setup``.
* The trainer adds it by default, and the hook relay calls every hook it
  overrides, so a disabled bar costs one attribute test per hook call.
* Reading logged values means ``.item()`` (a host sync on GPU), so that
  happens only in a refresh: every ``refresh_rate`` batches and at the last one.
* rich's auto-refresh thread is off: the bar redraws when the loop tells it
  something changed, and nothing runs between batches.

Pass ``console=rich.console.Console(file=..., force_terminal=True)`` to draw
somewhere else (tests do, to see what it renders).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .._optim import ConfigError
from ._base import Callback

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from .._run import Run
    from ..module import TrainingModule

__all__ = ["ProgressBar", "RichProgressBar", "TQDMProgressBar"]

_EVAL_TITLES = {"validate": "Validation", "test": "Testing", "predict": "Predicting", "sanity": "Sanity checking"}


class ProgressBar(Callback):
    """Show training progress; ``leave=False`` reuses one line for every epoch instead of one per epoch."""

    def __init__(self, refresh_rate: int = 1, console: Console | None = None, leave: bool = True) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ConfigError(f"ProgressBar(refresh_rate={refresh_rate!r}) must be an int >= 0 (0 turns it off).")
        self.refresh_rate, self.leave = refresh_rate, leave
        self._console = console
        self.enabled = False  # decided in setup(): a terminal is there and refresh_rate > 0
        self._progress: Progress | None = None
        self._train_task: TaskID | None = None
        self._eval_task: TaskID | None = None
        self._eval_total = 0
        self._eval_done = 0  # evaluation batches done in this run, over every dataloader
        self._sanity = False

    # -- switching on and off ------------------------------------------------------------------
    def setup(self, trainer: Run, module: TrainingModule, stage: str) -> None:
        self.enabled = self.refresh_rate > 0 and _is_terminal(self._console)

    def teardown(self, trainer: Run, module: TrainingModule, stage: str) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = self._train_task = self._eval_task = None

    def print(self, *args: Any, sep: str = " ", end: str = "\n", **kwargs: Any) -> None:
        """``print``, above the bar while it is drawing (so the text does not tear it): ``module.print`` uses it."""
        if self._progress is None or kwargs.get("file") is not None:
            print(*args, sep=sep, end=end, **kwargs)
            return
        self._progress.console.print(*args, sep=sep, end=end, markup=False, highlight=False)

    def _display(self) -> Progress:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            if self._console is None:
                self._console = Console()
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}", markup=False), console=self._console, auto_refresh=False)
            self._progress.start()
        return self._progress

    # -- training ----------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Run, module: TrainingModule) -> None:
        if not self.enabled:
            return
        display, title = self._display(), f"Epoch {trainer.current_epoch}"
        total = trainer.num_training_batches
        if self._train_task is None or self.leave:
            self._train_task = display.add_task(title, total=total, metrics="")
        else:
            display.reset(self._train_task, total=total, description=title, metrics="")
        display.refresh()

    def on_train_batch_end(self, trainer: Run, module: TrainingModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.enabled:
            return
        done = batch_idx + 1
        if done % self.refresh_rate and done != trainer.num_training_batches:
            return
        display = self._display()
        display.update(self._train_task, completed=done, metrics=self._metrics_text(trainer, outputs))
        display.refresh()

    def on_train_epoch_end(self, trainer: Run, module: TrainingModule) -> None:
        if self.enabled and self._train_task is not None:
            self._display().update(self._train_task, metrics=self._metrics_text(trainer, None))
            self._progress.refresh()

    # -- evaluation: one transient bar under the training bar ---------------------------------------
    def on_sanity_check_start(self, trainer: Run, module: TrainingModule) -> None:
        self._sanity = True

    def on_sanity_check_end(self, trainer: Run, module: TrainingModule) -> None:
        self._sanity = False

    def on_validation_start(self, trainer: Run, module: TrainingModule) -> None:
        self._eval_start(trainer, "sanity" if self._sanity else "validate")

    def on_validation_batch_end(self, trainer: Run, module: TrainingModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end()

    def on_validation_end(self, trainer: Run, module: TrainingModule) -> None:
        self._eval_end(trainer)

    def on_test_start(self, trainer: Run, module: TrainingModule) -> None:
        self._eval_start(trainer, "test")

    def on_test_batch_end(self, trainer: Run, module: TrainingModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end()

    def on_test_end(self, trainer: Run, module: TrainingModule) -> None:
        self._eval_end(trainer)

    def on_predict_start(self, trainer: Run, module: TrainingModule) -> None:
        self._eval_start(trainer, "predict")

    def on_predict_batch_end(self, trainer: Run, module: TrainingModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end()

    def on_predict_end(self, trainer: Run, module: TrainingModule) -> None:
        self._eval_end(trainer)

    def _eval_start(self, trainer: Run, kind: str) -> None:
        if not self.enabled:
            return
        self._eval_total = _eval_batches(trainer, kind)
        self._eval_done = 0  # batches of every dataloader so far (batch_idx restarts with each)
        self._eval_task = self._display().add_task(_EVAL_TITLES[kind], total=self._eval_total, metrics="")
        self._progress.refresh()

    def _eval_batch_end(self) -> None:
        if not self.enabled or self._eval_task is None:
            return
        self._eval_done += 1
        done = self._eval_done
        if done % self.refresh_rate == 0 or done == self._eval_total:
            self._progress.update(self._eval_task, completed=done)
            self._progress.refresh()

    def _eval_end(self, trainer: Run) -> None:
        if not self.enabled or self._eval_task is None:
            return
        self._progress.remove_task(self._eval_task)
        self._eval_task = None
        if self._train_task is not None:  # validation inside fit: show its values on the epoch's line
            self._progress.update(self._train_task, metrics=self._metrics_text(trainer, None))
        elif trainer.state in ("validate", "test"):
            self._progress.console.print(self._metrics_text(trainer, None), markup=False, highlight=False)
        self._progress.refresh()

    # -- what the bar says ------------------------------------------------------------------------------
    @staticmethod
    def _metrics_text(trainer: Run, outputs: Any) -> str:
        """``loss=0.123 acc=0.9 ...``; the one place the bar turns tensors into numbers."""
        values: dict[str, Any] = {}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if hasattr(loss, "item") and getattr(loss, "numel", lambda: 0)() == 1:
            values["loss"] = loss.detach()
        values.update(trainer.progress_bar_metrics)
        return " ".join(f"{key}={_number(value)}" for key, value in values.items())


def _number(value: Any) -> str:
    number = float(value)
    return f"{number:.4g}"


def _is_terminal(console: Console | None) -> bool:
    if console is not None:
        return console.is_terminal
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def _eval_batches(trainer: Run, kind: str) -> int:
    stage = "validate" if kind == "sanity" else kind
    counts = [source.num_batches for source in trainer.stage_sources(stage)]  # every dataloader of the stage
    if kind == "sanity" and trainer.num_sanity_val_steps >= 0:
        counts = [min(count, trainer.num_sanity_val_steps) for count in counts]  # that many of each
    return sum(counts)


class TQDMProgressBar(ProgressBar):
    """Lightning's ``TQDMProgressBar(refresh_rate, process_position, leave)``, drawn by this bar (rich, not tqdm).

    ``process_position`` stacks tqdm bars of several trainers in one terminal;
    this bar draws one display, so only 0 is accepted.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        if process_position != 0:
            raise ConfigError(f"TQDMProgressBar(process_position={process_position!r}): one progress display is "
                              "drawn per process here; use process_position=0 (or ProgressBar).")
        super().__init__(refresh_rate=refresh_rate, leave=leave)


class RichProgressBar(ProgressBar):
    """Lightning's ``RichProgressBar(refresh_rate, leave, theme, console_kwargs)``: this bar, which is rich's.

    ``console_kwargs`` build its ``rich.console.Console``; a custom ``theme``
    is refused (the bar's look is fixed), so it is never ignored silently.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, theme: Any = None,
                 console_kwargs: dict[str, Any] | None = None) -> None:
        if theme is not None:
            raise ConfigError("RichProgressBar(theme=...): the bar's look is fixed here; leave theme out (or use "
                              "ProgressBar(console=rich.console.Console(...)) to choose where it draws).")
        console = None
        if console_kwargs is not None:
            from rich.console import Console

            console = Console(**console_kwargs)
        super().__init__(refresh_rate=refresh_rate, console=console, leave=leave)
