"""Checkpoints: the state set on disk, atomic, checksummed, and never unpickling code.

A checkpoint is a directory::

    epoch=3-step=120/
        state.json     every non-tensor value, indented JSON (see ``_codec`` for its markers)
        tensors.pt     one torch.save of a flat {name: tensor} dict, loaded with weights_only=True
        manifest.json  written last: format and schema versions, each file's size and checksum, metadata

``save_checkpoint_dir`` writes one atomically; ``load_checkpoint_dir`` checks
it before reading it; ``find_latest`` / ``load_latest`` pick the newest valid
one and say which newer ones they skipped and why.
"""

from ._codec import decode, encode
from ._errors import CheckpointError
from ._hashing import DEFAULT_HASH, HASHES
from ._inspect import first_difference, summarize
from ._latest import find_latest, load_latest, prune
from ._manifest import FORMAT, FORMAT_VERSION, read_manifest
from ._read import load_checkpoint_dir, verify_checkpoint
from ._rng import capture_rng, restore_rng
from ._write import save_checkpoint_dir

__all__ = [
    "DEFAULT_HASH",
    "FORMAT",
    "FORMAT_VERSION",
    "HASHES",
    "CheckpointError",
    "capture_rng",
    "decode",
    "encode",
    "find_latest",
    "first_difference",
    "load_checkpoint_dir",
    "load_latest",
    "prune",
    "read_manifest",
    "restore_rng",
    "save_checkpoint_dir",
    "summarize",
    "verify_checkpoint",
]
