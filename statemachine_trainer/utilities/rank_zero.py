"""Lightning's module path ``lightning.pytorch.utilities.rank_zero``, so ported imports of it keep working."""

from ._rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

__all__ = ["rank_zero_info", "rank_zero_only", "rank_zero_warn"]
