"""``ResumableLoader``: a DataLoader whose position is one integer and whose resume is a jump.

Theory of operation
-------------------
The adapter rebuilds the given DataLoader around two parts: a
:class:`ResumableSampler` (the order: epoch ``e``'s batches are a function of
``seed`` and ``e``, and batch ``k`` is computed directly) and a
:class:`SeededDataset` (the randomness: batch ``k``'s augmentations are a
function of its key, whichever process fetches it).  Its state is
``{"epoch", "position", "seed"}``, where ``position`` counts the batches the
*consumer has received* this epoch -- not those workers prefetched -- so a
state taken between two batches names exactly the next one to serve.
``load_state_dict`` only sets those integers; the next ``iter()`` asks the
sampler to start at ``position``.  No batch before it is built or fetched.

The global RNGs (``rngs``, see ``_seeding``).  Fetching batch ``k`` seeds the
named global RNGs from its key, in whichever process fetches it (the
augmentations).  In the main process torch's CPU generator is then put back
as it was (its stream runs on, unmoved by loading), and when ``next()``
hands the batch to the consumer Python's and NumPy's generators are seeded
from the batch's training key (the *training stream*: whatever the step
draws from them until the next batch).  So what a step draws does not
depend on ``num_workers``, on how many numbers the augmentations drew, or on
whether the run was resumed.  (A fetch that provably draws nothing -- a
``TensorDataset`` with the default collate -- touches no generator at all:
it is not seeded, not guarded, and no training stream is seeded after it,
so the step's draws run on as in a plain loop; see ``_seeding``.)

The batch in flight.  A checkpoint taken while batch ``k`` is being processed
holds ``position = k + 1``.  To serve batch ``k`` again after resuming, call
``rewind(1)`` after ``load_state_dict``; the next batch yielded is ``k``,
bit-identical (same indices, same key, same collate), then ``k + 1``, ...
A batch served again (any batch below the highest position served this
epoch, or below a loaded position) leaves the caller's RNGs as they are: the
checkpoint's RNG states already hold the draws its step made.

Epoch ends.  ``set_epoch(e)`` with the current epoch keeps the position, so a
trainer may call it after ``load_state_dict``.  ``iter()`` on an epoch that
iteration finished moves on to the next epoch (a new order per pass, as with
a plain DataLoader); a position set by ``load_state_dict``/``rewind`` is
served as it is, so a state saved after the last batch resumes to an empty
rest of the epoch, not to a whole new one.

A loader that already keeps its own position (torchdata's
``StatefulDataLoader`` protocol: ``state_dict()``/``load_state_dict()`` on
the loader) is not rebuilt: the adapter iterates it and forwards the state
calls to it as they are.

One live iterator at a time: ``iter()`` again, ``load_state_dict``,
``set_epoch`` to another epoch or ``rewind`` make an older iterator raise
on its next step instead of silently serving batches from a stale position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from ._global import GLOBAL_STATE_KEYS, GlobalBatchSampler, global_position, training_seeder
from ._sampler import ResumableSampler, check_state
from ._seeding import (
    ALL_RNGS,
    KEPT_RNGS,
    RngStates,
    SeededDataset,
    check_rngs,
    fetch_draws_nothing,
    seeder,
    training_key,
)
from ._settings import dataset_settings, is_stateful, loader_settings

__all__ = ["ResumableLoader", "StaleIteratorError"]

_STATE_KEYS = ("epoch", "position", "seed")
_AT_LEAST_ONE = ("global_batch_size", "batch_size", "world_size")
_MASK64 = (1 << 64) - 1


_torch_state, _set_torch_state = torch.default_generator.get_state, torch.default_generator.set_state


def _keeping_torch(batches: Iterator[Any]) -> Any:
    """``next(batches)`` with torch's CPU generator put back afterwards (~1 µs: cheap, unlike the others')."""
    state = _torch_state()
    try:
        return next(batches)
    finally:
        _set_torch_state(state)


class StaleIteratorError(RuntimeError):
    """An iterator was used after its loader's position was changed under it."""


class ResumableLoader:
    """Iterate like a DataLoader; save and restore the position in O(1).

    ``data`` is a torch ``DataLoader`` (its dataset, batch_size, shuffle --
    read off its sampler --, drop_last, collate_fn, workers, pinning and
    worker_init_fn are kept), a map-style dataset, or a loader with the
    ``state_dict``/``load_state_dict`` protocol (delegated to as it is).
    Keyword arguments override what was read from ``data``.  ``seed`` defaults
    to the loader's generator seed, else ``torch.initial_seed()``, so
    ``seed_everything`` fixes the data order too.  ``rngs`` names the global
    RNGs seeded per batch for the augmentations, and so taken care of for
    the training stream that follows (see the module docstring and
    ``_seeding``); ``()`` leaves every global RNG alone.
    """

    def __init__(self, data: Any, *, batch_size: int | None = None, shuffle: bool | None = None,
                 drop_last: bool | None = None, seed: int | None = None, rank: int | None = None,
                 world_size: int | None = None, num_workers: int | None = None,
                 rngs: Sequence[str] = ALL_RNGS) -> None:
        self.delegate: Any = None  # the stateful loader served as it is; None when the adapter owns the order
        given = {name: value for name, value in (("batch_size", batch_size), ("shuffle", shuffle),
                                                 ("drop_last", drop_last), ("seed", seed), ("rank", rank),
                                                 ("world_size", world_size), ("num_workers", num_workers))
                 if value is not None}
        if is_stateful(data):
            if given:
                raise ValueError(f"{type(data).__name__} keeps its own position (it has state_dict/"
                                 f"load_state_dict), so ResumableLoader delegates to it unchanged and cannot apply "
                                 f"{sorted(given)}; configure the loader itself instead.")
            self.delegate = data
            return
        settings = loader_settings(data) if isinstance(data, DataLoader) else dataset_settings(data)
        settings.update(given)
        self._build(settings, rngs)

    def _build(self, settings: dict[str, Any], rngs: Sequence[str]) -> None:
        self._settings, self._rngs = dict(settings), check_rngs(rngs)  # what shard() rebuilds from
        self.dataset = settings.pop("dataset")
        # A fetch that provably draws nothing (a TensorDataset, the default collate) is not seeded, nor torch's
        # generator put back around it, nor the training stream seeded after it: it leaves every generator as it
        # found it, with or without workers, so the step's draws run on as in a plain loop (see _seeding).
        self._fetch_draws = bool(self._rngs) and not fetch_draws_nothing(self.dataset, settings.get("collate_fn"))
        # Seeds the training stream from a key (None when there is nothing to seed); the RNGs of KEPT_RNGS are
        # put back around a main-process fetch instead.
        self._seed_training = seeder([name for name in self._rngs if name not in KEPT_RNGS]) \
            if self._fetch_draws else None
        seed = settings.pop("seed")
        self.seed: int = torch.initial_seed() if seed is None else seed
        #: Samples per optimizer step when the order is the global-batch one (``data/_global``); None: DDP's split.
        self.global_batch_size: int | None = settings.pop("global_batch_size", None)
        # Named batch_sampler, not sampler: code that calls `loader.sampler.set_epoch` (as for DistributedSampler)
        # would move the sampler's epoch behind the adapter's back; the adapter's own set_epoch is the one to call.
        if self.global_batch_size is None:
            self.batch_sampler = ResumableSampler(
                len(self.dataset), settings.pop("batch_size"), shuffle=settings.pop("shuffle"),
                drop_last=settings.pop("drop_last"), seed=self.seed, rank=settings.pop("rank"),
                world_size=settings.pop("world_size"), shard_drop_last=settings.pop("shard_drop_last"))
        else:
            rank, world_size = settings.pop("rank"), settings.pop("world_size")
            settings.pop("drop_last"), settings.pop("shard_drop_last")
            self.batch_sampler = GlobalBatchSampler(
                len(self.dataset), settings.pop("batch_size"), self.global_batch_size,
                shuffle=settings.pop("shuffle"), seed=self.seed, rank=0 if rank is None else rank,
                world_size=1 if world_size is None else world_size)
            # Every RNG, torch's too, restarts from each micro-batch's key: draws depend on the micro-batch only.
            self._seed_training = training_seeder(self._rngs)
        self.batch_sampler.epoch = settings.pop("epoch")
        self.batch_sampler.tagged = self._fetch_draws  # an unseeded fetch reads no key: none is computed per batch
        if not settings.get("num_workers"):
            settings["prefetch_factor"], settings["persistent_workers"] = None, False  # DataLoader refuses them
        # DataLoader draws its workers' base seed from `generator` at every iter(); a private one keeps that
        # draw off the global torch stream, which a resumed run would otherwise see moved by one extra draw.
        self._generator = torch.Generator()
        dataset = SeededDataset(self.dataset, rngs) if self._fetch_draws else self.dataset
        self.loader = DataLoader(dataset, batch_sampler=self.batch_sampler, generator=self._generator,
                                 in_order=True, **settings)
        self._position = 0  # batches the consumer received this epoch; 0 <= _position <= len(self)
        # Batches below this position were served before in this epoch (or by the run a loaded state comes from):
        # serving one again must not reseed the training stream.  _position <= _served <= len(self).
        self._served = 0
        self._generation = 0  # bumped whenever the position is set from outside; older iterators go stale
        # Set by load_state_dict/rewind until the next iter(): a position set from outside is served as it is,
        # so a state saved after an epoch's last batch resumes to "nothing left", not to the next epoch.
        self._seeked = False

    def shard(self, rank: int, world_size: int) -> ResumableLoader:
        """This loader's data as rank ``rank`` of ``world_size`` sees it (a new loader; DistributedSampler's rule).

        The Trainer calls it under ``strategy="ddp"``, so one script serves any
        world size.  A loader that delegates to a stateful one is returned as it
        is: it shards its own data, or not.
        """
        if self.delegate is not None:
            return self
        if self.batch_sampler.world_size not in (1, world_size) or (
                self.batch_sampler.world_size == world_size and self.batch_sampler.rank != rank):
            raise ValueError(f"This ResumableLoader is already sharded as rank {self.batch_sampler.rank} of "
                             f"{self.batch_sampler.world_size}, not {rank} of {world_size}; give the Trainer an "
                             "unsharded loader and let it shard.")
        sharded = object.__new__(ResumableLoader)
        sharded.delegate = None
        sharded._build({**self._settings, "seed": self.seed, "rank": rank, "world_size": world_size}, self._rngs)
        return sharded

    def global_batches(self, global_batch_size: int, rank: int = 0, world_size: int = 1) -> ResumableLoader:
        """This loader's data in the global-batch order, as rank ``rank`` of ``world_size`` reads it (a new loader).

        ``Trainer(global_batch_size=G)`` calls it for the training data: every
        optimizer step then takes the same ``G`` samples, with the same random
        draws, at any world size (``data/_global``); ``accumulation`` says how
        many of this loader's batches make one step here.  A ConfigError
        names ``G``, the batch size and ``world_size`` when they do not divide.
        """
        if self.delegate is not None:
            raise TypeError(f"{type(self.delegate).__name__} keeps its own position and order, so it cannot be read "
                            "in the global-batch order; give a torch DataLoader over a map-style dataset.")
        if self.batch_sampler.world_size != 1:
            raise ValueError(f"This ResumableLoader is already sharded as rank {self.batch_sampler.rank} of "
                             f"{self.batch_sampler.world_size}; give an unsharded loader.")
        ordered = object.__new__(ResumableLoader)
        ordered.delegate = None
        ordered._build({**self._settings, "seed": self.seed, "rank": rank, "world_size": world_size,
                        "global_batch_size": global_batch_size}, self._rngs)
        return ordered

    @property
    def accumulation(self) -> int:
        """Batches of this loader per optimizer step: ``G // (batch_size * world_size)`` in the global-batch
        order, else 1."""
        return self.batch_sampler.accumulation if self.global_batch_size is not None else 1

    def unshuffled(self) -> ResumableLoader:
        """This loader's data in its sequential order (a new loader; ``overfit_batches`` asks for it)."""
        if self.delegate is not None:
            return self
        plain = object.__new__(ResumableLoader)
        plain.delegate = None
        plain._build({**self._settings, "seed": self.seed, "shuffle": False}, self._rngs)
        return plain

    # -- iteration -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch (this rank's, when sharded)."""
        return len(self.delegate) if self.delegate is not None else len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        if self.delegate is not None:
            return iter(self.delegate)
        if self._position >= len(self) > 0 and not self._seeked:
            self.set_epoch(self.epoch + 1)  # an epoch iteration finished moves on, as a DataLoader reshuffles
        self._seeked = False
        self._generation += 1
        self.batch_sampler.seek(self._position)
        self._generator.manual_seed((self.seed + self.epoch) & _MASK64)  # worker seeds differ per epoch
        return self._serve(iter(self.loader), self._generation)

    def _serve(self, batches: Iterator[Any], generation: int) -> Iterator[Any]:
        seed_training = self._seed_training
        # The fetch runs here and may draw: put torch's generator back after it -- unless the training stream
        # reseeds torch's right after (the global-batch order does), which would overwrite what was put back.
        keep_torch = (self._fetch_draws and "torch" in self._rngs and not self.loader.num_workers
                      and self.global_batch_size is None)
        key_of = self.batch_sampler.key_function()  # batch index -> its key (the global-batch order's own rule)
        while True:
            # Checked before pulling: with persistent workers a newer iterator shares `batches`.
            if generation != self._generation:
                raise StaleIteratorError(
                    "This iterator of a ResumableLoader is stale: the loader's position was changed (iter(), "
                    "load_state_dict, set_epoch or rewind) after it was created. Call iter(loader) again.")
            position = self._position
            fresh = position >= self._served
            try:
                if not fresh:
                    batch = self._serve_again(batches)
                elif keep_torch:
                    batch = _keeping_torch(batches)
                else:
                    batch = next(batches)
            except StopIteration:
                return
            if fresh:
                self._served = position + 1
                if seed_training is not None:
                    seed_training(training_key(key_of(position)))
            self._position = position + 1  # counted as the consumer receives it, whatever the workers prefetched
            yield batch

    def _serve_again(self, batches: Iterator[Any]) -> Any:
        """The next batch, served before: its fetch in this process (no workers) must not move the caller's RNGs."""
        if self.loader.num_workers or not self._fetch_draws:
            return next(batches)
        saved = RngStates(self._rngs)
        try:
            return next(batches)
        finally:
            saved.restore()

    # -- position --------------------------------------------------------------------------------------
    def _state_keys(self) -> tuple[str, ...]:
        return _STATE_KEYS if self.global_batch_size is None else GLOBAL_STATE_KEYS

    def _global_position(self, state: dict[str, Any]) -> int:
        """This rank's position for a global-batch state saved at any world size (``data/_global``)."""
        if not isinstance(state, dict) or set(state) != set(GLOBAL_STATE_KEYS):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"A global-batch loader's state has the keys {list(GLOBAL_STATE_KEYS)}, got {found}: it "
                             "was saved without global_batch_size (its order is another one); resume it without "
                             "global_batch_size, or start this run afresh.")
        for key in GLOBAL_STATE_KEYS:
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < (key in _AT_LEAST_ONE):
                raise ValueError(f"state[{key!r}]={value!r} must be an int >= {int(key in _AT_LEAST_ONE)}; the "
                                 "checkpoint is damaged or not ours.")
        sampler = self.batch_sampler
        return global_position(state, sampler.batch_size, self.global_batch_size, sampler.world_size)

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    @property
    def position(self) -> int:
        """Batches the consumer has received in the current epoch."""
        return self._position

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` from its start; calling it with the current epoch keeps the position (as after a resume)."""
        if self.delegate is not None:
            target = self.delegate if hasattr(self.delegate, "set_epoch") else getattr(self.delegate, "sampler", None)
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
            return
        if epoch != self.batch_sampler.epoch:
            self.batch_sampler.set_epoch(epoch)
            self._position, self._served, self._seeked = 0, 0, False
            self._generation += 1

    def rewind(self, batches: int = 1) -> None:
        """Step the position back by ``batches`` within the epoch, so the next iterator serves them again.

        The way to re-obtain the batch that was in flight when a checkpoint
        was taken: ``load_state_dict(saved); rewind(1)``.  O(1), like any jump.
        Batches served again leave the caller's global RNGs as they are (the
        training stream is seeded once per batch, when it is first served).
        """
        if self.delegate is not None:
            raise TypeError(f"{type(self.delegate).__name__} keeps its own position and cannot step back; save its "
                            "state_dict() before fetching a batch and load that one to serve the batch again.")
        if isinstance(batches, bool) or not isinstance(batches, int) or not 0 <= batches <= self._position:
            raise ValueError(f"rewind({batches!r}) must step back between 0 and {self._position} batches: "
                             "the batches received so far in this epoch.")
        self._position -= batches
        self._seeked = True
        self._generation += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position", "seed"}`` (JSON-able ints), or the delegate's own state.

        In the global-batch order also ``global_batch_size``, ``batch_size``
        and ``world_size``: enough for :meth:`load_state_dict` at another world
        size to find the same global position (at a step boundary).
        """
        if self.delegate is not None:
            return self.delegate.state_dict()
        state = {"epoch": self.batch_sampler.epoch, "position": self._position, "seed": self.seed}
        if self.global_batch_size is not None:  # what a resume at another world size needs (data/_global)
            sampler = self.batch_sampler
            state |= {"global_batch_size": self.global_batch_size, "batch_size": sampler.batch_size,
                      "world_size": sampler.world_size}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Jump to a saved position: only integers are set; nothing is fetched until the next batch."""
        if self.delegate is not None:
            self.delegate.load_state_dict(state)
            return
        position = self._global_position(state) if self.global_batch_size is not None else None
        check_state(state if position is None else {**state, "position": position}, self._state_keys(), len(self))
        self.seed = self.batch_sampler.seed = state["seed"]
        self.batch_sampler.epoch, self._seeked = state["epoch"], True
        self._position = state["position"] if position is None else position
        self._served = self._position  # the saved run served the batches before it; the next one is fresh
        self._generation += 1
