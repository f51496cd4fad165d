"""``Precision``: autocast and loss scaling, chosen once from the ``precision`` flag.

``"32"`` does nothing.  ``"bf16-mixed"`` runs steps under ``torch.autocast``
with bfloat16 (CPU or CUDA); bfloat16 has float32's range, so no scaler.
``"16-mixed"`` (CUDA only) uses float16 autocast and a ``GradScaler``: losses
are scaled before backward, gradients unscaled before clipping, and a step
with inf/NaN gradients is skipped by the scaler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from ._optim import ConfigError

__all__ = ["PRECISIONS", "Precision"]

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
#: Lightning's other spellings of the same three (``precision=16`` is ``"16-mixed"`` there too).
ALIASES = {"32-true": "32", "16": "16-mixed", "bf16": "bf16-mixed"}
#: Ours -> Lightning 2's name (what ``trainer.precision`` reads as).
LIGHTNING_NAMES = {"32": "32-true"}
_NO_AUTOCAST = contextlib.nullcontext()  # reusable and stateless: one for every full-precision step


class Precision(str):
    """The ``precision`` flag's parts; the object is also Lightning's name for it (a ``str``: ``trainer.precision
    == "32-true"``, ``"bf16-mixed"``, ``"16-mixed"``), so ported code that reads or compares it keeps working."""

    def __new__(cls, precision: str | int, device: torch.device) -> Precision:  # noqa: PYI034
        name = _checked(precision, device)
        return super().__new__(cls, LIGHTNING_NAMES.get(name, name))

    def __init__(self, precision: str | int, device: torch.device) -> None:
        precision = _checked(precision, device)
        self.precision = precision  # our name: one of PRECISIONS
        self.device = device
        self.scaler = torch.amp.GradScaler("cuda") if precision == "16-mixed" else None
        self._dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        #: Whether ``autocast()`` does anything: the hot path skips entering an empty context when not.
        self.autocasts = self._dtype is not None
        self._unscaled: set[int] = set()

    def __getnewargs__(self) -> tuple[str, torch.device]:  # type: ignore[override]
        # copy and pickle rebuild it through __new__, which needs the flag and the device
        return self.precision, self.device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._dtype is None:
            return _NO_AUTOCAST
        return torch.autocast(self.device.type, dtype=self._dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate: scaled by the GradScaler under 16-mixed, else itself."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(*args, **kwargs)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true size before clipping (a no-op without a scaler)."""
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        if self.scaler is None:
            return optimizer.step() if closure is None else optimizer.step(closure)
        if closure is not None:
            closure()  # GradScaler cannot pass a closure to step(); evaluate it first
        result = self.scaler.step(optimizer)
        self.scaler.update()
        self._unscaled.discard(id(optimizer))
        return result

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _checked(precision: str | int, device: torch.device) -> str:
    """``precision`` as one of :data:`PRECISIONS` (Lightning's aliases resolved), or ConfigError."""
    name = ALIASES.get(str(precision), str(precision))
    if isinstance(precision, bool) or name not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not supported; use one of {', '.join(PRECISIONS)} (or "
                          f"Lightning's aliases {', '.join(map(repr, ALIASES))}, 16 and 32).")
    if name == "16-mixed" and device.type != "cuda":
        raise ConfigError("precision='16-mixed' needs a CUDA device (float16 autocast with a GradScaler); on CPU "
                          "use precision='bf16-mixed' or '32'.")
    return name
