"""Agreeing on preemption across ranks at about one collective per fifth of a second, not one per step.

A preemption signal may reach one rank only (a scheduler that signals one
process, a user's ``kill``), yet every rank must checkpoint at the *same*
batch end, or their parts of the checkpoint would describe different
positions.  So the ranks vote: each contributes whether it was signalled, and
all act on the maximum.

Theory of operation
-------------------
:meth:`PreemptionVote.at_batch_end` is called at every batch end, on every
rank, the same number of times (the ranks cross the same transitions).  Most
calls only count down.  At a *ballot* -- the batch end where the countdown
reaches zero -- a rank:

1. reads the result of the previous ballot's all-reduce (started one ballot
   earlier, so it finished long ago: nothing waits on the network), and
2. starts this ballot's all-reduce without waiting (``async_op=True``).

The reduced tensor holds two maxima: "was any rank signalled" and "the
slowest rank's seconds per batch since the ballot before".  Every rank reads
the *same* reduced values, so every rank derives the same answer and the same
number of batch ends until the next ballot (about :data:`BALLOT_SECONDS`
worth of the slowest rank's batches, between 1 and :data:`MAX_BATCHES`) --
the ballots stay on the same batch ends everywhere without any rank's clock
deciding alone.

The cost: one small all-reduce per ballot instead of per step; with 2 ms
steps that is one in 64.  The price is latency: a signal is acted on at most
two ballots after it arrived (about 0.4 s, or two batches when batches are
slower than that), well inside the grace period schedulers give before
SIGKILL (30 s or more).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from ._group import collective

__all__ = ["BALLOT_SECONDS", "MAX_BATCHES", "AnyRankOneCallLate", "PreemptionVote"]

#: Aim for one ballot per this many seconds of training (the slowest rank's clock, agreed by all).
BALLOT_SECONDS = 0.2
#: Never more batch ends than this between ballots, so a sudden slowdown delays a preemption by at most this many.
MAX_BATCHES = 64


class _MaxInFlight:
    """At most one non-blocking MAX all-reduce of a few floats in flight: started now, its result read later.

    What both agreements below share: a rank starts the all-reduce and goes
    on training; a later call (a batch or a ballot later, when it has long
    finished) waits for it and reads the reduced values, the same on every rank.
    """

    def __init__(self, what: str) -> None:
        self._what = what  # the collective's name in a RankFailure
        self._values: torch.Tensor | None = None  # the values being reduced (MAX), or None
        self._work: Any = None  # their all-reduce in flight, or None

    def start(self, values: list[float]) -> None:
        """Start reducing ``values`` (the previous result must have been read)."""
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        self._values = torch.tensor(values, dtype=torch.float64, device=device)
        self._work = dist.all_reduce(self._values, op=dist.ReduceOp.MAX, async_op=True)

    def result(self) -> list[float] | None:
        """The reduced values of the all-reduce in flight, waited for (None when none is); then none is in flight."""
        if self._work is None:
            return None
        self._work.wait()  # started a batch or a ballot ago: done by now, barring a dead or hung peer
        values = self._values.tolist()
        self.abandon()
        return values

    def close(self) -> None:
        """Wait for the all-reduce in flight, so no collective of ours outlives the run (every rank calls it)."""
        if self._work is not None:
            with collective(self._what):
                self._work.wait()
        self.abandon()

    def abandon(self) -> None:
        """Forget the all-reduce in flight without waiting: after a failure, a peer may never complete it."""
        self._work = self._values = None


class PreemptionVote:
    """Whether any rank was signalled, decided by all ranks at the same batch ends, every ~BALLOT_SECONDS."""

    def __init__(self) -> None:
        self._countdown = 1  # batch ends until the next ballot; the first batch end opens the first ballot
        self._batches = 0  # batch ends since the last ballot (what the measured time is divided by)
        self._since = time.perf_counter()  # when the last ballot was opened (or the vote created)
        self._ballot = _MaxInFlight("agreeing on preemption")  # [signalled, seconds per batch] being reduced

    def at_batch_end(self, signalled: bool) -> bool:
        """True on every rank at once if any rank had been signalled by an earlier ballot; call at every batch end."""
        self._batches += 1
        self._countdown -= 1
        if self._countdown > 0:
            return False  # the common case: no collective, no clock
        with collective("agreeing on preemption"):
            agreed = self._read()
            if not agreed:  # every rank reads the same outcome: all open the next ballot, or none does
                self._open(signalled)
        return agreed

    def close(self) -> None:
        """Wait for the ballot in flight, so no collective of ours outlives the run (every rank calls it)."""
        self._ballot.close()

    def abandon(self) -> None:
        """Forget the ballot in flight without waiting: after a failure, a peer may never complete it."""
        self._ballot.abandon()

    def _read(self) -> bool:
        """The previous ballot's outcome; also sets how many batch ends the next ballot is away (same on every rank)."""
        outcome = self._ballot.result()
        if outcome is None:
            self._countdown = 1  # nothing measured yet: the next batch end reads this first ballot
            return False
        signalled, seconds_per_batch = outcome
        self._countdown = batches_between_ballots(seconds_per_batch)
        return signalled > 0

    def _open(self, signalled: bool) -> None:
        now = time.perf_counter()
        seconds_per_batch = (now - self._since) / self._batches
        self._since, self._batches = now, 0
        self._ballot.start([1.0 if signalled else 0.0, seconds_per_batch])


def batches_between_ballots(seconds_per_batch: float) -> int:
    """About BALLOT_SECONDS of batches, at least 1 and at most MAX_BATCHES."""
    if not seconds_per_batch > 0:  # also nan
        return MAX_BATCHES
    return max(1, min(MAX_BATCHES, int(BALLOT_SECONDS / seconds_per_batch)))


class AnyRankOneCallLate:
    """Whether any rank said True, agreed one call late, so that no call waits on the other ranks.

    For a decision checked at every batch end (``Timer(interval="step")``, so
    ``Trainer(max_time=...)``): each call starts a non-blocking all-reduce
    (MAX) of this call's flag and returns the outcome of the previous call's,
    which finished during the batch in between; the first call returns False.
    Every rank calls it the same number of times, so every rank gets the same
    answers in the same call: the decision is the same everywhere, one batch
    later than a blocking all-reduce would make it.  :meth:`close` waits for
    the all-reduce in flight (every rank calls it at the same point);
    :meth:`abandon` forgets it after a failure, when a peer may never complete it.
    """

    def __init__(self, what: str) -> None:
        self._what = what  # the collective's name in a RankFailure
        self._flag = _MaxInFlight(what)  # the previous call's flag being reduced

    def __call__(self, flag: bool) -> bool:
        with collective(self._what):
            previous = self._flag.result()
            self._flag.start([1.0 if flag else 0.0])
        return previous is not None and previous[0] > 0

    def close(self) -> None:
        """Wait for the all-reduce in flight, so no collective of ours outlives the run."""
        self._flag.close()

    def abandon(self) -> None:
        self._flag.abandon()
