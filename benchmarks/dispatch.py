"""How much does it cost to fire a hook through a transition table?

Run:  python benchmarks/dispatch.py [--repeat R] [--number N] [--target-time S] [--no-subtract] [--profile]

Why this exists
---------------
Every hook of a loop (``on_advance_start``, ``advance``, ``on_advance_end``,
...) is fired by a dispatcher, never called directly, and the training hot
path fires several transitions per optimizer step.  The design issue set the
budget: "If firing a hook through the dispatcher costs more than ~3x a plain
method call, compile tables into a direct dispatcher for the hot path."  This
script measures that number, in one run, for every way of firing a hook:

1. ``obj.hook()`` -- a plain Python method call, the baseline;
2. a bare ``transitions.Machine`` (``auto_transitions=False``) with one
   self-transition ``step: A -> A`` whose ``before`` callback is the hook,
   triggered with ``model.step()`` -- what the ``transitions`` package costs
   by itself, without any of our bookkeeping;
3. :class:`~statemachine_trainer.machine.TransitionsDispatcher` -- our
   reference engine (``engine="transitions"``), which runs every trigger
   through such a Machine plus our position tracking and run-to-completion queue;
4. :class:`~statemachine_trainer.machine.DirectDispatcher` -- our default
   engine (``engine="direct"``), the same table compiled to dict lookups.

Three cases are measured:

* **one hook**: ``Row("step", "A", "A", hooks="hook")``; one ``fire("step")``
  runs the hook once, so the ratio to a method call *is* the cost of
  dispatching one hook -- the number the issue's 3x budget is about;
* **a realistic step**: a guarded row checked first and failing, then a row
  with three hooks, like a loop's ``advance`` step::

      Row("step", "A", END, conditions="done")
      Row("step", "A", "A", hooks=("h1", "h2", "h3"))

  compared with its plain-Python equivalent
  ``if not obj.done: obj.h1(); obj.h2(); obj.h3()`` (``done`` is a property,
  as loop conditions usually are);
* **a whole run()**: the same step driven by ``run()`` -- what a loop does
  every time its parent runs it -- ``RUN_STEPS`` times between a START row
  (hook ``reset``) and the guarded row into END, compared with
  ``obj.reset()`` and a ``while not obj.done`` loop.  ``fire()`` and ``run()``
  are the two ways into the direct engine, so both are timed; the direct
  engine is timed once more with an observer set (a no-op function), as the
  Trainer sets one for the whole fit.  There is no bare ``transitions.Machine``
  row in this case (it has no ``run()``).

Every hook does the same tiny amount of work (``self.n += 1``), so the ratios
measure dispatch, not the hooks.  Each engine's counters are checked after
timing to prove every measured ``fire`` really ran its hooks (and, for the
realistic case, that the guarded row is live: with ``done`` true the same
trigger goes to END).

How it is measured
------------------
* ``timeit`` with string statements, so the timed loop is
  ``for _ in range(N): <stmt>`` with no extra Python call per operation; the
  objects are bound as locals of the timing function (``setup``), so no
  engine pays for global-name lookups.
* The cost of the empty loop (``pass``) is measured the same way and
  subtracted from every result (``--no-subtract`` shows raw numbers).
* ``N`` (operations per measurement) is chosen per engine so that one
  measurement takes about ``--target-time`` seconds (fast engines get more
  operations, slow ones fewer); ``--number N`` forces the same N for all.
* ``R`` measurements per engine (``--repeat``), taken round-robin across
  engines so slow drift of the machine (frequency scaling, neighbours) hits
  them all alike; the table reports the minimum (the least disturbed run, the
  usual timeit advice) and the median, both in ns per operation, and the ratio
  columns are computed from the minima.
* The garbage collector is disabled while timing (``gc.disable()``) and a
  collection is run between measurements, outside the timed region.

The last line, ``dispatch overhead per hook: direct=X.Xx method call,
transitions=Y.Yx``, is the one-hook case's ratio for our two engines (named as
a loop's ``engine`` class attribute names them) and is what README quotes.

This script imports no torch: the machine core does not need it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import platform
import pstats
import statistics
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from transitions import Machine

from statemachine_trainer.machine import END, START, DirectDispatcher, Row, Table, TransitionsDispatcher

#: The issue's budget: dispatching a hook may cost at most this many plain method calls.
BUDGET = 3.0

PLAIN = "plain method call"
PLAIN_3 = "plain Python"
MACHINE = "transitions.Machine"
TRANSITIONS = "TransitionsDispatcher"
DIRECT = "DirectDispatcher"
DIRECT_OBSERVED = "DirectDispatcher+observer"

#: Advance steps per run() in the run() case; one run() is RUN_STEPS + 2 transitions.
RUN_STEPS = 8

ONE_HOOK_TABLE = Table(
    name="bench_one_hook",
    states=(START, "A", END),
    rows=(
        Row("go", START, "A"),
        Row("step", "A", "A", hooks="hook"),  # the transition being timed
        Row("finish", "A", END),
    ),
)

REALISTIC_TABLE = Table(
    name="bench_realistic",
    states=(START, "A", END),
    rows=(
        Row("go", START, "A"),
        # A guarded row must come before the unconditional row with the same trigger and source.
        Row("step", "A", END, conditions="done"),
        Row("step", "A", "A", hooks=("h1", "h2", "h3")),  # the transition being timed
    ),
)


RUN_TABLE = Table(
    name="bench_run",
    states=(START, "A", END),
    rows=(
        Row("run", START, "A", hooks="reset"),
        Row("step", "A", END, conditions="done"),
        Row("step", "A", "A", hooks=("h1", "h2", "h3")),
    ),
)


class OneHook:
    """The owner of the one-hook case: a loop with a single, nearly free hook."""

    def __init__(self) -> None:
        self.n = 0

    def hook(self) -> None:
        self.n += 1


class ThreeHooks:
    """The owner of the realistic case: a ``done`` property and three hooks."""

    def __init__(self) -> None:
        self.n1 = self.n2 = self.n3 = 0
        self.finished = False

    @property
    def done(self) -> bool:
        return self.finished

    def h1(self) -> None:
        self.n1 += 1

    def h2(self) -> None:
        self.n2 += 1

    def h3(self) -> None:
        self.n3 += 1


class Steps(ThreeHooks):
    """The owner of the run() case: ``reset`` starts a run, ``done`` after RUN_STEPS steps."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = self.i = 0

    @property
    def done(self) -> bool:
        return self.i >= RUN_STEPS

    def reset(self) -> None:
        self.runs += 1
        self.i = 0

    def h3(self) -> None:
        self.n3 += 1
        self.i += 1


def _no_op_observer(_owner: Any) -> None:
    pass


@dataclass
class Bench:
    """One timed statement.  ``obj`` is bound to the local name ``obj`` of the timing function."""

    label: str
    stmt: str
    obj: Any
    timer: timeit.Timer = field(init=False)
    number: int = 0  # operations per measurement
    executed: int = 0  # every time the statement ran (calibration included), for the sanity checks
    times: list[float] = field(default_factory=list)  # seconds per operation, one per measurement

    def __post_init__(self) -> None:
        self.timer = timeit.Timer(self.stmt, setup="obj = _obj", globals={"_obj": self.obj})

    def run(self, number: int) -> float:
        """Time ``number`` operations; return seconds per operation."""
        self.executed += number
        return self.timer.timeit(number) / number

    def calibrate(self, target: float) -> None:
        """Pick ``number`` so that one measurement takes about ``target`` seconds."""
        n = 1
        while True:
            elapsed = self.run(n) * n
            if elapsed >= target / 10 or n >= 1 << 30:
                break
            n *= 2
        self.number = max(1, math.ceil(n * target / max(elapsed, 1e-9)))


@dataclass
class Case:
    title: str
    baseline: str  # label of the plain-Python bench the ratios are taken against
    benches: list[Bench]
    check: Callable[[Case], None]  # proves, after timing, that every measured fire did its work

    def bench(self, label: str) -> Bench:
        return next(b for b in self.benches if b.label == label)


# -- the two cases ------------------------------------------------------------------------
def one_hook_case() -> Case:
    plain = OneHook()

    bare = OneHook()
    Machine(model=bare, states=["A"], initial="A", auto_transitions=False,
            transitions=[{"trigger": "step", "source": "A", "dest": "A", "before": "hook"}])

    reference_owner = OneHook()
    reference = TransitionsDispatcher(ONE_HOOK_TABLE, reference_owner, "bench")
    direct_owner = OneHook()
    direct = DirectDispatcher(ONE_HOOK_TABLE, direct_owner, "bench")
    for dispatcher in (reference, direct):
        dispatcher.fire("go")  # START -> A; from here on "step" is A -> A

    counters = {PLAIN: plain, MACHINE: bare, TRANSITIONS: reference_owner, DIRECT: direct_owner}

    def check(case: Case) -> None:
        for label, owner in counters.items():
            expected = case.bench(label).executed
            if owner.n != expected:
                raise AssertionError(f"{label}: hook ran {owner.n} times for {expected} operations")
        for label, dispatcher in ((TRANSITIONS, reference), (DIRECT, direct)):
            if dispatcher.state != "A":
                raise AssertionError(f"{label} left state A: {dispatcher.state}")
        if bare.state != "A":
            raise AssertionError(f"{MACHINE} left state A: {bare.state}")

    return Case(
        title="one transition firing one hook  (Row('step', 'A', 'A', hooks='hook'))",
        baseline=PLAIN,
        benches=[
            Bench(PLAIN, "obj.hook()", plain),
            Bench(MACHINE, "obj.step()", bare),
            Bench(TRANSITIONS, "obj.fire('step')", reference),
            Bench(DIRECT, "obj.fire('step')", direct),
        ],
        check=check,
    )


def realistic_case() -> Case:
    plain = ThreeHooks()

    bare = ThreeHooks()
    bare_machine = Machine(
        model=bare, states=["A", "END"], initial="A", auto_transitions=False,
        transitions=[
            {"trigger": "step", "source": "A", "dest": "END", "conditions": "done"},
            {"trigger": "step", "source": "A", "dest": "A", "before": ["h1", "h2", "h3"]},
        ])

    reference_owner = ThreeHooks()
    reference = TransitionsDispatcher(REALISTIC_TABLE, reference_owner, "bench")
    direct_owner = ThreeHooks()
    direct = DirectDispatcher(REALISTIC_TABLE, direct_owner, "bench")
    for dispatcher in (reference, direct):
        dispatcher.fire("go")

    counters = {PLAIN_3: plain, MACHINE: bare, TRANSITIONS: reference_owner, DIRECT: direct_owner}

    def check(case: Case) -> None:
        for label, owner in counters.items():
            expected = case.bench(label).executed
            if not owner.n1 == owner.n2 == owner.n3 == expected:
                raise AssertionError(f"{label}: hooks ran {owner.n1}/{owner.n2}/{owner.n3} times "
                                     f"for {expected} operations")
        # The guarded row is live: once `done` holds, the same trigger leaves for END without hooks.
        for owner in counters.values():
            owner.finished = True
        bare_machine.events["step"].trigger(bare)
        reference.fire("step")
        direct.fire("step")
        states = {MACHINE: bare.state, TRANSITIONS: reference.state, DIRECT: direct.state}
        if set(states.values()) != {END}:
            raise AssertionError(f"with done=True, 'step' should reach END: {states}")
        if reference_owner.n1 != case.bench(TRANSITIONS).executed or direct_owner.n1 != case.bench(DIRECT).executed:
            raise AssertionError("the guarded row ran hooks")

    return Case(
        title="a realistic step: one failing condition row, then a row of 3 hooks",
        baseline=PLAIN_3,
        benches=[
            Bench(PLAIN_3, "if not obj.done:\n    obj.h1(); obj.h2(); obj.h3()", plain),
            Bench(MACHINE, "obj.step()", bare),
            Bench(TRANSITIONS, "obj.fire('step')", reference),
            Bench(DIRECT, "obj.fire('step')", direct),
        ],
        check=check,
    )


def run_case() -> Case:
    plain = Steps()
    reference_owner, direct_owner, observed_owner = Steps(), Steps(), Steps()
    reference = TransitionsDispatcher(RUN_TABLE, reference_owner, "bench")
    direct = DirectDispatcher(RUN_TABLE, direct_owner, "bench")
    observed = DirectDispatcher(RUN_TABLE, observed_owner, "bench")
    observed.observer = _no_op_observer
    counters = {PLAIN_3: plain, TRANSITIONS: reference_owner, DIRECT: direct_owner, DIRECT_OBSERVED: observed_owner}

    def check(case: Case) -> None:
        for label, owner in counters.items():
            runs = case.bench(label).executed
            if owner.runs != runs or not owner.n1 == owner.n2 == owner.n3 == runs * RUN_STEPS:
                raise AssertionError(f"{label}: {owner.runs} runs and hooks ran {owner.n1}/{owner.n2}/{owner.n3} "
                                     f"times for {runs} operations of {RUN_STEPS} steps")
        for label, dispatcher in ((TRANSITIONS, reference), (DIRECT, direct), (DIRECT_OBSERVED, observed)):
            if dispatcher.state != END:
                raise AssertionError(f"{label} did not finish its run: {dispatcher.state}")

    return Case(
        title=f"a whole run(): START row, {RUN_STEPS} steps of 3 hooks, END row ({RUN_STEPS + 2} transitions)",
        baseline=PLAIN_3,
        benches=[
            Bench(PLAIN_3, "obj.reset()\nwhile not obj.done:\n    obj.h1(); obj.h2(); obj.h3()", plain),
            Bench(TRANSITIONS, "obj.run((), {})", reference),
            Bench(DIRECT, "obj.run((), {})", direct),
            Bench(DIRECT_OBSERVED, "obj.run((), {})", observed),
        ],
        check=check,
    )


# -- measuring ----------------------------------------------------------------------------
def measure(benches: list[Bench], repeat: int, number: int | None, target: float) -> None:
    """Calibrate, then take ``repeat`` measurements of every bench, round-robin."""
    gc.collect()
    gc.disable()
    try:
        for bench in benches:
            if number is None:
                bench.calibrate(target)  # doubles as warm-up
            else:
                bench.number = number
                bench.run(max(1, number // 10))  # warm-up
        for _ in range(repeat):
            for bench in benches:
                gc.collect()
                bench.times.append(bench.run(bench.number))
    finally:
        gc.enable()


def ns(seconds: float) -> float:
    return seconds * 1e9


def stats(bench: Bench, overhead: float) -> tuple[float, float]:
    """(min, median) seconds per operation, less the empty loop's cost."""
    return min(bench.times) - overhead, statistics.median(bench.times) - overhead


def report(case: Case, overhead: float, baseline_title: str) -> dict[str, float]:
    """Print one case's table; return each engine's min seconds per operation."""
    mins = {b.label: stats(b, overhead)[0] for b in case.benches}
    base, machine = mins[case.baseline], mins.get(MACHINE)
    header = (f"{'engine':<26}{'N/measurement':>12}{'min ns/op':>12}{'median ns/op':>14}"
              f"{baseline_title:>16}{'x ' + MACHINE:>24}")
    print(case.title)
    print(header)
    print("-" * len(header))
    for bench in case.benches:
        low, mid = stats(bench, overhead)
        versus_machine = f"{low / machine:>24.3f}" if machine is not None else f"{'-':>24}"
        print(f"{bench.label:<26}{bench.number:>12,}{ns(low):>12.1f}{ns(mid):>14.1f}"
              f"{low / base:>16.2f}{versus_machine}")
    print()
    return mins


def profile_direct(number: int) -> None:
    """cProfile ``number`` one-hook fires of the direct engine (timings inflated; shapes are what matter)."""
    owner = OneHook()
    direct = DirectDispatcher(ONE_HOOK_TABLE, owner, "bench")
    direct.fire("go")
    fire = direct.fire
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(number):
        fire("step")
    profiler.disable()
    print(f"cProfile of {number:,} DirectDispatcher.fire('step') calls (one hook each), by own time:")
    pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(12)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="measurements per engine (default 7)")
    parser.add_argument("--number", type=int, default=None,
                        help="operations per measurement for every engine (default: per engine, see --target-time)")
    parser.add_argument("--target-time", type=float, default=0.1,
                        help="seconds one measurement should take when --number is not given (default 0.1)")
    parser.add_argument("--no-subtract", action="store_true", help="do not subtract the empty loop's cost")
    parser.add_argument("--profile", action="store_true", help="also cProfile the direct engine's fire()")
    args = parser.parse_args(argv)
    if args.repeat < 1 or (args.number is not None and args.number < 1) or args.target_time <= 0:
        parser.error("--repeat and --number must be >= 1 and --target-time > 0")

    empty = Bench("empty loop", "pass", None)
    cases = [one_hook_case(), realistic_case(), run_case()]
    measure([empty] + [b for case in cases for b in case.benches], args.repeat, args.number, args.target_time)
    for case in cases:
        case.check(case)
    overhead = 0.0 if args.no_subtract else min(empty.times)

    sizing = (f"N={args.number:,} operations per measurement" if args.number is not None
              else f"N chosen per engine for ~{args.target_time:g} s per measurement")
    loop_note = ("not subtracted" if args.no_subtract else "subtracted")
    print(f"dispatch benchmark: {platform.python_implementation()} {platform.python_version()} on "
          f"{platform.system()} {platform.machine()}, transitions {version('transitions')}")
    print(f"{sizing}; {args.repeat} measurements per engine, round-robin; gc disabled while timing; "
          f"empty-loop cost {ns(min(empty.times)):.1f} ns/op {loop_note}; ratios from the minima")
    print()
    one = report(cases[0], overhead, "x method call")
    three = report(cases[1], overhead, "x plain Python")
    whole = report(cases[2], overhead, "x plain Python")

    direct, reference = one[DIRECT] / one[PLAIN], one[TRANSITIONS] / one[PLAIN]
    print(f"realistic step (1 condition + 3 hooks): direct={three[DIRECT] / three[PLAIN_3]:.1f}x plain Python, "
          f"transitions={three[TRANSITIONS] / three[PLAIN_3]:.1f}x; direct dispatch costs "
          f"{ns(three[DIRECT] - three[PLAIN_3]):.0f} ns per step on top of the hooks")
    per_run = RUN_STEPS + 2  # transitions
    print(f"whole run() ({per_run} transitions): direct={whole[DIRECT] / whole[PLAIN_3]:.1f}x plain Python, "
          f"observed={whole[DIRECT_OBSERVED] / whole[PLAIN_3]:.1f}x; direct dispatch costs "
          f"{ns(whole[DIRECT] - whole[PLAIN_3]) / per_run:.0f} ns per transition on top of the hooks "
          f"({ns(whole[DIRECT_OBSERVED] - whole[PLAIN_3]) / per_run:.0f} ns observed)")
    verdict = "within" if direct <= BUDGET else f"over, by {direct / BUDGET:.1f}x"
    print(f"issue budget: firing a hook through the dispatcher <= {BUDGET:g}x a plain method call; "
          f"direct engine is {verdict}")
    if args.profile:
        print()
        profile_direct(100_000)
    if "torch" in sys.modules:  # pragma: no cover - a regression in the machine core's imports
        raise AssertionError("benchmarks/dispatch.py imported torch; the machine core must stay torch-free")
    print(f"dispatch overhead per hook: direct={direct:.1f}x method call, transitions={reference:.1f}x")


if __name__ == "__main__":
    main()
