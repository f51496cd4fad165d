"""``BoundaryWriter``: checkpoint requests and preemption, acted on at transition boundaries.

A checkpoint is exact only at a transition boundary of the running tree
(between two transitions, or two hooks of one): there every loop's
position says precisely what is done.  So nothing writes from inside a
hook; hooks *request* a checkpoint, and this object, installed as the tree's
observer for the length of a fit, writes the pending requests at the next
boundary where every loop is ``checkpointable`` (not, e.g., between the
yields of a generator step).  A preemption signal (SIGTERM / SIGUSR1) is a
request too, followed by :class:`Preempted` (exit 75).  Under DDP the ranks
vote on preemption at batch ends (a
:class:`~statemachine_trainer.distributed.PreemptionVote`: a ballot about
every 0.2 s, on the same batch end everywhere), so they all stop at the same
boundary.

A boundary comes a dozen times per training step, so in one process the
writer observes the tree only while it has work: a request or a signal
installs the observer (the dispatcher reads it afresh at every boundary, so
one installed inside a hook acts at that hook's end), and it takes itself
off once everything is written.  Under DDP (two ranks or more) it observes
the epoch loop's own boundaries all the time, since only the vote may decide
to preempt, at a batch end; the whole tree only while a request waits (a
signal waits for the vote).

``Trainer(save_on_exception=True)`` (one process): the writer also observes
all the time and keeps a copy of the run's state at every boundary *between
two transitions of the epoch loop* -- before each batch and before each
mid-epoch validation.  An exception that escapes the tree writes that copy
(``exception-epoch=E-step=S.ckpt`` beside the other checkpoints), so a
resume re-runs the failed batch or validation from its start, exactly; the
exception propagates unchanged, with a note naming the checkpoint.

Asynchronous requests (``request(..., async_save=True)``) are handed to
``write_async`` together: all those of one boundary share one copy of the
state in host memory and one background write.  The synchronous requests of
a boundary are written first (a synchronous save waits for a write in flight;
after them there is none to wait for).  A preemption first waits for the
write in flight (its failure is warned, not raised: the preemption
checkpoint still gets written), then writes its own checkpoint synchronously,
so exit 75 always leaves every requested checkpoint on disk.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._optim import ConfigError
from ._preemption import Preempted, PreemptionGuard
from .machine import Loop

__all__ = ["ASYNC_UNDER_DDP", "BoundaryWriter"]

#: Why asynchronous checkpoints are refused under DDP, and what to do instead.
ASYNC_UNDER_DDP = (
    "Asynchronous checkpoints (async_save=True) run in one process only: a multi-process checkpoint is written "
    "by every rank together, agreeing through collectives (rank 0 commits the manifest once every part is on "
    "disk), and collectives from a background thread would interleave with training's own. Use async_save=False "
    "under strategy='ddp'.")

#: A checkpoint to write: its path, and what to call once it is on disk (or None).
_Target = tuple[Path, "Callable[[Path], None] | None"]


class BoundaryWriter:
    """Holds checkpoint requests until a boundary; turns a preemption signal into a checkpoint and exit 75."""

    def __init__(self, write: Callable[[Path], Path], preemption_path: Callable[[], Path], strategy: Any,
                 write_async: Callable[[list[_Target]], None] | None = None,
                 flush: Callable[[], BaseException | None] | None = None) -> None:
        self._write = write  # writes the run's state to a path now; returns the path written
        self._write_async = write_async  # starts writing the run's state to these paths in the background
        self._flush = flush  # waits for the background write in flight; returns its failure, if any
        self._preemption_path = preemption_path  # where a preemption checkpoint goes
        self._strategy = strategy
        self._pending: list[tuple[Path, Callable[[Path], None] | None, bool]] = []  # (path, on_written, async)
        self._guard = PreemptionGuard()
        self._root: Loop | None = None  # the tree being watched; None outside watch()
        self._epoch_loop: Loop | None = None  # the loop whose batch ends are where ranks agree on preemption
        self._vote: Any = None  # the ranks' PreemptionVote while a multi-process run is watched, else None
        self._observing = False  # whether the whole tree's boundaries call us now (under DDP: the epoch loop's always)
        self._take_snapshot: Callable[[], Any] | None = None  # save_on_exception: copy the run's state now
        self._write_snapshot: Callable[[Any], Path] | None = None
        self._snapshot: Any = None  # the copy taken at the epoch loop's last boundary

    def save_on_exception(self, take: Callable[[], Any], write: Callable[[Any], Path]) -> None:
        """Keep ``take()`` of every batch boundary; on an exception escaping the tree, ``write`` the last one."""
        self._take_snapshot, self._write_snapshot = take, write

    def request(self, path: Path, on_written: Callable[[Path], None] | None = None, async_save: bool = False) -> None:
        """Write ``path`` at the next checkpointable boundary; outside ``watch`` (no tree running) now.

        ``async_save``: at the boundary the state is copied to host memory and
        written in the background; ``on_written`` then runs in the writer thread.
        """
        if async_save and self._strategy.distributed:  # refused in the hook that asks, on every rank alike
            raise ConfigError(f"request_checkpoint(async_save=True) under strategy='ddp': {ASYNC_UNDER_DDP}")
        if async_save and self._write_async is None:
            raise RuntimeError("This trainer cannot write checkpoints asynchronously (no background writer).")
        if self._root is None:
            self._write_all([(path, on_written, async_save)])
        else:
            self._pending.append((path, on_written, async_save))
            self._observe()

    @contextmanager
    def watch(self, root: Loop, epoch_loop: Loop | None) -> Iterator[None]:
        """Observe ``root``'s boundaries and catch preemption signals while the block runs."""
        self._pending, self._root, self._epoch_loop, self._snapshot = [], root, epoch_loop, None
        self._guard.on_signal = self._observe
        self._vote = self._strategy.preemption_vote()
        if self._vote is not None:  # several ranks: they vote on preemption at the epoch loop's batch ends
            self._watch_batch_ends()
        elif self._take_snapshot is not None:
            root.observe(self._at_boundary_snapshotting)
            self._observing = True
        try:
            with self._guard:
                yield
        except BaseException as exc:
            if self._vote is not None:
                self._vote.abandon()  # a failed or preempted run: a peer may never complete the ballot in flight
            if isinstance(exc, Exception):
                self._save_after(exc)
            raise
        else:
            if self._vote is not None:
                self._vote.close()
        finally:
            root.observe(None)
            self._root = self._epoch_loop = self._guard.on_signal = self._vote = None
            self._observing = False

    def _observe(self) -> None:
        """Observe the whole tree while there is something to do: in one process a request or a signal, under DDP
        a request (a signal there waits for the vote at a batch end)."""
        if self._root is None or self._observing:
            return
        if self._vote is None:
            self._root.observe(self._at_boundary)
        elif self._pending:
            self._root.observe(self._at_boundary_ranks)
        else:
            return
        self._observing = True

    def _watch_batch_ends(self) -> None:
        """Under DDP with nothing to write: only the epoch loop's own boundaries, where the ranks vote.

        Its sub-loops' boundaries (the batch's and the step's, ten or so per
        step) are then not observed at all, as in one process.
        """
        assert self._root is not None
        self._root.observe(None)  # marks the loops below the root nested, as observe() does
        if self._epoch_loop is not None:
            self._epoch_loop.observe_alone(self._at_boundary_ranks)
        self._observing = False

    def _at_boundary(self, loop: Loop) -> None:
        self._act(preempt_here=True)
        if self._pending or self._guard.signum is not None or self._root is None:
            return  # not written yet (not checkpointable here): keep observing
        self._root.observe(None)  # all written: stop observing until the next request
        self._observing = False
        if self._guard.signum is not None:  # a signal arrived while we were stepping back: watch again
            self._observe()

    def _at_boundary_snapshotting(self, loop: Loop) -> None:
        if loop is self._epoch_loop and loop.between_transitions and self._checkpointable():
            self._snapshot = self._take_snapshot()  # type: ignore[misc]
        if self._pending or self._guard.signum is not None:
            self._act(preempt_here=True)

    def _save_after(self, exc: Exception) -> None:
        """``save_on_exception``: write the last batch boundary's copy, and say where in the exception's notes."""
        if self._write_snapshot is None or isinstance(exc, Preempted):
            return
        if self._snapshot is None:
            _note(exc, "save_on_exception: the fit failed before its first batch; there was no state to save.")
            return
        snapshot, self._snapshot = self._snapshot, None
        path = self._write_snapshot(snapshot)
        _note(exc, f"save_on_exception: the state before the failed batch was saved to {path}; fix the cause and "
                   "resume with trainer.fit(model, ckpt_path='latest') to re-run it exactly.")

    def _checkpointable(self) -> bool:
        return all(getattr(node, "checkpointable", True) for _, node in self._root.walk())

    def _at_boundary_ranks(self, loop: Loop) -> None:
        # With a fixed global batch only at step boundaries (the same batch ends on every rank): its checkpoint
        # can then resume at another world size (_elastic).
        if loop is self._epoch_loop and _between_batches(loop) and getattr(loop, "at_step_boundary", True):
            self._agree_on_preemption()  # raises Preempted on every rank at once
        if self._pending:
            self._act(preempt_here=False)  # a signal on one rank waits for the vote above
            if not self._pending and self._root is not None:
                self._watch_batch_ends()  # all written: back to the epoch loop alone

    def _act(self, preempt_here: bool) -> None:
        if not self._checkpointable():
            return  # e.g. between the yields of a generator step: wait for the step to end
        pending, self._pending = self._pending, []
        self._write_all(pending)
        if preempt_here and self._guard.signum is not None:
            self._preempt(self._guard.signum)

    def _agree_on_preemption(self) -> None:
        """Preempt on every rank at once if the vote says some rank was signalled (never blocking on it)."""
        if self._vote.at_batch_end(self._guard.signum is not None):
            # This boundary's requests first, as in one process: exit 75 leaves every requested checkpoint on disk.
            # (Skipped, ModelCheckpoint's top k in the preemption checkpoint named a file never written, and the
            # file it had dropped was never deleted: seen in a two-node run.)
            pending, self._pending = self._pending, []
            self._write_all(pending)
            self._preempt(self._guard.signum or signal.SIGTERM)

    def _preempt(self, signum: int) -> None:
        failure = self._flush() if self._flush is not None else None  # the write in flight first: all on disk
        if failure is not None:
            warnings.warn(f"{failure} (writing the preemption checkpoint anyway)", stacklevel=2)
        raise Preempted(signum, self._write(self._preemption_path()))

    def _write_all(self, requests: list[tuple[Path, Callable[[Path], None] | None, bool]]) -> None:
        """The synchronous requests one by one, then the asynchronous ones as one background write."""
        for path, on_written, async_save in requests:
            if not async_save:
                self._write_one(path, on_written)
        later = [(path, on_written) for path, on_written, async_save in requests if async_save]
        if later:
            self._write_async(later)  # type: ignore[misc]  # request() checked it is there

    def _write_one(self, path: Path, on_written: Callable[[Path], None] | None) -> None:
        written = self._write(path)
        if on_written is not None:
            on_written(written)


def _between_batches(loop: Loop) -> bool:
    """The epoch loop just finished a batch: the one boundary per step where ranks agree on preemption.

    Not the epoch's start (ADVANCE before its first batch), nor a boundary
    the loop reaches while still ``restarting`` (the one a resumed run starts
    at, or the end of the batch it resumed inside): a ballot there would time
    the run's setup as if it were a batch, and space the next ballots by that
    (up to 64 batches apart).  Every rank resumes at the same position, so
    all skip the same boundaries.
    """
    return (loop.between_transitions and loop.state == "ADVANCE" and loop.progress.current.ready > 0
            and not loop.restarting)


def _note(exc: BaseException, text: str) -> None:
    """Add ``text`` to the exception's notes (shown under its traceback; Python 3.11+), else warn it."""
    if hasattr(exc, "add_note"):
        exc.add_note(text)
    else:  # pragma: no cover - Python 3.10
        import warnings

        warnings.warn(text, stacklevel=3)
