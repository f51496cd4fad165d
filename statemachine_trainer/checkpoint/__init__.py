"""Checkpoints: the state set on disk, atomic, checksummed, and never unpickling code.

A checkpoint is a directory::

    epoch=3-step=120/
        state.json     every non-tensor value, indented JSON (see ``_codec`` for its markers)
        tensors.pt     one torch.save of a flat {name: tensor} dict, loaded with weights_only=True
        manifest.json  written last: format and schema versions, each file's size and checksum, metadata

``save_checkpoint_dir`` writes one atomically; ``load_checkpoint_dir`` checks
it before reading it; ``find_latest`` / ``load_latest`` pick the newest valid
one and say which newer ones they skipped and why.

A multi-process (DDP) run calls ``save_checkpoint_parts`` on every rank: the
replicated state is written once, beside one ``rank-<r>/`` directory per rank
(its RNG states, data position, ...), and rank 0 writes the manifest -- with
the ``world_size`` -- only after every part is on disk.  Each rank reads its
part back with ``load_checkpoint_parts`` / ``load_latest_parts``; another world
size is refused with :class:`WorldSizeError`.  See ``_parts`` for the protocol.

An :class:`AsyncCheckpointWriter` writes in a background thread: the caller
blocks only to encode the state and copy its tensors to host memory; a failed
write is raised as :class:`AsyncWriteError` at the next save or wait.
"""

from ._async import AsyncCheckpointWriter
from ._codec import decode, encode
from ._errors import AsyncWriteError, CheckpointError, WorldSizeError
from ._fsops import wait_for_removals
from ._hashing import DEFAULT_HASH, HASHES
from ._inspect import compare_checkpoints, diff_checkpoints, first_difference, summarize
from ._latest import find_latest, load_latest, prune, remove_checkpoint
from ._manifest import FORMAT, FORMAT_VERSION, PARTS_FORMAT_VERSION, read_manifest
from ._module_state import load_module_state
from ._parts import load_checkpoint_parts, load_latest_parts, save_checkpoint_parts
from ._read import load_checkpoint_dir, verify_checkpoint
from ._rng import capture_rng, restore_rng
from ._spare import release_spares
from ._write import save_checkpoint_dir

__all__ = [
    "DEFAULT_HASH",
    "FORMAT",
    "FORMAT_VERSION",
    "HASHES",
    "PARTS_FORMAT_VERSION",
    "AsyncCheckpointWriter",
    "AsyncWriteError",
    "CheckpointError",
    "WorldSizeError",
    "capture_rng",
    "compare_checkpoints",
    "decode",
    "diff_checkpoints",
    "encode",
    "find_latest",
    "first_difference",
    "load_checkpoint_dir",
    "load_checkpoint_parts",
    "load_latest",
    "load_latest_parts",
    "load_module_state",
    "prune",
    "read_manifest",
    "release_spares",
    "remove_checkpoint",
    "restore_rng",
    "save_checkpoint_dir",
    "save_checkpoint_parts",
    "summarize",
    "verify_checkpoint",
    "wait_for_removals",
]
