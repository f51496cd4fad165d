"""Lightning's strategy classes (``lightning.pytorch.strategies``): ``FSDPStrategy`` here, the others are flags.

``Trainer(strategy=FSDPStrategy(wrap={Block}, mixed_precision=...))`` is
``strategy="fsdp"`` with options (see :mod:`statemachine_trainer._fsdp`).
Ported code that imports another one (``DDPStrategy``: pass
``strategy="ddp"``) gets an ``UnsupportedError`` saying what to pass instead,
not a bare ``ImportError`` (the table: ``_refused.STRATEGY_ADVICE``).
"""

from __future__ import annotations

from ._fsdp import FSDPStrategy
from ._refused import STRATEGY_ADVICE, refused_name

__all__ = ["FSDPStrategy"]


def __getattr__(name: str):
    if name in STRATEGY_ADVICE:
        raise refused_name(__name__, name, STRATEGY_ADVICE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
