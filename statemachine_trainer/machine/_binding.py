"""Resolve a table's names to callables, once per loop instance.

The dispatcher never looks a hook up by name while running: this module turns
every row into a :class:`BoundRow` holding the callables themselves, drops the
hooks the loop did not override (they are library no-ops, so firing them would
only cost time) and records which hooks want the arguments given to ``run()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs

from ._table import END, Row, Table, TableError

__all__ = ["BoundRow", "HookWrapper", "abstract_hook", "bind_rows", "check_names", "noop_hook"]

_NOOP = "__noop_hook__"


def noop_hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a base-class hook whose body does nothing, so dispatch can skip it."""
    setattr(fn, _NOOP, True)
    return fn


def abstract_hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a hook a concrete loop must override when its table names it."""
    fn.__isabstractmethod__ = True  # type: ignore[attr-defined]
    return fn


@attrs.frozen
class BoundRow:
    """A row with its names resolved for one loop instance.

    ``hooks`` pairs each callable with whether it takes ``run()``'s arguments;
    ``hook_index`` maps each kept hook back to its position in the table row,
    so positions saved in a checkpoint use table indices, whatever was skipped.
    """

    index: int
    row: Row
    conditions: tuple[Callable[[], Any], ...]
    unless: tuple[Callable[[], Any], ...]
    hooks: tuple[tuple[Callable[..., Any], bool], ...]
    hook_index: tuple[int, ...]
    returns_last: bool  # the row's last table hook is kept, so its return value is the row's output
    # Derived once for the hot path:
    dest: str = attrs.field(init=False)
    enters_end: bool = attrs.field(init=False)
    # (fn, takes_args, table index, the index once it returned, a boundary follows in the row) per kept hook:
    # what the transitions engine iterates and ``_codegen`` writes out, everything it needs per hook worked out here
    steps: tuple[tuple[Callable[..., Any], bool, int, int, bool], ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        last = len(self.hooks) - 1
        object.__setattr__(self, "dest", self.row.dest)
        object.__setattr__(self, "enters_end", self.row.dest == END)
        object.__setattr__(self, "steps", tuple((fn, takes, self.hook_index[k], self.hook_index[k] + 1, k != last)
                                                for k, (fn, takes) in enumerate(self.hooks)))

    def resumed(self, hook: int) -> BoundRow:
        """The row as a resume finishes it: no guards (it was taken before the save), hooks from table index ``hook``.

        Positions count hooks by table index, so a saved ``hook`` may name a
        no-op hook that was never bound; the rest of the row runs all the same.
        """
        kept = [k for k, index in enumerate(self.hook_index) if index >= hook]
        return BoundRow(index=self.index, row=self.row, conditions=(), unless=(),
                        hooks=tuple(self.hooks[k] for k in kept), hook_index=tuple(self.hook_index[k] for k in kept),
                        returns_last=self.returns_last)


def _static(cls: type, name: str) -> Any:
    try:
        return inspect.getattr_static(cls, name)
    except AttributeError:
        return None


def check_names(table: Table, cls: type) -> None:
    """Every hook must be a method of ``cls`` and every condition a property or method.

    Called when a loop class is defined, so a typo fails at import, not an hour
    into training.
    """
    for i, row in enumerate(table.rows):
        label = f"{cls.__name__}: row {i} ({row})"
        for name in row.hooks:
            attr = _static(cls, name)
            if attr is None or isinstance(attr, property) or not callable(getattr(cls, name)):
                raise TableError(f"{label} names hook {name!r}, which is not a method of {cls.__name__}; "
                                 f"define `def {name}(self): ...` or fix the name in the table.")
            if getattr(getattr(cls, name), "__isabstractmethod__", False):
                raise TableError(f"{label} names hook {name!r}, which {cls.__name__} must implement; "
                                 f"define `def {name}(self, *args, **kwargs): ...`.")
        for name in (*row.conditions, *row.unless):
            attr = _static(cls, name)
            if isinstance(attr, property):
                if getattr(attr.fget, "__isabstractmethod__", False):
                    raise TableError(f"{label} names condition {name!r}, which {cls.__name__} must "
                                     f"implement; define `@property def {name}(self) -> bool`.")
                continue
            if attr is None or not callable(getattr(cls, name)):
                raise TableError(f"{label} names condition {name!r}, which is neither a property nor a "
                                 f"method of {cls.__name__}; define `@property def {name}(self) -> bool`.")


def _condition(owner: Any, name: str) -> Callable[[], Any]:
    attr = _static(type(owner), name)
    if isinstance(attr, property):
        return attr.fget.__get__(owner)  # type: ignore[union-attr]
    return getattr(owner, name)


def _takes_args(fn: Callable[..., Any]) -> bool:
    """Hooks declared with parameters receive run()'s arguments (Lightning's convention)."""
    try:
        return bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins without signatures: pass nothing
        return False


#: ``wrap(action, fn)`` returns what to call instead of ``fn`` (a profiler's timing); action is "Class.hook".
HookWrapper = Callable[[str, Callable[..., Any]], Callable[..., Any]]


def bind_rows(table: Table, owner: Any, skip: frozenset[str] = frozenset(),
              wrap: HookWrapper | None = None) -> tuple[BoundRow, ...]:
    """Resolve every row of ``table`` against ``owner``; once per loop instance, and again per ``skip`` set.

    Library no-ops and the hooks named in ``skip`` are left out (see ``Loop.skip_hooks``).  With ``wrap``
    (see ``Loop.profile``) each kept hook is bound wrapped, so the dispatcher's hot path is the same code
    with or without it: a run that does not profile pays nothing.
    """
    bound = []
    for i, row in enumerate(table.rows):
        hooks, kept = [], []
        for j, name in enumerate(row.hooks):
            fn = getattr(owner, name)
            if name in skip or getattr(fn, _NOOP, False):
                continue
            takes = _takes_args(fn)
            hooks.append((fn if wrap is None else wrap(f"{type(owner).__name__}.{name}", fn), takes))
            kept.append(j)
        bound.append(BoundRow(
            index=i, row=row,
            conditions=tuple(_condition(owner, n) for n in row.conditions),
            unless=tuple(_condition(owner, n) for n in row.unless),
            hooks=tuple(hooks), hook_index=tuple(kept),
            returns_last=bool(kept) and kept[-1] == len(row.hooks) - 1))
    return tuple(bound)
