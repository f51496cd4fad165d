"""``ModelSummary``: the module's layers, parameter counts and size, printed when a fit starts (Lightning's table).

``Trainer(enable_model_summary=True)`` (the default) adds one unless the
callbacks already hold a ``ModelSummary``.  The table goes to the
``statemachine_trainer`` logger (stderr unless the application configured
logging), on rank 0 only.
"""

from __future__ import annotations

from typing import Any

import torch

from .._console import info
from ._base import Callback

__all__ = ["ModelSummary", "summarize"]


def summarize(module: torch.nn.Module, max_depth: int = 1) -> dict[str, Any]:
    """The summary as data: one row per submodule down to ``max_depth``, and the totals.

    Parameters shared between submodules are counted once in the totals (as
    ``sum(p.numel() for p in module.parameters())`` does).  ``size_mb`` is
    what the parameters take in memory, at their own dtypes.
    """
    rows = []
    for name, sub in module.named_modules():
        depth = name.count(".") + 1
        if not name or depth > max_depth:
            continue
        params = sum(p.numel() for p in sub.parameters())
        rows.append({"name": name, "type": type(sub).__name__, "params": params,
                     "mode": "train" if sub.training else "eval"})
    parameters = list(module.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    size = sum(p.numel() * p.element_size() for p in parameters) / 1e6
    modes = [sub.training for _, sub in module.named_modules()]
    return {"rows": rows, "total": total, "trainable": trainable, "non_trainable": total - trainable,
            "size_mb": size, "train_modules": sum(modes), "eval_modules": len(modes) - sum(modes)}


def human_count(number: int) -> str:
    """123 -> "123", 1234 -> "1.2 K", 5_000_000 -> "5.0 M" (Lightning's abbreviations)."""
    for threshold, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if number >= threshold:
            return f"{number / threshold:,.1f} {suffix}"
    return str(number)


def format_summary(summary: dict[str, Any]) -> str:
    """Lightning's layout: a table of layers, then the totals, each number left-aligned in 10 columns."""
    header = ("", "Name", "Type", "Params", "Mode")
    table = [(str(i), row["name"], row["type"], human_count(row["params"]), row["mode"])
             for i, row in enumerate(summary["rows"])]
    widths = [max(len(cell) for cell in column) for column in zip(header, *table)]
    line = "-" * (sum(widths) + 3 * len(widths))
    out = [" | ".join(f"{cell:<{w}}" for cell, w in zip(header, widths)), line]
    out += [" | ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) for row in table]
    out.append(line)
    totals = ((human_count(summary["trainable"]), "Trainable params"),
              (human_count(summary["non_trainable"]), "Non-trainable params"),
              (human_count(summary["total"]), "Total params"),
              (f"{summary['size_mb']:,.3f}", "Total estimated model params size (MB)"),
              (str(summary["train_modules"]), "Modules in train mode"),
              (str(summary["eval_modules"]), "Modules in eval mode"))
    out += [f"{value:<10} {label}" for value, label in totals]
    return "\n".join(out)


class ModelSummary(Callback):
    """Print the module's layers down to ``max_depth`` (0: no table) at ``on_fit_start``, on rank 0.

    The last summary is kept as ``self.summary`` (the data, see
    :func:`summarize`) for code that wants the numbers.
    """

    def __init__(self, max_depth: int = 1) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            from .._optim import ConfigError

            raise ConfigError(f"ModelSummary(max_depth={max_depth!r}) must be an int >= -1 (-1: every layer; "
                              "0: no summary).")
        self.max_depth = max_depth
        self.summary: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        if not self.max_depth:
            return
        depth = self.max_depth if self.max_depth > 0 else 1 << 30
        self.summary = summarize(module, depth)
        if trainer.is_global_zero:
            info("\n" + format_summary(self.summary))
