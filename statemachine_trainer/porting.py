"""Porting a Lightning program: the renames, as data, and the function that applies them.

A LightningModule program moves here by renaming its imports and two base
classes; everything else (hooks, ``self.log``, ``Trainer`` flags, callbacks)
keeps its Lightning name.  :data:`RENAMES` is that list, written once: README's
rename table is checked against it, ``statemachine-trainer port FILE`` applies
it, and the parity tests port real Lightning programs with it and compare
their runs with Lightning's, bit for bit.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["RENAMES", "Rename", "port_source"]


@attrs.frozen
class Rename:
    lightning: str  # what Lightning code says (a regular expression over the source)
    ours: str  # what it becomes (``re.sub`` replacement)
    why: str  # one line for README's table


RENAMES: tuple[Rename, ...] = (
    Rename(r"\bimport lightning\.pytorch as\b", "import statemachine_trainer as",
           "`import lightning.pytorch as pl`"),
    Rename(r"\bimport pytorch_lightning as\b", "import statemachine_trainer as", "`import pytorch_lightning as pl`"),
    Rename(r"\bimport lightning as\b", "import statemachine_trainer as", "`import lightning as L`"),
    Rename(r"\bfrom lightning\.pytorch\.core import\b", "from statemachine_trainer import",
           "`from lightning.pytorch.core import LightningModule`"),
    Rename(r"\bfrom lightning\.pytorch\b", "from statemachine_trainer", "`from lightning.pytorch[.x] import ...`"),
    Rename(r"\bfrom pytorch_lightning\b", "from statemachine_trainer", "`from pytorch_lightning[.x] import ...`"),
    Rename(r"\bfrom lightning import\b", "from statemachine_trainer import", "`from lightning import ...`"),
    Rename(r"\bLightningModule\b", "TrainingModule", "the module base class"),
    Rename(r"\bLightningDataModule\b", "DataModule", "the data module base class"),
)


def port_source(source: str) -> str:
    """``source`` with every rename of :data:`RENAMES` applied (a Lightning program becomes ours)."""
    for rename in RENAMES:
        source = re.sub(rename.lightning, rename.ours, source)
    return source
