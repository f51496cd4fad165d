"""Running the Trainer on several processes with torch.distributed (DDP), on PyTorch's own engine only.

Nothing here is a launcher, a collective or an all-reduce of our own; each
piece is a thin, checked layer over torch:

1. **Launcher environment** (``_env``).  ``torchrun`` -- or
   :func:`launch_workers`, which drives the same elastic agent from a plain
   ``python script.py`` -- starts each worker with RANK, WORLD_SIZE,
   LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
   :meth:`DistributedEnv.from_environ` reads them strictly; ``None`` means
   "not launched", which is how a parent tells itself from its workers
   (:func:`should_launch`).
2. **Join the group** (``_group``).  :func:`join_process_group`: gloo on
   CPU, NCCL on CUDA (one GPU per LOCAL_RANK), with a bounded timeout
   (:data:`DEFAULT_TIMEOUT`, or STATEMACHINE_TRAINER_DIST_TIMEOUT seconds) so a
   hung rank ends the job instead of stalling it; a dead peer surfaces as
   :class:`RankFailure`.
3. **DDP.**  The Trainer wraps the module in
   ``torch.nn.parallel.DistributedDataParallel``, which all-reduces gradients
   in backward.  The few other agreements the loops need are
   :class:`PreemptionVote` (preemption requested anywhere? decided at the same
   batch end everywhere, with about one collective per 0.2 s), :func:`all_equal` (same
   transition everywhere on resume?), :func:`broadcast_object` and
   :func:`reduce_tensor` (``self.log(..., sync_dist=True)``); all are
   identities without a process group, so single-process code calls them freely.

What is rank-local and what is replicated (promise 10: exact resume at the
same world size):

* **Replicated** -- equal on every rank by construction: parameters (DDP
  broadcasts rank 0's at wrap time, then every rank applies the same averaged
  gradients), optimizer and scheduler state, and the loop state set, since
  every rank crosses the same transitions in the same order.  Rank 0 writes them.
* **Rank-local** -- different per rank and saved per rank: RNG states (Python,
  NumPy, torch CPU and this rank's CUDA device), the data position of this
  rank's shard of the sampler, un-synced metric states and partial gradients
  inside an accumulation window.  Resuming at a different world size cannot
  be exact, because these shards do not exist there.
"""

from ._agreement import AnyRankOneCallLate, PreemptionVote
from ._collectives import (
    all_equal,
    all_gather_tensor,
    any_rank,
    barrier,
    broadcast_object,
    gather_objects,
    is_rank_zero,
    rank,
    reduce_tensor,
    world_size,
)
from ._env import LAUNCHER_VARIABLES, DistributedEnv
from ._group import (
    DEFAULT_TIMEOUT,
    TIMEOUT_VARIABLE,
    RankFailure,
    collective,
    default_timeout,
    join_process_group,
    leave_process_group,
)
from ._launch import launch_workers, should_launch

__all__ = [
    "DEFAULT_TIMEOUT",
    "LAUNCHER_VARIABLES",
    "TIMEOUT_VARIABLE",
    "AnyRankOneCallLate",
    "DistributedEnv",
    "PreemptionVote",
    "RankFailure",
    "all_equal",
    "all_gather_tensor",
    "any_rank",
    "barrier",
    "broadcast_object",
    "collective",
    "default_timeout",
    "gather_objects",
    "is_rank_zero",
    "join_process_group",
    "launch_workers",
    "leave_process_group",
    "rank",
    "reduce_tensor",
    "should_launch",
    "world_size",
]
