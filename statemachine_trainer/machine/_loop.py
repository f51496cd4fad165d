"""``Loop``: a class whose behaviour is its transition table.

A loop is three things: a table (class attribute ``table``), the hook methods
the table names, and state -- its machine ``position``, a ``progress`` tracker
and its own ``fields`` (attrs classes named by ``progress_class`` and
``fields_class``).  Sub-loops are plain attributes holding other loops; a
parent runs a child by calling ``child.run(...)`` inside one of its hooks.

The default table is Lightning 1.5's ``run()`` written down as data::

    START    --run [skip]-->         END       / on_skip
    START    --run-->                ADVANCE   / reset, on_run_start
    ADVANCE  --advance [done]-->     END       / on_run_end
    ADVANCE  --advance-->            ADVANCE   / on_advance_start, advance, on_advance_end

so a subclass that overrides ``advance`` and ``done`` behaves as it would
there, and a loop with its own states replaces ``table`` wholesale.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import attrs

from ..state import (
    LoopState,
    NoFields,
    Position,
    Progress,
    StateError,
    StateSet,
    check_json,
    structure_state_set,
    unstructure_state_set,
)
from ._binding import HookWrapper, abstract_hook, check_names, noop_hook
from ._dispatch import ENGINES, Dispatcher
from ._table import ADVANCE, END, START, Row, Table, TableError

__all__ = ["LOOP_TABLE", "Loop"]

LOOP_TABLE = Table(
    name="Loop",
    states=(START, ADVANCE, END),
    rows=(
        Row("run", START, END, conditions="skip", hooks="on_skip"),
        Row("run", START, ADVANCE, hooks=("reset", "on_run_start")),
        Row("advance", ADVANCE, END, conditions="done", hooks="on_run_end"),
        Row("advance", ADVANCE, ADVANCE, hooks=("on_advance_start", "advance", "on_advance_end")),
    ),
)


def _snake(name: str) -> str:
    """``KFoldCV`` -> ``k_fold_cv``, ``MLPLoop`` -> ``mlp_loop``: acronyms stay one word."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class Loop:
    """Base class of every loop.  Override hooks, or give a new ``table``.

    Class attributes (checked when the subclass is defined):

    * ``table`` -- the :class:`Table`; every hook and condition it names must be
      a method / property of the class (``TableError`` at definition otherwise).
    * ``progress_class`` / ``fields_class`` -- attrs classes of the loop's state.
    * ``engine`` -- ``"direct"`` (compiled, default) or ``"transitions"``.
    * ``checkpointed`` -- False for a loop that is never part of a state set
      (the Trainer's entry loops, which run *around* the tree a checkpoint
      holds): it is never restored, so diagrams draw no RESTARTING for it.

    Pass ``abstract=True`` in the class statement to skip the checks for a base
    class meant to be subclassed further.
    """

    table: ClassVar[Table] = LOOP_TABLE
    progress_class: ClassVar[type] = Progress
    fields_class: ClassVar[type] = NoFields
    engine: ClassVar[str] = "direct"
    checkpointed: ClassVar[bool] = True

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.table, Table):
            raise TableError(f"{cls.__name__}.table must be a Table, got {type(cls.table).__name__}; build it "
                             "with Table(states=..., rows=[Row(...), ...]) or Table.from_dict(data).")
        for attr in ("progress_class", "fields_class"):
            value = getattr(cls, attr)
            if not (isinstance(value, type) and attrs.has(value)):
                raise TypeError(f"{cls.__name__}.{attr} must be an attrs class (decorate it with @attrs.define), "
                                f"got {value!r}.")
        if cls.engine not in ENGINES:
            raise ValueError(f"{cls.__name__}.engine must be one of {sorted(ENGINES)}, got {cls.engine!r}.")
        if not abstract:
            check_names(cls.table, cls)

    def __init__(self) -> None:
        self.progress = self.progress_class()
        self.fields = self.fields_class()
        self.name = _snake(type(self).__name__)
        self._machine: Dispatcher = ENGINES[self.engine](self.table, self, type(self).__name__)

    # -- running --------------------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the table from where the loop is until END; return what the END transition's last hook returned.

        Hooks that declare parameters receive ``*args, **kwargs``; the others are
        called with none.  A loop restored mid-run resumes where it was saved.
        """
        return self._machine.run(args, kwargs)

    def fire(self, trigger: str) -> bool | None:
        """Fire an event.  From inside a hook it is queued and runs after the current transition."""
        return self._machine.fire(trigger)

    @property
    def state(self) -> str:
        """The name of the state the loop's machine is in (RESTARTING after a mid-run load)."""
        return self._machine.state

    @property
    def position(self) -> Position:
        return self._machine.position

    @property
    def between_transitions(self) -> bool:
        """No transition of this loop is under way: ``position.row is None`` without building the Position.

        For observers that ask at every boundary (a dozen per training step
        under DDP).  A loop waiting in RESTARTING is between transitions of
        none of its states: read its ``position``.
        """
        return self._machine.row is None

    @property
    def running(self) -> bool:
        """True while this loop's ``run()`` (or a ``fire()``) is under way: inside its hooks and its children's runs."""
        return self._machine.busy

    @property
    def restarting(self) -> bool:
        """True from a mid-run ``load_state_dict`` until the resumed transition has completed."""
        return self._machine.restarting

    def abandon_run(self) -> None:
        """Put this loop (not its sub-loops) back at START, keeping progress and fields; the next run starts afresh.

        For a run an exception left inside a transition (the machine stays in
        the failed row's source state): the Trainer's entry loops start over
        this way, and so does an evaluation tree.  Only between runs.
        """
        self._machine.restore(Position(START))

    def skip_hooks(self, names: Iterable[str]) -> None:
        """Leave the hooks ``names`` out of this loop's rows until the next call: work out once what a run needs.

        For a hook that does nothing in the coming run -- e.g. one that
        forwards to a user hook nobody overrides -- so the hot path does not
        call it.  Positions keep counting hooks by table index, so checkpoints
        are the same either way.  Only between runs; ``skip_hooks(())`` binds
        every hook again.
        """
        unknown = sorted(set(names) - {hook for row in self.table.rows for hook in row.hooks})
        if unknown:
            raise ValueError(f"{type(self).__name__}.skip_hooks: {unknown} are not hooks of its table.")
        self._machine.rebind(frozenset(names))

    def profile(self, wrap: HookWrapper | None) -> None:
        """Fire every hook of this loop and its sub-loops through ``wrap(action, fn)`` (None: stop profiling).

        The Trainer passes a profiler's ``wrap`` (``Trainer(profiler="simple")``),
        which times each hook as ``"LoopClass.hook"``.  The wrapped callables are
        bound once, here, so a loop that is not profiled runs exactly the code it
        runs without this method.  Only between runs.
        """
        for _, loop in self.walk():
            loop._machine.wrap_hooks(wrap)

    def observe(self, observer: Callable[[Loop], None] | None) -> None:
        """Call ``observer(loop)`` at every transition boundary of this loop and its sub-loops.

        A boundary is a point between two transitions, or between two hooks of
        one transition: the points a checkpoint may capture.  This loop is the
        root of the observed tree; the end of a sub-loop's run is not a
        boundary, because its parent's hook is still running then.
        """
        self._observe(observer, nested=False)

    def observe_alone(self, observer: Callable[[Loop], None] | None) -> None:
        """Call ``observer(self)`` at this loop's own boundaries only; its sub-loops keep theirs.

        For an observer that acts at one loop's boundaries (the ranks' preemption
        vote at the epoch loop's batch ends): the rest of the tree's boundaries,
        a dozen per training step, then cost nothing.  Call it after
        :meth:`observe` on the root, which marks the loops below the root as
        nested (their END is not a boundary).
        """
        self._machine.observer = observer

    def _observe(self, observer: Callable[[Loop], None] | None, nested: bool) -> None:
        """Observe this subtree; ``nested`` says whether this loop is itself a sub-loop of the observed tree."""
        for _, loop in self.walk():
            loop._machine.observer = observer
            loop._machine.nested = nested or loop is not self  # every loop below the root runs in a hook

    # -- hooks (no-ops unless overridden; the dispatcher skips the no-ops) -----------------
    @property
    def skip(self) -> bool:
        """Whether ``run()`` should return at once (through ``on_skip``)."""
        return False

    @property
    @abstract_hook
    def done(self) -> bool:
        """Whether the loop has finished; checked before every advance."""
        raise NotImplementedError

    @noop_hook
    def on_skip(self) -> Any:
        """Called instead of a run when ``skip`` is true; its return value is run()'s."""

    @noop_hook
    def reset(self) -> None:
        """Called at the start of every run, before ``on_run_start``."""

    @noop_hook
    def on_run_start(self, *args: Any, **kwargs: Any) -> None:
        """Called once per run, after ``reset``."""

    @noop_hook
    def on_advance_start(self, *args: Any, **kwargs: Any) -> None:
        """Called before every ``advance``."""

    @abstract_hook
    def advance(self, *args: Any, **kwargs: Any) -> None:
        """One step of the loop."""
        raise NotImplementedError

    @noop_hook
    def on_advance_end(self) -> None:
        """Called after every ``advance``."""

    @noop_hook
    def on_run_end(self) -> Any:
        """Called once when ``done``; its return value is run()'s."""

    @noop_hook
    def on_restart(self) -> None:
        """Called when ``run()`` resumes a loop restored mid-run, before it continues."""

    def resume_position(self, saved: Position) -> Position:
        """Where this loop, as the root of a loaded tree, resumes from when it was saved at ``saved``.

        The default is ``saved``: a root saved at END holds a finished run, and
        its next ``run()`` does nothing.  A loop whose end depends on flags that
        may change between runs (the fit loop's ``max_epochs``) returns the
        state that checks them again.
        """
        return saved

    def teardown(self) -> None:
        """Release resources; the default tears down every sub-loop."""
        for child in self.children().values():
            child.teardown()

    def on_save_checkpoint(self) -> dict[str, Any]:
        """Extra JSON-able state to persist for this loop (beyond position, progress, fields)."""
        return {}

    def on_load_checkpoint(self, state: dict[str, Any]) -> None:
        """Receive what ``on_save_checkpoint`` returned."""

    # -- the tree ------------------------------------------------------------------------
    def children(self) -> dict[str, Loop]:
        """Sub-loops by attribute name, in the order they were set.

        Attributes whose names start with ``_`` are not sub-loops, so a loop may
        keep a private reference to its parent without making the tree cyclic.
        """
        return {name: value for name, value in vars(self).items()
                if isinstance(value, Loop) and not name.startswith("_")}

    def walk(self, prefix: str | None = None) -> Iterator[tuple[str, Loop]]:
        """Yield ``(path, loop)`` for this loop and every sub-loop, parents first."""
        path = self.name if prefix is None else prefix
        yield path, self
        for name, child in self.children().items():
            yield from child.walk(f"{path}.{name}")

    def active_path(self) -> tuple[str, ...]:
        """The tree's position as a path, e.g. ``('fit.ADVANCE', 'fit.epoch_loop.ADVANCE')``.

        Lists every loop that is mid-run (not idle at START or END), parents first.
        """
        out = []
        for path, loop in self.walk():
            pos = loop.position
            if pos.row is not None or pos.queue or pos.state not in (START, END):
                out.append(f"{path}.{pos}")
        return tuple(out)

    def connect(self, **loops: Loop) -> None:
        """Swap sub-loops for the given instances (the names must be existing sub-loops)."""
        current = self.children()
        for name, loop in loops.items():
            if name not in current:
                known = ", ".join(current) or "none"
                raise AttributeError(f"{type(self).__name__} has no sub-loop named {name!r} (its sub-loops: "
                                     f"{known}); connect only replaces existing sub-loops.")
            if not isinstance(loop, Loop):
                raise TypeError(f"{type(self).__name__}.connect({name}=...) needs a Loop instance, got "
                                f"{type(loop).__name__}; pass a class to replace() instead.")
        observer = self._machine.observer
        for name, loop in loops.items():
            setattr(self, name, loop)
            loop._observe(observer, nested=True)  # a sub-loop now, watched like the rest of the tree

    def replace(self, **loops: Loop | type[Loop]) -> None:
        """Swap sub-loops for instances or classes; classes are built with the old loop's arguments.

        A class must take the same ``__init__`` parameters as the loop it
        replaces; the old loop's own sub-loops are carried over where the new
        loop has a sub-loop of the same name.
        """
        current = self.children()
        new_loops = {}
        for name, loop_or_class in loops.items():
            if name not in current:
                raise AttributeError(f"{type(self).__name__} has no sub-loop named {name!r} (its sub-loops: "
                                     f"{', '.join(current) or 'none'}).")
            old = current[name]
            loop = _instantiate_like(self, name, old, loop_or_class) if isinstance(loop_or_class, type) \
                else loop_or_class
            carried = {n: c for n, c in old.children().items() if n in loop.children()}
            loop.connect(**carried)
            new_loops[name] = loop
        self.connect(**new_loops)

    # -- state ---------------------------------------------------------------------------
    def state_schema(self) -> dict[str, tuple[type, type]]:
        return {path: (loop.progress_class, loop.fields_class) for path, loop in self.walk()}

    def state_set(self) -> StateSet:
        """A snapshot (deep copy) of where this loop and its sub-loops are."""
        return StateSet(loops={path: loop._own_state(path).copy() for path, loop in self.walk()})

    def state_dict(self) -> dict[str, Any]:
        """The state set as JSON-able data (``json.dumps`` works on it)."""
        return unstructure_state_set(StateSet(loops={p: lp._own_state(p) for p, lp in self.walk()}))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the tree from ``state_dict()`` data; all of it is checked before any of it is applied."""
        self._apply_state_set(self.check_state_dict(state))

    def check_state_dict(self, state: Mapping[str, Any]) -> StateSet:
        """The state set ``state`` describes, checked against this tree; StateError names the first misfit."""
        state_set = structure_state_set(state, self.state_schema())
        self._check_state_set(state_set)
        return state_set

    def _check_state_set(self, state_set: StateSet) -> None:
        loops = dict(self.walk())
        if set(loops) != set(state_set.loops):
            missing = sorted(set(loops) - set(state_set.loops))
            extra = sorted(set(state_set.loops) - set(loops))
            raise StateError(f"$.loops: the state set does not match this loop tree (missing {missing}, "
                             f"unexpected {extra}); load it into the tree that saved it.")
        for path, loop in loops.items():
            _check_position(loop, path, state_set.loops[path].position)

    def _apply_state_set(self, state_set: StateSet) -> None:
        for path, loop in self.walk():
            own = state_set.loops[path].copy()
            loop.progress, loop.fields = own.progress, own.fields
            position = loop.resume_position(own.position) if loop is self else own.position
            loop._machine.restore(position, root=loop is self)
            loop.on_load_checkpoint(own.extra)

    def _own_state(self, path: str) -> LoopState:
        extra = self.on_save_checkpoint()
        check_json(extra, f"$.loops[{path!r}].extra")
        # A JSON round trip, so what is kept equals what a file would give back (tuples become lists).
        return LoopState(self.position, self.progress, self.fields, json.loads(json.dumps(extra)))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {self.position}>"


def _instantiate_like(parent: Loop, name: str, old: Loop, cls: type[Loop]) -> Loop:
    old_params = inspect.signature(type(old).__init__).parameters
    new_params = inspect.signature(cls.__init__).parameters
    if list(old_params) != list(new_params):
        raise TypeError(f"{type(parent).__name__}.replace({name}={cls.__name__}) needs {cls.__name__}.__init__ to "
                        f"take the same parameters as {type(old).__name__}.__init__ "
                        f"({', '.join(list(old_params)[1:]) or 'none'}), but it takes "
                        f"({', '.join(list(new_params)[1:]) or 'none'}). Match the signature, or pass an "
                        "instance instead of the class.")
    kwargs = {}
    for param in list(old_params.values())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(old, param.name):
            raise TypeError(f"{type(parent).__name__}.replace({name}={cls.__name__}) cannot rebuild the loop: "
                            f"{type(old).__name__} does not keep its argument {param.name!r} as an attribute. "
                            "Store it as self.{0} in __init__, or pass an instance.".format(param.name))
        kwargs[param.name] = getattr(old, param.name)
    return cls(**kwargs)


def _check_position(loop: Loop, path: str, position: Position) -> None:
    table, where = loop.table, f"$.loops[{path!r}].position"
    fix = f"it was saved by a different table than {type(loop).__name__}'s; load it into the loop class that saved it"
    if position.state not in table.states:
        raise StateError(f"{where}.state: {position.state!r} is not a state of {type(loop).__name__}'s table "
                         f"({', '.join(table.states)}); {fix}.")
    if position.row is not None:
        if not 0 <= position.row < len(table.rows) or table.rows[position.row].source != position.state:
            raise StateError(f"{where}.row: row {position.row} is not a transition out of {position.state} in "
                             f"{type(loop).__name__}'s table; {fix}.")
        if position.hook > len(table.rows[position.row].hooks):
            raise StateError(f"{where}.hook: row {position.row} has only "
                             f"{len(table.rows[position.row].hooks)} hooks, not {position.hook}; {fix}.")
    unknown = [t for t in position.queue if t not in table.triggers]
    if unknown:
        raise StateError(f"{where}.queue: unknown trigger(s) {unknown}; {fix}.")
