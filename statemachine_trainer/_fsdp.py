"""``strategy="fsdp"``: PyTorch's FSDP2 (``fully_shard``) on the DDP strategy's processes, data and agreements.

Everything about *processes* is DDP's and inherited: the launch (torchrun or
our launcher with ``devices=N``), joining the group, the sharded loaders,
``sync_dist`` reductions, the preemption vote, the teardown.  What differs
is what happens to the module:

* **sharded before the optimizers exist** -- ``fully_shard`` replaces every
  parameter by a DTensor parameter holding this rank's shard, so it runs in
  the entry loop's ``configure_model`` row (:meth:`FSDP.configure_module`),
  before ``configure_optimizers`` builds optimizers over the parameters.
  (DDP wraps later, in ``assemble``: it keeps the parameters.)  A world of
  one shards too, on a mesh of one: the module and optimizer state have the
  same DTensor shape at every world size, which resharding a checkpoint from
  one world size to another relies on;
* **the wrapping** -- :class:`FSDPStrategy`'s ``wrap`` picks the submodules
  that become their own FSDP unit (one all-gather before their forward, one
  reduce-scatter after their backward), innermost first; the module itself is
  always sharded last, as the root, and holds what no unit took.  The
  default wraps each direct child that has parameters: a TrainingModule's
  children are its networks (a classifier's ``net``, a GAN's generator and
  discriminator), so each is gathered only while it runs and each
  optimizer's parameters are whole units.  For a model whose children are
  large, name the repeated block: ``wrap={nn.TransformerEncoderLayer}``;
* **the root is fixed at once** -- FSDP2 otherwise calls whichever sharded
  module runs forward first the root; a ``training_step`` that calls
  ``self.generator(z)`` rather than ``self(z)`` would make the generator root
  and the next call of the module itself fail -- or, with the module never
  called, leave the generator and the discriminator each its own root, which
  a hand-written FSDP2 loop of ``tests/_fsdp_worker.py``'s manual GAN showed
  to train wrong (weights 0.3 off a one-process reference; ours 1e-7).
  :func:`_fix_root` runs FSDP2's own lazy initialisation on the module right
  after sharding;
* **one step, every backward synced** -- FSDP2's hooks all-gather in forward
  and reduce-scatter in every backward, whatever calls it; so the step is the
  module's own and the loss gate is the identity (no wrapper, unlike DDP);
* **accumulation** -- :meth:`FSDP.no_sync` is ``set_requires_gradient_sync
  (False)`` on every unit: the window's micro-batches keep their *unsharded*
  gradients inside FSDP (not in ``param.grad``) and the window's last
  backward reduce-scatters their sum;
* **clipping** -- ``torch.nn.utils.clip_grad_norm_`` on the DTensor
  gradients computes the global norm (a DTensor reduction, no ``.item()``);
  value clipping is elementwise on the shards;
* **mixed precision** -- ``precision="bf16-mixed"`` becomes
  ``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`` unless
  ``FSDPStrategy(mixed_precision=...)`` gives one: parameters are gathered
  and used in bfloat16 (half the all-gather and the unsharded memory),
  gradients are reduced and kept in float32 on float32 shards, the
  optimizer steps float32 weights.  The step still runs under bfloat16
  autocast, as everywhere, so what autocast computes in float32 (losses,
  softmax, norms) stays so for code outside the sharded units;
* **evaluation under no_grad** -- never ``torch.inference_mode()`` (the
  ``inference_mode`` flag is ignored): FSDP2 reuses its all-gather buffers,
  and buffers first allocated in inference mode refuse the next training
  step's in-place copy ("Inplace update to inference tensor outside
  InferenceMode").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
from torch import nn

from ._optim import ConfigError
from ._strategy import DDP, identity_gate

__all__ = ["FSDP", "FSDPStrategy", "default_wrap", "restore_window_grads", "window_grads"]



def default_wrap(module: nn.Module, root: nn.Module) -> bool:
    """The default policy: ``module`` is a direct child of ``root`` with parameters (see the module docstring)."""
    return any(child is module for child in root.children()) and any(True for _ in module.parameters())


@attrs.frozen
class FSDPStrategy:
    """``Trainer(strategy=FSDPStrategy(...))``: ``strategy="fsdp"`` with its options (Lightning's import name).

    ``wrap``: which submodules become their own FSDP unit -- None (each
    direct child with parameters), a set of module classes, or a callable
    ``module -> bool``.  ``mixed_precision``: FSDP2's ``MixedPrecisionPolicy``
    (default: the one ``precision=`` implies).  ``reshard_after_forward``:
    free a unit's gathered parameters after its forward (gathered again for
    backward: less memory, one more all-gather) or keep them until backward.
    """

    wrap: Any = None
    mixed_precision: Any = None
    reshard_after_forward: bool = True

    def __attrs_post_init__(self) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        wrap = self.wrap
        classes = isinstance(wrap, (set, frozenset, list, tuple))
        if classes and not (wrap and all(isinstance(c, type) and issubclass(c, nn.Module) for c in wrap)):
            raise ConfigError(f"FSDPStrategy(wrap={wrap!r}): a set of wrapped module classes must name nn.Module "
                              "subclasses, e.g. wrap={nn.TransformerEncoderLayer}.")
        if not (wrap is None or classes or (callable(wrap) and not isinstance(wrap, type))):
            raise ConfigError(f"FSDPStrategy(wrap={wrap!r}): pass None (each direct child with parameters), a set "
                              "of module classes, e.g. {nn.TransformerEncoderLayer}, or a function module -> bool.")
        if self.mixed_precision is not None and not isinstance(self.mixed_precision, MixedPrecisionPolicy):
            raise ConfigError(f"FSDPStrategy(mixed_precision={self.mixed_precision!r}): pass a "
                              "torch.distributed.fsdp.MixedPrecisionPolicy, or None to follow precision=.")
        if not isinstance(self.reshard_after_forward, bool):
            raise ConfigError(f"FSDPStrategy(reshard_after_forward={self.reshard_after_forward!r}) must be True "
                              "or False.")

    def selects(self, root: nn.Module) -> Callable[[nn.Module], bool]:
        """The policy as a predicate over ``root``'s submodules."""
        wrap = self.wrap
        if wrap is None:
            return lambda module: default_wrap(module, root)
        if isinstance(wrap, (set, frozenset, list, tuple)):
            classes = tuple(wrap)
            return lambda module: isinstance(module, classes)
        return wrap


class FSDP(DDP):
    """One process per device, the module sharded with FSDP2's ``fully_shard`` (gloo on CPU, NCCL on CUDA)."""

    name = "fsdp"
    #: Evaluation runs under no_grad: FSDP2 all-gathers into buffers it allocates once and reuses; allocated
    #: under inference mode they become inference tensors, and the next training all-gather into them fails.
    supports_inference_mode = False

    def __init__(self, devices: int, accelerator: str, num_nodes: int = 1, sync_batchnorm: bool = False,
                 use_distributed_sampler: bool = True, options: FSDPStrategy | None = None) -> None:
        super().__init__(devices, accelerator, num_nodes, sync_batchnorm, use_distributed_sampler)
        self.options = options if options is not None else FSDPStrategy()
        #: The sharded module of the last entry point (the FSDP root); None before one and after teardown.
        self.module: nn.Module | None = None
        self._syncing = True  # whether backwards reduce-scatter now (False inside no_sync)

    def configure_module(self, module: nn.Module, device: torch.device, precision: Any) -> None:
        """Shard ``module`` in place (its parameters become DTensor shards); before the optimizers are built.

        A module sharded by an earlier entry point (``fit`` then ``test``) is
        used as it is: sharding is not undone between entry points.
        """
        from torch.distributed.fsdp import FSDPModule

        self.module = module
        if isinstance(module, FSDPModule):
            return
        if self.sync_batchnorm:
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        shard(module, self._mesh(device), self.options, self._policy(precision))

    def _mesh(self, device: torch.device) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(device.type, (self.world_size,))

    def _policy(self, precision: Any) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.options.mixed_precision is not None:
            return self.options.mixed_precision
        if getattr(precision, "precision", precision) == "bf16-mixed":
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()

    def wrap_step(self, module: nn.Module, device: torch.device, one_backward: bool = True) -> Any:
        """The module's own ``training_step``: FSDP2's hooks sync every backward, however many a step runs."""
        return module.training_step

    #: FSDP2 reduce-scatters in every backward by itself: nothing for a loss to pass through.
    gate = staticmethod(identity_gate)

    def no_sync(self) -> contextlib.AbstractContextManager[None]:
        return self._no_sync() if self.module is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def _no_sync(self) -> Iterator[None]:
        """Backwards inside it keep their gradients unsharded on this rank; nested uses restore the outer state."""
        outer, self._syncing = self._syncing, False
        if outer:
            self.module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self._syncing = outer
            if outer and self.module is not None:
                self.module.set_requires_gradient_sync(True)

    def held_grads(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The unsharded gradients FSDP2 holds inside an accumulation window (:func:`window_grads`)."""
        return window_grads(module)

    def restore_held_grads(self, module: nn.Module, grads: dict[str, torch.Tensor]) -> None:
        """Put :meth:`held_grads` back (a collective: every rank calls it, as every rank resumes)."""
        restore_window_grads(module, grads)

    def teardown(self) -> None:
        self.module = None  # ours is not the last reference (the user's is), but it must not be one more
        super().teardown()


def shard(module: nn.Module, mesh: Any, options: FSDPStrategy, policy: Any) -> None:
    """``fully_shard`` the units ``options.wrap`` selects, innermost first, then ``module`` as the root."""
    from torch.distributed.fsdp import fully_shard

    selects = options.selects(module)
    units = [sub for sub in _post_order(module) if sub is not module and selects(sub)
             and any(True for _ in sub.parameters())]
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=options.reshard_after_forward, mp_policy=policy)
    fully_shard(module, mesh=mesh, reshard_after_forward=options.reshard_after_forward, mp_policy=policy)
    _fix_root(module)


def _post_order(module: nn.Module) -> Iterator[nn.Module]:
    """``module``'s submodules, children before their parents (FSDP2 shards inner units before outer ones)."""
    for child in module.children():
        yield from _post_order(child)
    yield module


def _fix_root(module: nn.Module) -> None:
    """Make ``module`` FSDP2's root now, whichever unit a step calls first (FSDP2 decides at the first forward)."""
    from torch.distributed.fsdp import fully_shard

    fully_shard.state(module)._lazy_init()


def window_grads(module: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's gradients that FSDP holds back inside an accumulation window, by parameter name; {} outside one.

    With ``set_requires_gradient_sync(False)`` a backward leaves each
    parameter's gradient *unsharded* (full size, this rank's micro-batches
    only) inside FSDP2 -- on ``FSDPParam._unsharded_param.grad``, or, when the
    policy reduces in another dtype than it computes in (bf16-mixed's float32
    reduce), upcast on ``FSDPParam.unsharded_accumulated_grad`` -- and not on
    the parameter's ``.grad``, which holds only gradients already
    reduce-scattered.  A checkpoint inside a window must keep these (rank-local)
    to resume exactly; :func:`restore_window_grads` puts them back.
    """
    grads = {}
    for name, fsdp_param in _fsdp_params(module):
        held = fsdp_param.unsharded_accumulated_grad
        if held is None and hasattr(fsdp_param, "_unsharded_param"):
            held = fsdp_param._unsharded_param.grad
        if held is not None:
            grads[name] = held
    return grads


def restore_window_grads(module: nn.Module, grads: dict[str, torch.Tensor]) -> None:
    """Put :func:`window_grads`' gradients back into a sharded ``module`` (a collective: every rank calls it).

    Each unit is all-gathered once first (and freed again), so FSDP2 has the
    unsharded parameter its next backward accumulates into.
    """
    from torch.distributed.fsdp import FSDPModule

    if not grads:
        return
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.unshard()
            unit.reshard()
    for name, fsdp_param in _fsdp_params(module):
        grad = grads.get(name)
        if grad is None:
            continue
        computes_in = fsdp_param.param_dtype or fsdp_param.orig_dtype
        if fsdp_param.reduce_dtype is not None and grad.dtype == fsdp_param.reduce_dtype != computes_in:
            fsdp_param.unsharded_accumulated_grad = grad.clone()
        else:
            fsdp_param._unsharded_param.grad = grad.clone()


def _fsdp_params(module: nn.Module) -> Iterator[tuple[str, Any]]:
    """``(parameter name, FSDP2's FSDPParam)`` for every sharded parameter of ``module`` (FSDP2 internals)."""
    from torch.distributed.fsdp import FSDPModule

    names = {id(param): name for name, param in module.named_parameters()}
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            for group in unit._get_fsdp_state()._fsdp_param_groups:
                for fsdp_param in group.fsdp_params:
                    yield names[id(fsdp_param.sharded_param)], fsdp_param
