"""The dispatcher: the one place hooks are fired from.

Two engines differ only in how a transition is taken:

* :class:`DirectDispatcher` compiles each ``(state, trigger)`` pair's
  candidate rows into one generated Python function (``_codegen``) and takes
  a transition in that one frame, whichever way it was asked for.  It is the
  default because the hot path of training takes several transitions per
  step.
* :class:`TransitionsDispatcher` hands each trigger to a ``transitions.Machine``
  built from the table -- conditions and ``unless`` become its guards, a row's
  hooks its ``before`` callback (so the state changes only after every hook
  returned), the bookkeeping its ``after`` callback.  It is the reference
  definition of behaviour: a plain composition of the same rules, which the
  property tests hold the direct engine to.

Everything else is shared and written once in :class:`Dispatcher` (the theory
of operation in ``machine/__init__`` says why): ``run()`` and ``fire()`` as
run-to-completion units over our own FIFO queue (so the queue is data a
checkpoint can hold), an exception that leaves the loop in the failed
transition's source state with nothing queued, and resume from a saved
position.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from transitions import Machine

from ..state._position import Position
from ._binding import BoundRow, HookWrapper, bind_rows
from ._codegen import compile_choice
from ._table import END, RESTART_TRIGGER, RESTARTING, START, Table

__all__ = ["DirectDispatcher", "Dispatcher", "FinishedRunWarning", "IllegalTriggerError", "LoopStuckError",
           "TransitionsDispatcher"]


class IllegalTriggerError(RuntimeError):
    """A trigger was fired in a state that has no row for it.  The loop's state is unchanged."""

    def __init__(self, loop: str, state: str, trigger: str, allowed: tuple[str, ...]) -> None:
        self.loop, self.state, self.trigger = loop, state, trigger
        allowed_text = ", ".join(repr(t) for t in allowed) or "none"
        super().__init__(f"Loop {loop!r} cannot take trigger {trigger!r} in state {state}: no row of its table "
                         f"leaves {state} on {trigger!r} (triggers allowed in {state}: {allowed_text}). "
                         "The loop's state is unchanged.")


class FinishedRunWarning(UserWarning):
    """A root loop restored at END (its run had ended) was run: that run() does nothing."""


class LoopStuckError(RuntimeError):
    """``run()`` fired a state's driving trigger and no row's conditions held."""

    def __init__(self, loop: str, state: str, trigger: str) -> None:
        self.loop, self.state, self.trigger = loop, state, trigger
        super().__init__(f"Loop {loop!r} is stuck in state {state}: no row for its driving trigger {trigger!r} "
                         f"passed its conditions. Add an unconditional row for {trigger!r} from {state} "
                         "(last among its rows), or make the conditions cover every case.")


class Dispatcher:
    """Runs one loop's table against the loop's methods.

    ``owner`` is the object whose methods the table names (the loop).  Every
    attribute the hot path touches is a plain attribute, bound once here.

    The engine-independent rules live here, each once: :meth:`run` and
    :meth:`fire` (each one run-to-completion unit that ends in :meth:`_abort`
    if anything raises), :meth:`_drain` (the queue) and :meth:`_restart`.  An
    engine supplies how a transition is taken: ``_plan`` (per state, a
    function that takes the driving trigger's row and says whether one was
    taken: what ``run()`` calls), :meth:`_process` (a trigger fired by name)
    and :meth:`_take_row` (a row chosen before: a resume's).
    """

    state: str

    def __init__(self, table: Table, owner: Any, name: str) -> None:
        self.table = table
        self.owner = owner
        self.name = name
        self.rows: tuple[BoundRow, ...] = bind_rows(table, owner)
        self._skip: frozenset[str] = frozenset()  # the hooks rebind() leaves out
        self._wrap: HookWrapper | None = None  # a profiler's timing around every bound hook (see wrap_hooks)
        self.row: int | None = None  # see Position: the transition under way
        self.hook = 0
        self.queue: deque[str] = deque()
        self.observer: Callable[[Any], None] | None = None  # called at every transition boundary
        # A sub-loop of the tree ``observer`` watches: it runs inside a parent's hook, so the end of its run is
        # not a boundary.  Loop.observe sets it on every loop of the tree but the root, Loop.connect on new ones.
        self.nested = False
        self.output: Any = None  # what the last hook of the transition into END returned
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self.restarting = False
        self._resume: Position | None = None
        self._busy = False  # a run-to-completion unit (run() or fire()) is under way: new triggers queue
        self._finished_on_load = False
        self._driving = {s: table.driving_trigger(s) for s in table.states}
        self._allowed = {s: tuple(dict.fromkeys(r.trigger for r in table.rows if r.source == s))
                         for s in table.states}
        self._allowed[RESTARTING] = (RESTART_TRIGGER,)
        restart = getattr(owner, "on_restart", None)
        self._on_restart = None if restart is None or getattr(restart, "__noop_hook__", False) else restart
        self._plan: dict[str, Callable[[], bool]] = {}  # state -> take its driving trigger's row (False: none passed)

    def rebind(self, skip: frozenset[str]) -> None:
        """Bind the rows again, leaving out the hooks in ``skip``; only between runs."""
        if self._busy or self.state not in (START, END):
            raise RuntimeError(f"Loop {self.name!r} can only change which hooks it skips between runs "
                               f"(it is in {self.state}).")
        self.rows = bind_rows(self.table, self.owner, skip, self._wrap)
        self._skip = skip
        self._index_rows()

    def wrap_hooks(self, wrap: HookWrapper | None) -> None:
        """Bind every hook through ``wrap`` (None: as it is) from the next run on; only between runs."""
        self._wrap = wrap
        self.rebind(self._skip)

    def _index_rows(self) -> None:
        """Build the engine's lookups from ``self.rows`` (after binding, and again after ``rebind``)."""

    # -- the position, as data ----------------------------------------------------------
    @property
    def position(self) -> Position:
        """Where the machine is; a loop waiting in RESTARTING reports where it will resume."""
        if self._resume is not None:
            return self._resume
        return Position(self.state, self.row, self.hook, tuple(self.queue))

    def restore(self, position: Position, root: bool = False) -> None:
        """Put the machine at a saved position; a mid-run one is entered through RESTARTING.

        A ``root`` restored at END holds a finished run: its next ``run()``
        returns None at once instead of running again, so resuming from the last
        checkpoint of a finished run does nothing.  (A sub-loop at END is only
        between two runs of its parent's, so its next ``run()`` starts afresh.)
        """
        if self._busy:
            raise RuntimeError(f"Loop {self.name!r} cannot load a state while it is running a transition.")
        self.row, self.hook, self.output = None, 0, None
        self.queue.clear()
        self._finished_on_load = root and position == Position(END)
        if position.row is None and not position.queue and position.state in (START, END):
            self._resume, self.restarting = None, False
            self.state = position.state
        else:
            self._resume, self.restarting = position, True
            self.state = RESTARTING

    # -- the two ways in: each one run-to-completion unit --------------------------------
    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Take each state's driving trigger until END; return the END transition's output.

        The whole run is one unit: a trigger fired inside it (by a hook, a
        condition or the observer) is queued and drained after the transition.
        """
        if self._busy:
            raise RuntimeError(f"Loop {self.name!r}: run() was called from one of its own hooks; "
                               "fire a trigger with loop.fire(name) instead.")
        if self._finished_on_load:
            self._finished_on_load = False
            warnings.warn(f"Loop {self.name!r} was loaded from a checkpoint of a run that had ended, so this run() "
                          "does nothing; call run() again for a new run, or override the loop's resume_position "
                          "to go on from a finished run (the fit loop does: a larger max_epochs trains on).",
                          FinishedRunWarning, stacklevel=3)
            return None
        self.args, self.kwargs = args, kwargs
        if self.state == END:
            self.state = START  # a finished loop runs again from the top, like Lightning's run()
        self._busy = True
        try:
            if self.state == RESTARTING:
                self._restart()
            plan, queue = self._plan, self.queue
            while self.state != END:
                if not plan[self.state]():
                    raise LoopStuckError(self.name, self.state, self._driving[self.state])
                if queue:
                    self._drain()
            return self.output
        except BaseException:
            self._abort()
            raise
        finally:
            self._busy = False

    def fire(self, trigger: str) -> bool | None:
        """Process ``trigger`` now, or queue it if a transition is under way (run-to-completion).

        Returns whether a row was taken, or None when queued.
        """
        if self._busy:
            self.queue.append(trigger)
            return None
        self._busy = True
        try:
            taken = self._process(trigger)
            if self.queue:
                self._drain()
            return taken
        except BaseException:
            self._abort()
            raise
        finally:
            self._busy = False

    # -- rules shared by both engines ---------------------------------------------------
    def _abort(self) -> None:
        # The failed transition never happened as far as the machine knows: its
        # state is still the source, and nothing is pending.
        self.queue.clear()
        self.row, self.hook = None, 0

    def _drain(self) -> None:
        queue = self.queue
        while queue:
            self._process(queue.popleft())  # a queued trigger that no row accepts is dropped

    def _restart(self) -> None:
        """Back to the saved state (hook ``on_restart``), finish the saved transition from its hook, drain."""
        resume = self._resume
        assert resume is not None
        self._enter_restart(resume.state)
        self._resume = None
        self.queue.extend(resume.queue)
        if resume.row is not None:
            self._take_row(self.rows[resume.row].resumed(resume.hook))
        elif not resume.queue and self.observer is not None:
            # Saved between two transitions: the resumed position is that boundary again (still ``restarting``:
            # nothing has run since the load).  Without it, a loop resumed there would take its next transition
            # (a whole batch) before any observer could act, so a checkpoint asked for while resuming
            # (on_train_start, a preemption signal) would come one step late.
            self.observer(self.owner)
        self.restarting = False
        self._drain()

    def _illegal(self, trigger: str) -> IllegalTriggerError:
        return IllegalTriggerError(self.name, self.state, trigger, self._allowed.get(self.state, ()))

    @property
    def busy(self) -> bool:
        """Whether a ``run()`` or ``fire()`` of this machine is under way (its hooks are running)."""
        return self._busy

    # -- what an engine supplies ----------------------------------------------------------
    def _process(self, trigger: str) -> bool:  # pragma: no cover - engines override
        """Take the row ``trigger`` selects; False if no guards passed, IllegalTriggerError if it has no row here."""
        raise NotImplementedError

    def _take_row(self, bound: BoundRow) -> None:  # pragma: no cover - engines override
        """Take ``bound`` without its guards: a resume finishing the row that was under way."""
        raise NotImplementedError

    def _enter_restart(self, state: str) -> None:  # pragma: no cover - engines override
        raise NotImplementedError


def _none_taken() -> bool:
    """A state whose driving trigger has no row: nothing can be taken (``run()`` reports the loop stuck)."""
    return False


class DirectDispatcher(Dispatcher):
    """The table compiled to Python: the hot-path engine.

    Every ``(state, trigger)`` pair's candidate rows become one generated
    function (``_codegen.compile_choice``) that checks the guards in table
    order and takes the first row that passes, in one Python frame.  Every
    transition, however it was asked for (``run()``, ``fire()``, the queue, a
    resume), is taken by such a function, so each rule is written once: in
    the generator.
    """

    def __init__(self, table: Table, owner: Any, name: str) -> None:
        self.state = START
        super().__init__(table, owner, name)
        self._index_rows()

    def _index_rows(self) -> None:
        lookup: dict[str, dict[str, list[BoundRow]]] = {state: {} for state in self.table.states}
        for bound in self.rows:
            lookup[bound.row.source].setdefault(bound.row.trigger, []).append(bound)
        owner = type(self.owner).__name__
        # state -> trigger -> take the first of its candidate rows (in table order) whose guards pass
        self._choices = {state: {trigger: compile_choice(self, rows, f"{owner} {state} --{trigger}-->")
                                 for trigger, rows in by_trigger.items()}
                         for state, by_trigger in lookup.items()}
        # state -> the choice of its driving trigger: all run() ever needs
        self._plan = {state: self._choices[state].get(trigger, _none_taken)
                      for state, trigger in self._driving.items() if trigger is not None}

    def _process(self, trigger: str) -> bool:
        by_trigger = self._choices.get(self.state)
        choice = by_trigger.get(trigger) if by_trigger is not None else None
        if choice is None:
            raise self._illegal(trigger)
        return choice()

    def _take_row(self, bound: BoundRow) -> None:
        # A resumed row has no guards; compiled for this one resume (a row resumes from any of its hooks).
        compile_choice(self, (bound,), f"{type(self.owner).__name__} {bound.row.source} resumed at hook "
                                       f"{bound.hook_index[0] if bound.hook_index else 'end'}")()

    def _enter_restart(self, state: str) -> None:
        if self._on_restart is not None:
            self._on_restart()
        self.state = state


class _Model:
    """The object ``transitions`` keeps the state on, so it decorates this and not the user's loop."""

    state: str


class TransitionsDispatcher(Dispatcher):
    """The reference engine: every transition goes through a ``transitions.Machine``.

    The Machine checks legality and guards and changes the state; a row's hooks
    are its ``before`` callback and our bookkeeping its ``after`` callback.
    """

    def __init__(self, table: Table, owner: Any, name: str) -> None:
        self._model = _Model()
        self._machine = Machine(model=self._model, states=[*table.states, RESTARTING], initial=START,
                                auto_transitions=False, send_event=False, queued=False, name=name)
        super().__init__(table, owner, name)
        self._result: Any = None  # what _before's hooks returned, for _after
        for bound in self.rows:
            row = bound.row
            self._machine.add_transition(row.trigger, row.source, row.dest,
                                         conditions=list(bound.conditions), unless=list(bound.unless),
                                         # by index: rebind() may replace the bound rows
                                         before=partial(self._before, bound.index),
                                         after=partial(self._after, bound.index))
        for state in table.states:
            if state != END:
                self._machine.add_transition(RESTART_TRIGGER, RESTARTING, state,
                                             conditions=partial(self._resumes_to, state),
                                             before=self._before_restart)
        self._plan = {state: partial(self._process, trigger) for state, trigger in self._driving.items()
                      if trigger is not None}

    @property  # type: ignore[override]
    def state(self) -> str:
        return self._model.state

    @state.setter
    def state(self, value: str) -> None:
        self._machine.set_state(value, model=self._model)

    def _before(self, index: int) -> None:
        self._result = self._run_hooks(self.rows[index])

    def _after(self, index: int) -> None:
        self._finish_row(self.rows[index], self._result)

    def _take_row(self, bound: BoundRow) -> None:
        # The saved row of a resume: its guards passed before the save, so it skips the Machine.
        result = self._run_hooks(bound)
        self.state = bound.dest
        self._finish_row(bound, result)

    # The rules of a transition (``_codegen`` writes them out for the direct engine), split where the Machine
    # changes the state.
    def _run_hooks(self, bound: BoundRow) -> Any:
        self.row = bound.index
        result = None
        for fn, takes_args, index, after, between in bound.steps:
            self.hook = index
            result = fn(*self.args, **self.kwargs) if takes_args else fn()
            self.hook = after
            if self.observer is not None and between:
                self.observer(self.owner)
        return result if bound.returns_last else None

    def _finish_row(self, bound: BoundRow, result: Any) -> None:
        self.row, self.hook = None, 0
        if bound.enters_end:
            self.output = result
        if self.observer is not None and not (self.nested and bound.enters_end):
            self.observer(self.owner)

    def _process(self, trigger: str) -> bool:
        event = self._machine.events.get(trigger)
        if event is None or not event.transitions.get(self.state):
            raise self._illegal(trigger)
        return bool(event.trigger(self._model))

    def _resumes_to(self, state: str) -> bool:
        return self._resume is not None and self._resume.state == state

    def _before_restart(self) -> None:
        if self._on_restart is not None:
            self._on_restart()

    def _enter_restart(self, state: str) -> None:
        if not self._process(RESTART_TRIGGER):  # pragma: no cover - _resumes_to always matches one row
            raise RuntimeError(f"Loop {self.name!r} could not restart into {state}.")


ENGINES: dict[str, type[Dispatcher]] = {"direct": DirectDispatcher, "transitions": TransitionsDispatcher}
