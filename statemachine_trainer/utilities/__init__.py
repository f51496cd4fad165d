"""What ported Lightning code imports from ``lightning.pytorch.utilities``: rank-zero helpers and types.

``rank_zero_only`` runs a function on the global rank 0 process only (the
rank comes from the launcher's environment at import, and the Trainer sets
it again when a distributed run starts); ``rank_zero_info`` / ``rank_zero_warn``
log or warn once per job instead of once per process.  The type aliases live
in :mod:`statemachine_trainer.utilities.types`; ``grad_norm`` gives the
gradient norms to log, keyed as Lightning's.
"""

from ._grad_norm import grad_norm
from ._rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

__all__ = ["grad_norm", "rank_zero_info", "rank_zero_only", "rank_zero_warn"]
