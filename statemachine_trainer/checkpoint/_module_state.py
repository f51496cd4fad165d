"""The module's weights (and stored hyperparameters) from any checkpoint directory, for inference and
``TrainingModule.load_from_checkpoint``.

Only the shared top-level part is read -- it holds the module in single- and
multi-process checkpoints alike -- after its files are checked against the
manifest, so a damaged checkpoint is refused before anything is returned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._errors import CheckpointError
from ._manifest import read_manifest
from ._read import load_part

__all__ = ["load_module_state"]

_NO_HPARAMS = {"values": {}, "omitted": []}


def load_module_state(path: str | os.PathLike[str], map_location: Any = None, with_hparams: bool = False) -> Any:
    """The module's ``state_dict`` stored in checkpoint ``path`` (with ``with_hparams``: ``(state_dict, hparams)``).

    ``hparams`` is ``{"values": {...}, "omitted": [names not JSON-able]}``;
    a checkpoint written before hyperparameters were stored has none.  For
    inference without this package afterwards:
    ``torch.save(load_module_state(path), "model.pt")``.
    """
    path = Path(path)
    state = load_part(path, "", read_manifest(path), map_location)
    if not isinstance(state, dict) or not isinstance(state.get("module"), dict):
        raise CheckpointError(f"{path} holds no module state ($.module); it was not written by a Trainer.")
    if not with_hparams:
        return state["module"]
    return state["module"], state.get("hparams", _NO_HPARAMS)
