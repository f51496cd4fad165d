"""What ported Lightning code imports from ``lightning.pytorch.utilities``: rank-zero helpers and types.

``rank_zero_only`` runs a function on the global rank 0 process only (the
rank comes from the launcher's environment at import, and the Trainer sets
it again when a distributed run starts); ``rank_zero_info`` / ``rank_zero_warn``
log or warn once per job instead of once per process.  The type aliases live
in :mod:`statemachine_trainer.utilities.types`.
"""

from ._rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

__all__ = ["rank_zero_info", "rank_zero_only", "rank_zero_warn"]
