"""Where a sharded checkpoint's tensors go in a live FSDP run: a template per name, with this run's sharding.

DCP reads a checkpoint's slices into tensors that already say how they are
split (a ``DTensor``'s mesh and placements).  A resumed run's parameters are
such tensors, but its optimizers have no state before their first step, so
the templates cannot be read off the live state dict alone.  Every sharded
tensor of a state set belongs to a parameter, though, and is split like it:

* ``module/<name>`` -- the module's state-dict entry ``<name>``;
* ``optimizers/<i>/state/<p>/<key>`` -- optimizer ``i``'s state for its
  ``p``-th parameter (``torch.optim``'s numbering: the parameters of its
  groups in order), shaped like that parameter;
* ``rank-local/grads/<name>`` -- parameter ``<name>``'s gradient.

So :func:`sharded_templates` makes an empty ``DTensor`` with the matching
parameter's mesh and placements for every name; at another world size that is
the new world's split, and DCP reshards.  Before the optimizers exist (a
resume reads its checkpoint before ``configure_optimizers``, as Lightning
does) an optimizer state takes the split of a parameter of its shape: under
``fully_shard`` every parameter of one shape is split the same way (dim 0
over the module's mesh).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .checkpoint._shards import RANK_PREFIX, Template, is_sharded

__all__ = ["sharded_templates"]


def sharded_templates(module: torch.nn.Module, optimizers: Sequence[Any] | None = None) -> Template:
    """The template function for a checkpoint of ``module`` and ``optimizers`` (None: not built yet; see the
    module docstring)."""
    entries = module.state_dict()
    parameters = dict(module.named_parameters())
    numbered = [[p for group in opt.param_groups for p in group["params"]] for opt in optimizers or ()]
    by_shape = {p.shape: p for p in reversed(list(parameters.values())) if is_sharded(p)}  # the first of each shape

    def reference(name: str) -> Any:
        parts = name.split("/")
        if parts[0] == "module":
            return entries.get(name[len("module/"):])
        if parts[0] == "optimizers" and len(parts) == 5 and parts[2] == "state":
            index, position = _int(parts[1]), _int(parts[3])
            if index is not None and position is not None and index < len(numbered) and \
                    position < len(numbered[index]):
                return numbered[index][position]
            return by_shape  # no optimizers yet: a parameter of the state's shape (looked up below)
        if name.startswith(RANK_PREFIX + "grads/"):
            return parameters.get(name[len(RANK_PREFIX + "grads/"):])
        return None

    def template(name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor | None:
        like = reference(name)
        if like is by_shape:
            like = by_shape.get(shape)
        if like is None or not is_sharded(like) or like.shape != shape:
            return None  # read whole; the checks that follow say what does not fit
        from torch.distributed.tensor import empty

        return empty(shape, dtype=dtype, device_mesh=like.device_mesh, placements=like.placements)

    return template


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None
