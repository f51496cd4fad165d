"""``grad_norm``: the gradient norms Lightning users log from ``on_before_optimizer_step``."""

from __future__ import annotations

import torch

__all__ = ["grad_norm"]


def grad_norm(module: torch.nn.Module, norm_type: float | str, group_separator: str = "/") -> dict[str, float]:
    """Each parameter's gradient norm and the total, keyed as Lightning's ``grad_norm``.

    ``{"grad_2.0_norm/layer.weight": ..., "grad_2.0_norm_total": ...}`` for
    ``norm_type=2`` (``"inf"`` for the max norm); parameters without a
    gradient are left out, and so is the total when none has one.  The values
    are tensors (log them with ``self.log_dict``: no host sync here).
    """
    norm = float(norm_type)
    if norm <= 0:
        raise ValueError(f"grad_norm(norm_type={norm_type!r}) must be a positive number or 'inf'.")
    norms = {f"grad_{norm}_norm{group_separator}{name}": torch.linalg.vector_norm(p.grad.detach(), norm)
             for name, p in module.named_parameters() if p.grad is not None}
    if norms:
        norms[f"grad_{norm}_norm_total"] = torch.linalg.vector_norm(torch.stack(list(norms.values())), norm)
    return norms
