"""``AsyncCheckpointWriter``: checkpoints written by a background thread while training goes on.

Theory of operation.  A synchronous save blocks training for the whole
encode, write, checksum, fsync, rename and manifest commit.  An asynchronous
save blocks it only for what must happen at the boundary:

1. wait for the previous asynchronous write, if one is still running (at
   most one is in flight: the host buffers are reused, and checkpoints are
   committed in the order they were asked for);
2. encode the state -- its JSON is final from here on -- and copy its tensors
   to host memory (``HostCopier``: pinned on CUDA, storage by storage, so the
   bytes written are those a synchronous save writes);
3. start one background thread that runs ``write_encoded`` -- the same
   steps 2-4 of ``_write`` as a synchronous save, then ``keep_last`` pruning
   -- for each target path, then each target's ``on_written``.

Optimizer state is copied later.  Of a model trained with Adam, two thirds
of the bytes are the optimizer's moments, and nothing changes them until the
optimizer's next ``step()`` -- a forward and a backward away.  So ``save``
can be given the optimizers (``until_step``; the Trainer passes its own): the
plain CPU tensors of their ``state`` are copied by the background thread
first, while training goes on, and every one of those optimizers waits for
that copy in a step pre-hook (``register_step_pre_hook``, which runs for
every ``step()`` of a ``torch.optim.Optimizer``, raw or wrapped).  The
pattern is torch's own asynchronous staging (stage in the background, wait
before the optimizer mutates).  Training is blocked for the rest of the
copy only (parameters, buffers, partial gradients: forward, backward and
user hooks may change those) -- and at the next step, for whatever of the
optimizer state's copy is not done by then.  What if something else changes
that state in place before the step?  Each deferred tensor's version counter
is read at the save and again after its copy: if it moved, the checkpoint is
not written and the failure says which tensor (a change through ``.data``,
which bypasses the counter, is not seen: do not change optimizer state
through ``.data`` between a save and the next step).

A kill at any moment is as safe as with a synchronous save: until the
background thread renames the temp directory into place, the checkpoint is a
hidden ``.<name>.tmp-<pid>`` that ``find_latest`` never considers, and the
checkpoints before it are untouched.

Failures are never lost: an exception in the background thread is kept and
raised as :class:`AsyncWriteError` (from the original) by the next ``save``
or ``wait``.  The process does not exit with a write in flight: the thread
is not a daemon, and a hook run when the interpreter shuts down -- before
``concurrent.futures`` stops the checksum helpers the write uses -- waits
for it and prints a failure nobody was left to raise to.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import AsyncWriteError
from ._hashing import DEFAULT_HASH
from ._host import HostCopier
from ._write import EncodedState, check_hash_name, encode_state, write_encoded

if TYPE_CHECKING:
    import torch

__all__ = ["AsyncCheckpointWriter"]

#: One target of a save: the checkpoint path, and what to call once it is committed (or None).
Target = tuple[Path, "Callable[[Path], None] | None"]


class AsyncCheckpointWriter:
    """Writes checkpoints in one background thread, one write at a time; see the module docstring.

    ``save`` returns once the state is encoded and copied; ``wait`` returns
    once the write in flight (if any) is committed, and raises its failure.
    ``on_written`` callbacks run in the background thread, after the commit.
    """

    def __init__(self, *, keep_last: int | None = None, hash_name: str = DEFAULT_HASH, durable: bool = True) -> None:
        check_hash_name(hash_name)
        self.keep_last, self.hash_name, self.durable = keep_last, hash_name, durable
        self._copier = HostCopier()
        self._thread: threading.Thread | None = None  # the write in flight, or the finished one not yet joined
        self._failure: tuple[Path, BaseException] | None = None  # set by the thread; raised once, by wait()
        self._exit_hook = False  # whether the interpreter-shutdown wait is registered (on the first save)
        self._staged: threading.Event | None = None  # set once the write in flight has copied what it deferred
        self._hooks: dict[int, Any] = {}  # id(optimizer) -> its step pre-hook's handle (removed by close)

    @property
    def in_flight(self) -> bool:
        """Whether a background write is still running."""
        return self._thread is not None and self._thread.is_alive()

    def save(
        self,
        targets: Sequence[tuple[str | os.PathLike[str], Callable[[Path], None] | None]],
        state: Any,
        metadata: dict[str, Any] | None = None,
        *,
        until_step: Sequence[torch.optim.Optimizer] = (),
    ) -> None:
        """Write ``state`` to every target path in the background; blocks for the previous write, encode and copy.

        ``until_step``: optimizers whose ``state`` tensors may be copied after
        this returns, until each one's next ``step()`` (which waits for that
        copy); see the module docstring.  Raises the previous write's failure
        (:class:`AsyncWriteError`) and anything ``encode`` refuses, before
        starting anything.
        """
        if not targets:
            return
        self.wait()
        paths = [(Path(path).absolute(), on_written) for path, on_written in targets]
        encoded = encode_state(paths[0][0], state, metadata)
        deferred = _deferrable(encoded.tensors, until_step)
        host = self._copier.copy(encoded.tensors, later={t.untyped_storage()._cdata for _, t, _ in deferred})
        if deferred:
            self._hook(until_step)
        self.start(paths, encoded.with_tensors(host), deferred)

    def start(self, targets: list[Target], encoded: EncodedState, deferred: Sequence[Deferred] = ()) -> None:
        """Write an already encoded state whose tensors nothing else changes (host copies) in the background;
        ``deferred``: the tensors whose copy the copier left for later, checked after it (``save``)."""
        self.wait()
        self._register_exit_hook()
        self._staged = threading.Event() if deferred else None
        thread = threading.Thread(target=self._write, args=(targets, encoded, deferred), name="checkpoint-writer")
        self._thread = thread
        thread.start()

    def wait(self) -> None:
        """Block until the write in flight is committed; raise :class:`AsyncWriteError` if it (or an unreported
        earlier one) failed."""
        thread = self._thread
        if thread is not None:
            if thread is threading.current_thread():
                raise RuntimeError(
                    "An on_written callback of an asynchronous checkpoint cannot save or wait for a "
                    "checkpoint: it runs in the writer thread. Request the save from a hook instead."
                )
            thread.join()
            self._thread = None
        if self._failure is not None:
            (path, error), self._failure = self._failure, None
            raise AsyncWriteError(
                f"The asynchronous write of checkpoint {path} failed: {type(error).__name__}: "
                f"{error}. That checkpoint was not written (the ones before it are intact); "
                "fix the cause (disk space, permissions) or save synchronously."
            ) from error

    def close(self) -> None:
        """``wait``, then free the host buffers kept for the next save (a run's end: they hold a copy of its state)
        and remove the step pre-hooks from the optimizers."""
        try:
            self.wait()
        finally:
            self._copier.release()
            for handle in self._hooks.values():
                handle.remove()
            self._hooks = {}

    def _hook(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """A step pre-hook on each optimizer not hooked yet: kept until ``close`` (a hook that removed itself
        would change the dict torch is iterating)."""
        for optimizer in optimizers:
            if id(optimizer) not in self._hooks:
                self._hooks[id(optimizer)] = optimizer.register_step_pre_hook(self._before_step)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """An optimizer is about to change its state: wait until the write in flight has copied it."""
        staged = self._staged
        if staged is not None:
            staged.wait()

    def _write(self, targets: list[Target], encoded: EncodedState, deferred: Sequence[Deferred] = ()) -> None:
        # Hand the GIL back first: ``start`` returns (training resumes) as soon as this thread has started, instead
        # of waiting up to the interpreter's switch interval (5 ms) for this thread's Python work to pause.
        time.sleep(0)
        staged = self._staged
        if staged is not None:
            try:
                self._copier.finish()
                _check_unchanged(deferred)
            except BaseException as exc:  # noqa: BLE001 - kept for wait(), as a failed write is
                self._failure = (targets[0][0], exc)
                return
            finally:
                staged.set()  # the optimizers may step: their state is copied (or the write has failed)
        for path, on_written in targets:
            try:
                write_encoded(path, encoded, self.keep_last, self.hash_name, self.durable)
                if on_written is not None:
                    on_written(path)
            except BaseException as exc:  # noqa: BLE001 - kept for wait(): nobody can catch it in this thread
                self._failure = (path, exc)
                return

    def _register_exit_hook(self) -> None:
        if self._exit_hook:
            return
        self._exit_hook = True
        ref, pid = weakref.ref(self), os.getpid()

        def at_exit() -> None:
            writer = ref()
            if writer is not None and os.getpid() == pid:  # not in a forked child (a dataloader worker)
                writer._wait_at_exit()

        # Run as the interpreter shuts down, before it joins non-daemon threads, in reverse order of
        # registration: so before concurrent.futures (registered at import) stops the checksum helpers.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(at_exit)
        else:  # pragma: no cover - CPython < 3.9
            import atexit

            atexit.register(at_exit)

    def _wait_at_exit(self) -> None:
        try:
            self.wait()
        except AsyncWriteError as exc:
            print(f"statemachine_trainer: {exc}", file=sys.stderr)
            traceback.print_exception(type(exc.__cause__), exc.__cause__, exc.__cause__.__traceback__)


#: A tensor whose copy is deferred: its name in the checkpoint, the tensor, its version counter at the save.
Deferred = tuple[str, "torch.Tensor", int]


def _deferrable(tensors: dict[str, torch.Tensor], optimizers: Sequence[Any]) -> list[Deferred]:
    """The tensors of ``tensors`` that only ``optimizers``' next ``step()`` changes, with their versions: those over
    the storage of a plain CPU tensor of the optimizers' ``state`` that no other tensor of the checkpoint shares.

    By storage, not by object: the checkpoint holds detached tensors (which share the version counter too).
    """
    import torch

    if not optimizers:
        return []
    owned = {value.untyped_storage()._cdata for optimizer in optimizers if isinstance(optimizer, torch.optim.Optimizer)
             for per_param in optimizer.state.values() for value in per_param.values()
             if type(value) is torch.Tensor and value.device.type == "cpu" and not value.is_inference()}
    deferred, others = [], set()
    for name, tensor in tensors.items():
        storage = None if tensor.device.type == "meta" else tensor.untyped_storage()._cdata
        if storage in owned and type(tensor) is torch.Tensor:
            deferred.append((name, tensor, tensor._version))
        else:
            others.add(storage)
    return [entry for entry in deferred if entry[1].untyped_storage()._cdata not in others]


def _check_unchanged(deferred: Sequence[Deferred]) -> None:
    """Refuse a copy of optimizer state that something changed in place between the save and the copy."""
    for name, tensor, version in deferred:
        if tensor._version != version:
            raise RuntimeError(
                f"optimizer state {name!r} was changed in place after the asynchronous save was asked for and "
                "before the optimizer's next step(), while the save was still copying it, so the copy may not be "
                "the state at the save. Change optimizer state only in step() (or after it), or save "
                "synchronously.")
