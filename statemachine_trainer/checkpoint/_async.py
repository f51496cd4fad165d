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
import traceback
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._errors import AsyncWriteError
from ._hashing import DEFAULT_HASH
from ._host import HostCopier
from ._write import EncodedState, check_hash_name, encode_state, write_encoded

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

    @property
    def in_flight(self) -> bool:
        """Whether a background write is still running."""
        return self._thread is not None and self._thread.is_alive()

    def save(
        self,
        targets: Sequence[tuple[str | os.PathLike[str], Callable[[Path], None] | None]],
        state: Any,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Write ``state`` to every target path in the background; blocks for the previous write, encode and copy.

        Raises the previous write's failure (:class:`AsyncWriteError`) and
        anything ``encode`` refuses, before starting anything.
        """
        if not targets:
            return
        self.wait()
        paths = [(Path(path).absolute(), on_written) for path, on_written in targets]
        encoded = encode_state(paths[0][0], state, metadata)
        self.start(paths, encoded.with_tensors(self._copier.copy(encoded.tensors)))

    def start(self, targets: list[Target], encoded: EncodedState) -> None:
        """Write an already encoded state whose tensors nothing else changes (host copies) in the background."""
        self.wait()
        self._register_exit_hook()
        thread = threading.Thread(target=self._write, args=(targets, encoded), name="checkpoint-writer")
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
        """``wait``, then free the host buffers kept for the next save (a run's end: they hold a copy of its state)."""
        try:
            self.wait()
        finally:
            self._copier.release()

    def _write(self, targets: list[Target], encoded: EncodedState) -> None:
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
