"""The dispatcher: the one place hooks are fired from.

Two engines share every rule except "which row does this trigger take?":

* :class:`TransitionsDispatcher` hands each trigger to a ``transitions.Machine``
  built from the table -- conditions and ``unless`` become its guards, a row's
  hooks its ``before`` callback (so the state changes only after every hook
  returned), the bookkeeping its ``after`` callback.  It is the reference
  definition of behaviour.
* :class:`DirectDispatcher` compiles the same table into a dict from
  ``(state, trigger)`` to candidate rows.  It is the default because the hot
  path of training fires several transitions per step; the property tests
  check that both engines fire the same hooks in the same order.

Rules common to both (the theory of operation in ``machine/__init__`` says why):
run-to-completion via our own FIFO queue (so the queue is data a checkpoint
can hold), positions tracked per hook, an observer called at every transition
boundary, and exceptions that leave the loop in the failed transition's
source state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from transitions import Machine

from ..state._position import Position
from ._binding import BoundRow, bind_rows
from ._table import END, RESTART_TRIGGER, RESTARTING, START, Table

__all__ = ["DirectDispatcher", "Dispatcher", "IllegalTriggerError", "LoopStuckError", "TransitionsDispatcher"]


class IllegalTriggerError(RuntimeError):
    """A trigger was fired in a state that has no row for it.  The loop's state is unchanged."""

    def __init__(self, loop: str, state: str, trigger: str, allowed: tuple[str, ...]) -> None:
        self.loop, self.state, self.trigger = loop, state, trigger
        allowed_text = ", ".join(repr(t) for t in allowed) or "none"
        super().__init__(f"Loop {loop!r} cannot take trigger {trigger!r} in state {state}: no row of its table "
                         f"leaves {state} on {trigger!r} (triggers allowed in {state}: {allowed_text}). "
                         "The loop's state is unchanged.")


class LoopStuckError(RuntimeError):
    """``run()`` fired a state's driving trigger and no row's conditions held."""

    def __init__(self, loop: str, state: str, trigger: str) -> None:
        self.loop, self.state, self.trigger = loop, state, trigger
        super().__init__(f"Loop {loop!r} is stuck in state {state}: no row for its driving trigger {trigger!r} "
                         f"passed its conditions. Add an unconditional row for {trigger!r} from {state} "
                         "(last among its rows), or make the conditions cover every case.")


#: How many loop runs are on the call stack right now.  A run that starts while
#: another is active is *nested*: it runs inside a parent's hook.
_active_runs = [0]


class Dispatcher:
    """Runs one loop's table against the loop's methods.

    ``owner`` is the object whose methods the table names (the loop).  Every
    attribute the hot path touches is a plain attribute, bound once here.
    """

    def __init__(self, table: Table, owner: Any, name: str) -> None:
        self.table = table
        self.owner = owner
        self.name = name
        self.rows: tuple[BoundRow, ...] = bind_rows(table, owner)
        self.row: int | None = None  # see Position: the transition under way
        self.hook = 0
        self.queue: deque[str] = deque()
        self.observer: Callable[[Any], None] | None = None  # called at every transition boundary
        self.output: Any = None  # what the last hook of the transition into END returned
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self.restarting = False
        self._resume: Position | None = None
        self._busy = False
        self._nested = False
        self._finished_on_load = False
        self._driving = {s: table.driving_trigger(s) for s in table.states}
        self._allowed = {s: tuple(dict.fromkeys(r.trigger for r in table.rows if r.source == s))
                         for s in table.states}
        self._allowed[RESTARTING] = (RESTART_TRIGGER,)
        restart = getattr(owner, "on_restart", None)
        self._on_restart = None if restart is None or getattr(restart, "__noop_hook__", False) else restart

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

    # -- running ------------------------------------------------------------------------
    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Fire each state's driving trigger until END; return the END transition's output."""
        if self._busy:
            raise RuntimeError(f"Loop {self.name!r}: run() was called from one of its own hooks; "
                               "fire a trigger with loop.fire(name) instead.")
        if self._finished_on_load:
            self._finished_on_load = False
            return None
        self.args, self.kwargs = args, kwargs
        self._nested = _active_runs[0] > 0
        _active_runs[0] += 1
        try:
            if self.state == END:
                self.state = START  # a finished loop runs again from the top, like Lightning's run()
            if self.state == RESTARTING:
                self._guarded(self._restart)
            driving = self._driving
            while self.state != END:
                trigger = driving[self.state]
                if not self.fire(trigger):
                    raise LoopStuckError(self.name, self.state, trigger)
            return self.output
        finally:
            _active_runs[0] -= 1

    def fire(self, trigger: str) -> bool | None:
        """Process ``trigger`` now, or queue it if a transition is under way (run-to-completion).

        Returns whether a row was taken, or None when queued.  This and
        ``_process``/``_run_hooks`` are the hot path: flat code, no helpers.
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

    def _guarded(self, step: Callable[[], Any]) -> None:
        """Run ``step`` as one run-to-completion unit, with fire()'s failure rule."""
        self._busy = True
        try:
            step()
        except BaseException:
            self._abort()
            raise
        finally:
            self._busy = False

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
        resume = self._resume
        assert resume is not None
        self._enter_restart(resume.state)
        self._resume = None
        self.queue.extend(resume.queue)
        if resume.row is not None:
            bound = self.rows[resume.row]
            result = self._run_hooks(bound, resume.hook)
            self.state = bound.dest
            self._finish_row(bound, result)
        self.restarting = False
        self._drain()

    def _illegal(self, trigger: str) -> IllegalTriggerError:
        return IllegalTriggerError(self.name, self.state, trigger, self._allowed.get(self.state, ()))

    # -- the pieces of one transition ---------------------------------------------------
    def _run_hooks(self, bound: BoundRow, start: int) -> Any:
        """Run the row's hooks whose table index is >= start, keeping the position exact."""
        self.row = bound.index
        args, kwargs, observer = self.args, self.kwargs, self.observer
        result = None
        for fn, takes_args, index, is_last in bound.steps:
            if index < start:
                continue
            self.hook = index
            result = fn(*args, **kwargs) if takes_args else fn()
            self.hook = index + 1
            if observer is not None and not is_last:
                observer(self.owner)  # a boundary between two hooks of one transition
        return result if bound.returns_last else None

    def _finish_row(self, bound: BoundRow, result: Any) -> None:
        self.row, self.hook = None, 0
        if bound.enters_end:
            self.output = result
        # A nested loop that just finished is not a boundary: its parent's hook is still
        # running, and a resume would re-enter that hook and start the child over.  The
        # parent's next boundary comes as soon as the hook returns.
        if self.observer is not None and not (self._nested and bound.enters_end):
            self.observer(self.owner)  # a boundary between two transitions

    def _process(self, trigger: str) -> bool:  # pragma: no cover - engines override
        raise NotImplementedError

    def _enter_restart(self, state: str) -> None:  # pragma: no cover - engines override
        raise NotImplementedError


class DirectDispatcher(Dispatcher):
    """The table compiled to dict lookups: the hot-path engine."""

    def __init__(self, table: Table, owner: Any, name: str) -> None:
        self.state = START
        super().__init__(table, owner, name)
        lookup: dict[str, dict[str, list[BoundRow]]] = {state: {} for state in table.states}
        for bound in self.rows:
            lookup[bound.row.source].setdefault(bound.row.trigger, []).append(bound)
        # state -> trigger -> candidate rows, in table order
        self._lookup = {state: {t: tuple(rows) for t, rows in by_trigger.items()}
                        for state, by_trigger in lookup.items()}
        # state -> the candidate rows of its driving trigger: all run() ever needs
        self._plan = {state: self._lookup[state].get(trigger, ()) for state, trigger in self._driving.items()
                      if trigger is not None}

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The shared ``run()`` rules with fire/_process/_run_hooks/_finish_row inlined.

        A training step runs several loops, so this loop is the hot path: one
        Python frame per ``run()`` instead of four per transition.  Restarts,
        re-entrant calls and finished-on-load runs take the general path.  The
        property tests hold both paths (and the transitions engine) to one oracle.
        """
        if self._busy or self._finished_on_load or self.state == RESTARTING:
            return super().run(args, kwargs)
        self.args, self.kwargs = args, kwargs
        nested = self._nested = _active_runs[0] > 0
        _active_runs[0] += 1
        try:
            if self.state == END:
                self.state = START
            plan, owner, queue = self._plan, self.owner, self.queue
            while self.state != END:
                bound = self._take(plan[self.state])
                self._busy = True
                try:
                    self.row = bound.index
                    observer = self.observer
                    result = None
                    for fn, takes_args, index, is_last in bound.steps:
                        self.hook = index
                        result = fn(*args, **kwargs) if takes_args else fn()
                        self.hook = index + 1
                        if observer is not None and not is_last:
                            observer(owner)
                    self.state = bound.dest
                    self.row, self.hook = None, 0
                    if bound.enters_end:
                        self.output = result if bound.returns_last else None
                    if observer is not None and not (nested and bound.enters_end):
                        observer(owner)
                    if queue:
                        self._drain()
                except BaseException:
                    self._abort()
                    raise
                finally:
                    self._busy = False
            return self.output
        finally:
            _active_runs[0] -= 1

    def _take(self, candidates: tuple[BoundRow, ...]) -> BoundRow:
        """The first row whose guards pass, or LoopStuckError (nothing has changed yet)."""
        for bound in candidates:
            check = bound.check
            if check is None or check():
                return bound
        state = self.state
        raise LoopStuckError(self.name, state, self._driving[state])

    def _process(self, trigger: str) -> bool:
        by_trigger = self._lookup.get(self.state)
        candidates = by_trigger.get(trigger) if by_trigger is not None else None
        if candidates is None:
            raise self._illegal(trigger)
        for bound in candidates:
            check = bound.check
            if check is not None and not check():
                continue
            result = self._run_hooks(bound, 0)
            self.state = bound.dest
            self._finish_row(bound, result)
            return True
        return False

    def _enter_restart(self, state: str) -> None:
        if self._on_restart is not None:
            self._on_restart()
        self.state = state


class _Model:
    """The object ``transitions`` keeps the state on, so it decorates this and not the user's loop."""

    state: str


class TransitionsDispatcher(Dispatcher):
    """The reference engine: every transition goes through a ``transitions.Machine``."""

    def __init__(self, table: Table, owner: Any, name: str) -> None:
        self._model = _Model()
        self._machine = Machine(model=self._model, states=[*table.states, RESTARTING], initial=START,
                                auto_transitions=False, send_event=False, queued=False, name=name)
        super().__init__(table, owner, name)
        self._result: Any = None
        self._start = 0
        for bound in self.rows:
            row = bound.row
            self._machine.add_transition(row.trigger, row.source, row.dest,
                                         conditions=list(bound.conditions), unless=list(bound.unless),
                                         before=partial(self._before, bound), after=partial(self._after, bound))
        for state in table.states:
            if state != END:
                self._machine.add_transition(RESTART_TRIGGER, RESTARTING, state,
                                             conditions=partial(self._resumes_to, state),
                                             before=self._before_restart)

    @property  # type: ignore[override]
    def state(self) -> str:
        return self._model.state

    @state.setter
    def state(self, value: str) -> None:
        self._machine.set_state(value, model=self._model)

    def _before(self, bound: BoundRow) -> None:
        self._result = self._run_hooks(bound, 0)

    def _after(self, bound: BoundRow) -> None:
        self._finish_row(bound, self._result)

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
