"""Lightning's tuner (``lightning.pytorch.tuner.Tuner``: ``lr_find``, ``scale_batch_size``) is not part of this library.

Ported code that imports it gets an ``UnsupportedError`` saying what to do
instead, not a bare ``ImportError``: the learning rate and the batch size are
the user's choices here (``configure_optimizers`` and the ``DataLoader``).
"""

from __future__ import annotations

from ._refused import refused_name

#: The tuner's names -> what to do instead.
TUNER_ADVICE: dict[str, str] = {
    "Tuner": "there is no tuner; pick the learning rate in configure_optimizers (e.g. from a sweep) and set the "
             "DataLoader's batch_size yourself",
    "lr_finder": "there is no learning-rate finder; pick the learning rate in configure_optimizers",
    "batch_size_scaling": "there is no batch-size finder; set the DataLoader's batch_size yourself",
}


def __getattr__(name: str):
    if name in TUNER_ADVICE:
        raise refused_name(__name__, name, TUNER_ADVICE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
