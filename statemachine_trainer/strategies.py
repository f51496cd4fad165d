"""Lightning's strategy classes (``lightning.pytorch.strategies``) are flags here: ``Trainer(strategy="ddp")``.

Ported code that imports one gets an ``UnsupportedError`` saying what to pass
instead, not a bare ``ImportError`` (the table: ``_refused.STRATEGY_ADVICE``).
"""

from __future__ import annotations

from ._refused import STRATEGY_ADVICE, refused_name


def __getattr__(name: str):
    if name in STRATEGY_ADVICE:
        raise refused_name(__name__, name, STRATEGY_ADVICE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
