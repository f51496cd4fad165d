"""The module's weights (and stored hyperparameters) from any checkpoint directory, for inference and
``TrainingModule.load_from_checkpoint``.

Only the shared top-level part is read -- it holds the module in single- and
multi-process checkpoints alike -- after its files are checked against the
manifest, so a damaged checkpoint is refused before anything is returned.
In a sharded (FSDP) checkpoint only the module's shards are read, each whole:
``statemachine-trainer consolidate`` writes them as one ``state_dict`` file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ._errors import CheckpointError
from ._manifest import is_sharded_manifest, read_manifest
from ._read import decode_part, load_part, read_part, shard_index, tensors_of_part
from ._shards import load_shards

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
    manifest = read_manifest(path)
    state = _module_part(path, manifest, map_location) if is_sharded_manifest(manifest) else load_part(
        path, "", manifest, map_location)
    if not isinstance(state, dict) or not isinstance(state.get("module"), dict):
        raise CheckpointError(f"{path} holds no module state ($.module); it was not written by a Trainer.")
    for key, value in state["module"].items():  # a module's state_dict: tensors, and _extra_state entries
        if not isinstance(key, str) or not (isinstance(value, torch.Tensor) or key.endswith("_extra_state")):
            raise CheckpointError(f"{path}: $.module[{key!r}] is a {type(value).__name__}, not a tensor; the state "
                                  "file was edited or damaged. Use an earlier checkpoint.")
    if not with_hparams:
        return state["module"]
    hparams = state.get("hparams", _NO_HPARAMS)
    if not (isinstance(hparams, dict) and set(hparams) == {"values", "omitted"} and isinstance(
            hparams["values"], dict) and isinstance(hparams["omitted"], list)):
        raise CheckpointError(f"{path}: $.hparams is not {{'values': {{...}}, 'omitted': [...]}}; the state file was "
                              "edited or damaged. Use an earlier checkpoint.")
    return state["module"], hparams


def _module_part(path: Path, manifest: dict[str, Any], map_location: Any) -> Any:
    """The top-level state of a sharded checkpoint with the module's shards read whole and the other sharded
    tensors (optimizer states) as meta tensors of their shapes: checked and decoded, but not read."""
    data, tensors = read_part(path, "", manifest, map_location)
    index = shard_index(path, manifest)
    module = load_shards(path, index, select=lambda name: name.startswith("module/"))
    others = {name: torch.empty(shape, dtype=dtype, device="meta") for name, (shape, dtype) in index.tensors.items()
              if name not in module}
    return decode_part(path, "", data, tensors_of_part("", tensors, {**others, **module}))
