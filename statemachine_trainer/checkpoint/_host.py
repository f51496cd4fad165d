"""``HostCopier``: a checkpoint's tensors copied to host memory, so they can be written while training goes on.

An asynchronous save must not write the live tensors: the next optimizer
step changes them in place while the background thread is still writing.
So at the boundary the tensors are copied once, and the copy is written.

The copy is made *storage by storage*, as ``torch.save`` sees the tensors:
every distinct storage is copied once into a flat byte buffer, and each tensor
is rebuilt over its storage's copy with the same offset, size and stride.
Views and tensors sharing a storage (tied weights) keep sharing it, so
``torch.save`` of the copy writes the same bytes as of the originals -- an
asynchronous checkpoint is byte-identical to a synchronous one (on CUDA the
stored device tag reads ``cpu``; the tensors load onto ``map_location`` as ever).

On CUDA the buffers are pinned (page-locked), so the device-to-host copies
are DMA transfers issued together and waited for once.  On the CPU the copy
is a memcpy bound by memory bandwidth, which one core does not saturate: the
storages are cut into pieces of ``PIECE_BYTES`` and copied by a few threads
(``copy_`` releases the GIL), since training is paused for exactly this long
-- it is what an asynchronous save blocks for.  Buffers are kept and
reused by the next copy when the storages' sizes are the same (the usual
case: the same model and optimizer at every save), so pinned memory is
allocated once per run, not per save (``release`` frees them when the run ends).  The caller must not copy again while
a write of the previous copy is still running (``AsyncCheckpointWriter``
waits for it first).

Some CPU storages can be copied *later*, while training goes on: those
``copy`` is told nothing changes until a known moment (an optimizer's state
until its next ``step()``, ``AsyncCheckpointWriter``).  Their buffers are
allocated and the rebuilt tensors handed out at once; ``finish`` fills them,
in whatever thread calls it, before anyone reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["HostCopier"]

#: CPU copies are cut into pieces of this size (a few per thread for the big storages; small ones stay whole).
PIECE_BYTES = 8 << 20
#: Threads for CPU copies.  Not the core count: a memcpy waits on memory, not the CPU, and more copies in flight
#: keep more requests outstanding (on a 2-core VM, 288 MiB took 38 ms with 1 thread, 32 with 2, 27 with 4).
COPY_THREADS = 4


class HostCopier:
    """Copies ``{name: tensor}`` into host buffers it keeps for the next copy of storages of the same sizes."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []  # uint8 host buffers, one per distinct storage of the last copy
        self._threads: ThreadPoolExecutor | None = None  # CPU copy workers, started at the first CPU copy
        self._later: list[tuple[torch.Tensor, torch.Tensor]] = []  # (buffer, source) pairs ``finish`` copies

    def copy(self, tensors: dict[str, torch.Tensor], later: AbstractSet[int] = frozenset()) -> dict[str, torch.Tensor]:
        """``tensors`` with every plain tensor rebuilt over a host copy of its storage (others cloned to host).

        CPU storages whose ``_cdata`` is in ``later`` are not copied yet: ``finish`` copies them, and until then
        the tensors rebuilt over them hold garbage.
        """
        storages = _distinct_storages(t for t in tensors.values() if _plain(t))
        buffers = self._buffers_for(list(storages.values()))
        on_cpu, self._later = [], []
        for (key, storage), buffer in zip(storages.items(), buffers):
            source = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
            if buffer.is_pinned():
                buffer.copy_(source, non_blocking=True)
            else:
                (self._later if key in later else on_cpu).append((buffer, source))
        self._copy_on_cpu(on_cpu)
        for device in {storage.device for storage in storages.values() if _pin(storage)}:
            torch.cuda.synchronize(device)  # the non-blocking copies above are all issued; the write needs them done
        host = dict(zip(storages, (buffer.untyped_storage() for buffer in buffers)))
        return {name: _rebuilt(t, host) for name, t in tensors.items()}

    def finish(self) -> None:
        """Copy the storages the last ``copy`` left for later (nothing if it left none).

        In the calling thread, piece by piece, not over the copy threads: this copy runs beside training (it has a
        forward and a backward to finish before anyone waits for it), so it takes one core, not all of them (a
        training step beside it: +40-47 ms against +50-55 ms over 4 threads, ``benchmarks/checkpoint.py``).
        """
        pairs, self._later = self._later, []
        self._copy_on_cpu(pairs, alone=True)

    def release(self) -> None:
        """Free the kept buffers (the next copy allocates new ones) and stop the copy threads."""
        self._buffers = []
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    def _copy_on_cpu(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], alone: bool = False) -> None:
        """Copy each (buffer, source) pair, in pieces spread over ``COPY_THREADS`` threads when that can help
        (``alone``: in the calling thread only)."""
        pieces = list(_pieces(pairs))
        if alone or COPY_THREADS == 1 or len(pieces) < 2:
            for target, source in pieces:
                target.copy_(source)
            return
        if self._threads is None:
            self._threads = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="checkpoint-host-copy")
        for done in self._threads.map(lambda piece: piece[0].copy_(piece[1]), pieces):
            del done  # map re-raises a failed copy here

    def _buffers_for(self, storages: list[torch.UntypedStorage]) -> list[torch.Tensor]:
        """The kept buffers when they fit these storages exactly (sizes and pinning), else new ones, kept."""
        wanted = [(s.nbytes(), _pin(s)) for s in storages]
        if [(b.numel(), b.is_pinned()) for b in self._buffers] != wanted:
            self._buffers = []  # freed before the new ones are allocated: host memory holds one set at a time
            self._buffers = [torch.empty(size, dtype=torch.uint8, pin_memory=pin) for size, pin in wanted]
        return self._buffers


def _pieces(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each (buffer, source) pair of flat uint8 tensors as slices of at most ``PIECE_BYTES``."""
    for buffer, source in pairs:
        for start in range(0, buffer.numel(), PIECE_BYTES):
            yield buffer[start:start + PIECE_BYTES], source[start:start + PIECE_BYTES]


def _distinct_storages(tensors: Iterable[torch.Tensor]) -> dict[int, torch.UntypedStorage]:
    """Each storage once, keyed by its identity as ``torch.save`` keys it (views and tied weights share one)."""
    storages: dict[int, torch.UntypedStorage] = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages.setdefault(storage._cdata, storage)
    return storages


def _rebuilt(t: torch.Tensor, host: dict[int, torch.UntypedStorage]) -> torch.Tensor:
    """``t`` over its storage's host copy, at the same offset, size and stride."""
    if not _plain(t):  # quantized, conjugated, subclassed or meta: torch.save stores each its own way
        return t if t.device.type == "meta" else t.detach().to("cpu", copy=True)
    storage = host[t.untyped_storage()._cdata]
    return torch.empty(0, dtype=t.dtype).set_(storage, t.storage_offset(), t.size(), t.stride())


def _plain(t: torch.Tensor) -> bool:
    """A tensor ``torch.save`` stores as its storage plus offset, size and stride (almost all of them)."""
    return (
        type(t) is torch.Tensor
        and not t.is_quantized
        and not t.is_conj()
        and not t.is_neg()
        and t.device.type != "meta"
    )


def _pin(storage: torch.UntypedStorage) -> bool:
    """Whether a storage's host buffer is pinned: for copies from CUDA, which then run as one batch of DMAs."""
    return storage.device.type == "cuda"
