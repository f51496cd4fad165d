"""Strategies: how many processes a run spans, and what that changes for the Trainer.

``SingleProcess`` is the default and changes nothing.  ``DDP`` runs one
process per device under ``torch.distributed``:

* **launch** -- under ``torchrun`` the launcher's environment says who we
  are; from a plain ``python script.py`` with ``devices=N`` the process
  becomes torch's elastic agent, re-runs the script in N workers and exits
  with their status (it never trains itself).  Several nodes
  (``num_nodes``) need torchrun on each, whose world must be ``num_nodes *
  devices`` processes;
* **the step** -- DDP's contract is one backward per forward through the
  wrapper.  With automatic optimization and one optimizer, ``training_step``
  *is* that forward (a thin ``nn.Module`` whose ``forward`` runs the step) and
  DDP all-reduces the gradients in the backward.  Where a step runs several
  backwards -- several optimizers, a generator step, manual optimization --
  each loss passes through DDP's forward just before its backward (the
  *loss gate*, :meth:`DDP.gate`): DDP then finds, from that loss's graph,
  which parameters it reaches, all-reduces their gradients in that backward
  and leaves the others' gradients alone (``find_unused_parameters``).  So
  every optimizer steps on gradients averaged over the ranks, whatever order
  the step runs its backwards in.  Inside a gradient-accumulation window
  ``no_sync()`` keeps the micro-batches local and only the window's last
  backward all-reduces;
* **data** -- every training and validation loader is sharded (a
  :class:`~statemachine_trainer.data.ResumableLoader` with this rank's part of
  the seeded permutation, DistributedSampler's padding rule);
* **agreement** -- what must be the same on every rank is made so without a
  collective per step.  The preemption flag is voted on at batch ends about
  every 0.2 s (:class:`~statemachine_trainer.distributed.PreemptionVote`): a
  non-blocking all-reduce read one ballot later, so every rank acts on it at
  the same boundary and no step waits on it;
* **a world of one** (``devices=1``, or torchrun with one process) keeps the
  process group, the sharded loader and the per-rank checkpoint format, but
  neither wraps the module in DDP (nothing to all-reduce, see
  :meth:`DDP.wrap_step`) nor votes: nothing of this runs per step that
  ``strategy="auto"`` would not run.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ._optim import ConfigError

__all__ = ["DDP", "SingleProcess", "launched_rank_zero", "resolve_devices"]


def identity_gate(loss: torch.Tensor) -> torch.Tensor:
    """The loss as it is: the gate with nothing to synchronize (and DDP's forward for a finished loss)."""
    return loss


class SingleProcess:
    """One process, one device: every method is the identity."""

    name = "single"
    distributed = False  # True: a torch.distributed run, whose checkpoints have one part per rank
    rank, world_size, is_rank_zero = 0, 1, True
    local_rank = 0  # the rank on this node: picks the CUDA device; local rank 0 runs prepare_data
    #: Whether evaluation may run under ``torch.inference_mode()`` (the ``inference_mode`` flag); else no_grad.
    supports_inference_mode = True
    #: The device this process's module runs on (Lightning's ``strategy.root_device``); the Trainer sets it.
    root_device = torch.device("cpu")

    def launch_if_needed(self) -> None:
        """Nothing to launch."""

    def barrier(self) -> None:
        """Wait for every rank (nobody to wait for)."""

    def setup(self, device: torch.device) -> torch.device:
        return device

    def configure_module(self, module: torch.nn.Module, device: torch.device, precision: Any) -> None:
        """Prepare the module on its device before the optimizers are built (FSDP shards it; nothing here)."""

    def wrap_step(self, module: torch.nn.Module, device: torch.device, one_backward: bool = True) -> Any:
        """The training_step to call; ``one_backward``: whether each step runs exactly one backward."""
        return module.training_step

    #: The loss to backpropagate: the identity, nothing to synchronize (the function itself rather than a method
    #: calling it, since the Trainer hands ``strategy.gate`` to every backward).
    gate = staticmethod(identity_gate)

    def step_gate(self) -> Any:
        """What every backward of this run passes its loss through, once :meth:`wrap_step` has run:
        :func:`identity_gate` whenever the gate would hand the loss back unchanged, so the step skips the call."""
        return self.gate

    def no_sync(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def held_grads(self, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Gradients this strategy keeps off ``param.grad`` (FSDP inside an accumulation window), for checkpoints;
        None: it keeps none, and a checkpoint has no ``held_grads`` entry."""
        return None

    def restore_held_grads(self, module: torch.nn.Module, grads: dict[str, torch.Tensor]) -> None:
        """Put :meth:`held_grads`' gradients back (nothing held, nothing to do)."""

    def shard(self, loader: Any, seed: int | None = None) -> Any:
        """This rank's part of ``loader`` (one process: all of it); ``seed``: the run's data seed, if any."""
        return loader

    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        return tensor

    def all_gather(self, tensor: torch.Tensor, group: Any = None, sync_grads: bool = False) -> torch.Tensor:
        """One process: the tensor itself (Lightning adds no world dimension either)."""
        return tensor

    def preemption_vote(self) -> Any:
        """What agrees on preemption at batch ends for one run (a PreemptionVote); None: nobody to agree with."""
        return None

    def teardown(self) -> None:
        """Nothing to leave."""


class _Forward(torch.nn.Module):
    """What DDP wraps: the module, with a ``forward`` that runs whatever computes the loss to backpropagate.

    That is ``training_step`` itself (one backward per step) or, for the loss
    gate, the identity on a loss already computed: DDP needs its forward to
    see the output that backward starts from, not to run the model.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, compute: Any, *args: Any) -> Any:
        return compute(*args)


class DDP(SingleProcess):
    """One process per device under torch.distributed (gloo on CPU, NCCL on CUDA)."""

    name = "ddp"
    distributed = True

    def __init__(self, devices: int, accelerator: str, num_nodes: int = 1, sync_batchnorm: bool = False,
                 use_distributed_sampler: bool = True) -> None:
        self.devices, self.accelerator, self.num_nodes = devices, accelerator, num_nodes
        self.sync_batchnorm = sync_batchnorm  # BatchNorm layers become SyncBatchNorm before DDP wraps the module
        self.use_distributed_sampler = use_distributed_sampler  # False: each rank iterates the loader as given
        #: The DistributedDataParallel wrapper of the last entry point; None before one and in a world of one.
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self._gated = False  # whether losses pass the gate (several backwards per step)
        self._training_step: Any = None
        self._solo: Any = None  # the world-of-one environment, when no launcher started us

    @property
    def env(self) -> Any:
        """The launcher's environment; without one (devices=1, plain python), a world of one on localhost."""
        from .distributed import DistributedEnv

        return DistributedEnv.from_environ() or self._solo

    def launch_if_needed(self) -> None:
        """In a plain ``python script.py`` parent: run the script in ``devices`` workers, then exit with their code."""
        from .distributed import DistributedEnv, launch_workers, should_launch

        env = DistributedEnv.from_environ()
        if self.num_nodes > 1 and env is None:
            raise ConfigError(f"num_nodes={self.num_nodes} needs a launcher on every node: run the script with "
                              f"`torchrun --nnodes={self.num_nodes} --nproc-per-node={self.devices} ...` on each "
                              "machine (this process was started without one).")
        if should_launch(self.devices, env):
            raise SystemExit(launch_workers(self.devices))
        if env is None and self._solo is None:  # devices=1, no launcher: a world of one, still through DDP
            self._solo = DistributedEnv(rank=0, world_size=1, local_rank=0, local_world_size=1,
                                        master_addr="127.0.0.1", master_port=_free_port())

    def setup(self, device: torch.device) -> torch.device:
        import atexit

        from .distributed import join_process_group

        env = self.env
        _check_world_matches(env, self.num_nodes, self.devices)
        self.rank, self.world_size, self.is_rank_zero = env.rank, env.world_size, env.rank == 0
        self.local_rank = env.local_rank
        joined = join_process_group(env, "cuda" if device.type == "cuda" else "cpu")
        atexit.register(self.teardown)  # fit, validate and test share the group; leave it once, at exit
        return joined

    def wrap_step(self, module: torch.nn.Module, device: torch.device, one_backward: bool = True) -> Any:
        """Wrap ``module`` in DDP (which gives every rank rank 0's weights); return the step to call.

        One backward per step: the step runs through DDP's forward.  Several:
        the step is called as it is and :meth:`gate` hands each loss to DDP;
        a backward then reaches only some parameters (the others are frozen by
        ``toggle_optimizer``, or belong to another loss), which is what
        ``find_unused_parameters`` is for.

        In a world of one there is nothing to wrap for: rank 0's weights are
        already here and the mean of one rank's gradients is those gradients,
        bit for bit, so the step is the module's own and :attr:`ddp` stays
        None.  DDP's wrapper would cost its per-step bookkeeping and a
        one-rank all-reduce for no effect (~10% of a small model's step,
        ``benchmarks/ddp.py``).  Everything else of ``strategy="ddp"`` -- the
        process group, the sharded loader, the per-rank checkpoint parts --
        stays, so a run's state set does not depend on this.
        """
        device_ids = [device.index] if device.type == "cuda" else None
        if self.sync_batchnorm:  # in place on the module's children; the parameters stay the optimizer's
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        self._gated = not one_backward
        if self.world_size == 1:
            self.ddp = self._training_step = None  # gate() and no_sync() are then the identity, as in one process
            return module.training_step
        self.ddp = torch.nn.parallel.DistributedDataParallel(_Forward(module), device_ids=device_ids,
                                                             find_unused_parameters=self._gated)
        self._training_step = module.training_step
        # Not a partial over self.ddp: the strategy must hold the only reference to DDP, so teardown can free it.
        return module.training_step if self._gated else self._step_through_ddp

    def barrier(self) -> None:
        """Wait until every rank gets here (e.g. until local rank 0 has prepared the data)."""
        from .distributed import barrier

        barrier()

    def _step_through_ddp(self, *args: Any) -> Any:
        return self.ddp(self._training_step, *args)

    def step_gate(self) -> Any:
        """The gate only where it acts (several backwards per step over several ranks): with one backward the loss
        already came out of DDP's forward, and in a world of one there is no DDP."""
        return self.gate if self._gated and self.ddp is not None else identity_gate

    def gate(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` through DDP's forward, so the backward that follows all-reduces the gradients it writes."""
        if not self._gated or self.ddp is None:
            return loss
        return self.ddp(identity_gate, loss)

    def no_sync(self) -> contextlib.AbstractContextManager[None]:
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def shard(self, loader: Any, seed: int | None = None) -> Any:
        """This rank's part of ``loader``: DistributedSampler's split of one permutation, the same on every rank.

        A DataLoader is rebuilt with :func:`~statemachine_trainer.data._auto.data_seed` (its generator, its
        DistributedSampler's seed, ``seed`` -- the run's, never ``seed + rank`` --, else ``torch.initial_seed()``):
        ranks that shuffled with different seeds would overlap and miss samples.
        """
        from torch.utils.data import DataLoader

        from .data import ResumableLoader
        from .data._auto import data_seed

        if not self.use_distributed_sampler:
            return loader  # Trainer(use_distributed_sampler=False): the user's sampler decides what each rank sees
        if isinstance(loader, DataLoader):
            loader = ResumableLoader(loader, seed=data_seed(loader, seed))
        if isinstance(loader, ResumableLoader):
            return loader.shard(self.rank, self.world_size)
        raise ConfigError(f"strategy='ddp' shards the data itself and needs a torch DataLoader or a "
                          f"ResumableLoader, got {type(loader).__name__}.")

    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        from .distributed import reduce_tensor

        return reduce_tensor(tensor, op)

    def all_gather(self, tensor: torch.Tensor, group: Any = None, sync_grads: bool = False) -> torch.Tensor:
        from .distributed import all_gather_tensor

        return all_gather_tensor(tensor, group, sync_grads)

    def preemption_vote(self) -> Any:
        """A fresh PreemptionVote for a run over several processes; None for a world of one."""
        from .distributed import PreemptionVote

        return PreemptionVote() if self.world_size > 1 else None

    def teardown(self) -> None:
        from .distributed import leave_process_group

        self.ddp = None  # the only reference: leave_process_group's collection frees DDP
        leave_process_group()


def _check_world_matches(env: Any, num_nodes: int, devices: int) -> None:
    """Refuse a launcher world other than ``num_nodes * devices`` processes, as Lightning does.

    Also with the default ``num_nodes=1``: a script started by ``torchrun
    --nnodes 2`` without ``num_nodes=2`` would train, but ``trainer.num_nodes``
    and everything sized from it would be wrong.
    """
    if env.world_size == num_nodes * devices:
        return
    nodes = env.world_size // env.local_world_size if env.world_size % env.local_world_size == 0 else None
    hint = f" (torchrun started {nodes} node(s) of {env.local_world_size}: pass num_nodes={nodes})" if nodes else ""
    expected = num_nodes * devices
    raise ConfigError(f"Trainer(num_nodes={num_nodes}, devices={devices}) expects a world of {expected} "
                      f"process{'es' if expected > 1 else ''}, but the launcher reports WORLD_SIZE={env.world_size}"
                      f"{hint}; make torchrun's --nnodes and --nproc-per-node match the flags.")


def launched_rank_zero(strategy: SingleProcess) -> bool:
    """Whether this process is rank 0 (or the only one), known from the launcher's environment at construction."""
    if not isinstance(strategy, DDP):
        return True
    env = strategy.env
    return env is None or env.rank == 0


def resolve_devices(devices: Any, accelerator: str, strategy: str | None) -> Any:
    """Lightning's ``devices`` forms as a count: ``"auto"``/``-1`` (all GPUs under ddp, else 1) and ``"2"``.

    A list of device indices cannot be honoured by a process-per-device
    launcher that numbers devices itself: the error says to pick them with
    ``CUDA_VISIBLE_DEVICES`` instead.
    """
    if devices in ("auto", -1, "-1"):
        return max(torch.cuda.device_count(), 1) if strategy in ("ddp", "fsdp") and accelerator == "cuda" else 1
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    if isinstance(devices, (list, tuple)) or (isinstance(devices, str) and "," in devices):
        count = len(devices) if isinstance(devices, (list, tuple)) else len(devices.strip(",").split(","))
        raise ConfigError(f"devices={devices!r}: choose the GPUs with CUDA_VISIBLE_DEVICES (e.g. "
                          f"CUDA_VISIBLE_DEVICES=0,1) and pass how many: devices={count}.")
    return devices


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
