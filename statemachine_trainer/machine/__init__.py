"""The machine core: loops as explicit finite-state machines.  Imports no torch.

Theory of operation
-------------------
A loop is a finite-state machine described by a :class:`Table` -- states and
rows ``(trigger, source, dest, conditions, unless, hooks)`` -- plus the hook
methods the rows name.  Tables are data: built once, validated at definition
(:class:`TableError` names the row and the fix), compared with ``specs/``,
drawn by :mod:`~statemachine_trainer.machine.diagram`.

Every hook is fired by one dispatcher, in one order.  When trigger *T* fires
in state *S*:

1. If no row leaves *S* on *T*, :class:`IllegalTriggerError` is raised and
   nothing changes.
2. Candidate rows are tried in table order; the first whose ``conditions`` all
   hold and whose ``unless`` guards all fail is taken.  If none is, nothing
   happens (``run()`` reports a loop that is stuck this way).
3. The row's hooks run in order, with the loop still in *S*.  Hooks declared
   with parameters receive the arguments given to ``run()``.
4. Only when every hook has returned does the state become the row's dest.
5. Triggers fired from inside hooks (or conditions, or the observer) are
   queued and processed afterwards, in order (run-to-completion: a transition
   is never interleaved with another; a whole ``run()`` is one such unit).

This is the ``transitions`` package's callback order (prepare -> conditions ->
before -> exit -> enter -> after) with the hooks in ``before``; the
``"transitions"`` engine literally runs it on a ``transitions.Machine``, the
default ``"direct"`` engine runs a compiled copy of the same table, and the
property tests hold the two to the same hook sequences.

**Failure is part of the machine.**  If a hook raises, the exception propagates
and the loop stays in the transition's source state with nothing queued --
as if the trigger had not fired, except for what the hooks that already ran
did.  A state change is never half-done.

**Positions.**  A loop's exact place is a :class:`~statemachine_trainer.state.Position`:
its state, and while a transition runs, which row and which hook.  A parent's
hook that runs a child loop is "under way" for as long as the child runs, so
the whole tree's place -- the *state set* -- is every loop's position plus its
progress and fields.  A *transition boundary* is a point between two
transitions or between two hooks of one; an observer set with
``Loop.observe`` on a tree's root is called at each, and that is where
checkpoints are taken.  The end of a sub-loop's run is not one: its parent's
hook is still running, and a resume from there would re-enter that hook and
start the child over.  Which loops are sub-loops is a fact about the observed
tree, not about the call stack.

**Resume.**  ``load_state_dict`` puts a loop saved mid-run into RESTARTING (the
history pseudostate); ``run()`` then fires the built-in ``restart`` transition
back to the saved state (hook ``on_restart``), re-runs the saved row from the
saved hook, and carries on.  A parent re-enters the hook that was running its
child, and the child resumes in turn.  Nothing is inferred from counters.  A
loop saved *between* two transitions meets that boundary again first (the
observer is called there before the next transition), so a checkpoint asked for
while resuming holds exactly the state that was loaded.
"""

from ._binding import abstract_hook, noop_hook
from ._dispatch import (
    DirectDispatcher,
    Dispatcher,
    FinishedRunWarning,
    IllegalTriggerError,
    LoopStuckError,
    TransitionsDispatcher,
)
from ._loop import LOOP_TABLE, Loop
from ._table import ADVANCE, END, RESTARTING, STANDARD_STATES, START, Row, Table, TableError

__all__ = [
    "ADVANCE",
    "END",
    "LOOP_TABLE",
    "RESTARTING",
    "STANDARD_STATES",
    "START",
    "DirectDispatcher",
    "Dispatcher",
    "FinishedRunWarning",
    "IllegalTriggerError",
    "Loop",
    "LoopStuckError",
    "Row",
    "Table",
    "TableError",
    "TransitionsDispatcher",
    "abstract_hook",
    "noop_hook",
]
