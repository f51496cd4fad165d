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
are DMA transfers issued together and waited for once.  Buffers are kept and
reused by the next copy when the storages' sizes are the same (the usual
case: the same model and optimizer at every save), so pinned memory is
allocated once per run, not per save (``release`` frees them when the run ends).  The caller must not copy again while
a write of the previous copy is still running (``AsyncCheckpointWriter``
waits for it first).
"""

from __future__ import annotations

import torch

__all__ = ["HostCopier"]


class HostCopier:
    """Copies ``{name: tensor}`` into host buffers it keeps for the next copy of storages of the same sizes."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []  # uint8 host buffers, one per distinct storage of the last copy

    def copy(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` with every plain tensor rebuilt over a host copy of its storage (others cloned to host)."""
        plain = {name: t for name, t in tensors.items() if _plain(t)}
        index: dict[int, int] = {}  # storage identity (as torch.save keys it) -> its position in `storages`
        storages: list[torch.UntypedStorage] = []
        for t in plain.values():
            storage = t.untyped_storage()
            if storage._cdata not in index:
                index[storage._cdata] = len(storages)
                storages.append(storage)
        buffers = self._buffers_for(storages)
        for storage, buffer in zip(storages, buffers):
            source = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
            buffer.copy_(source, non_blocking=buffer.is_pinned())
        if any(buffer.is_pinned() for buffer in buffers):
            torch.cuda.synchronize()  # the non-blocking copies above are all issued; the write needs them done
        out: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if name not in plain:  # quantized, conjugated, subclassed or meta: torch.save stores each its own way
                out[name] = t if t.device.type == "meta" else t.detach().to("cpu", copy=True)
                continue
            host = buffers[index[t.untyped_storage()._cdata]].untyped_storage()
            out[name] = torch.empty(0, dtype=t.dtype).set_(host, t.storage_offset(), t.size(), t.stride())
        return out

    def release(self) -> None:
        """Free the kept buffers (the next copy allocates new ones)."""
        self._buffers = []

    def _buffers_for(self, storages: list[torch.UntypedStorage]) -> list[torch.Tensor]:
        """The kept buffers when they fit these storages exactly (sizes and pinning), else new ones, kept."""
        wanted = [(s.nbytes(), _pin(s)) for s in storages]
        if [(b.numel(), b.is_pinned()) for b in self._buffers] != wanted:
            self._buffers = []  # freed before the new ones are allocated: host memory holds one set at a time
            self._buffers = [torch.empty(size, dtype=torch.uint8, pin_memory=pin) for size, pin in wanted]
        return self._buffers


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
