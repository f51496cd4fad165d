"""Lightning's module path ``lightning.pytorch.callbacks.model_checkpoint``, so ported imports of it keep working."""

from .checkpoint import ModelCheckpoint

__all__ = ["ModelCheckpoint"]
