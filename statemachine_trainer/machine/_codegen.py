"""A trigger's candidate rows as one generated Python function: the direct engine's hot path.

Why generate code.  Training takes about eight transitions per step, and a
transition is a handful of hook calls.  Interpreting a bound row -- a loop
over ``(fn, takes_args, index, after, between)`` tuples, the guards behind
one more call -- costs about a hundred bytecodes per transition, more than
the hooks themselves do in a tiny model's step.  Written out per row, the
same rules are a straight line of attribute stores and calls: each hook
called directly, its arguments decided once, the guards inlined in table
order, the bookkeeping that cannot change left out.

What the generated function does is exactly what the rules in
``_dispatch`` say a transition does, nothing more: for the first candidate
whose conditions all hold and whose ``unless`` guards all fail (in table
order, short-circuit), set ``row``; for each kept hook set ``hook`` to its
table index, call it (with ``run()``'s arguments if it takes them), set
``hook`` past it, and call the observer at the boundary between two hooks
(the stores that cannot be seen are left out: ``hook`` is 0 between
transitions, and nothing runs between the last hook and the row's end);
then move to the destination state, clear ``row``/``hook``, keep the output
of a transition into END, and call the observer at the boundary after the
transition (not after a nested loop's END: its parent's hook is still
running).  It returns True, or False when no candidate's guards passed.
The observer is read afresh at every boundary: a hook may install one.

The source is kept on the function (``__source__``) and registered with
``linecache`` under a name that says which loop, state and trigger it is,
so a traceback through it shows the line that called the failing hook.
The transitions engine stays the reference: the property tests run random
tables through both and compare every hook call and position.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable, Sequence
from typing import Any

from ._binding import BoundRow

__all__ = ["compile_choice"]

#: The generated code's own names: a hook or condition called so gets a suffix.
_RESERVED = frozenset({"d", "make", "observer", "result", "take"})


def compile_choice(dispatcher: Any, candidates: Sequence[BoundRow], label: str) -> Callable[[], bool]:
    """One function taking the first of ``candidates`` whose guards pass; False when none does.

    ``dispatcher`` is the object whose ``row``, ``hook``, ``state``,
    ``output``, ``observer``, ``owner``, ``nested``, ``args`` and ``kwargs``
    the transition reads and writes; ``label`` names the function in tracebacks.
    """
    names: dict[str, Any] = {}  # the free variables of the generated function, by the table's names

    def bind(name: str, value: Any) -> str:
        """A variable for ``value`` named as the table names it (a traceback line reads ``advance()``)."""
        if name in _RESERVED or names.get(name, value) is not value:
            name = f"{name}_{len(names)}"
        names[name] = value
        return name

    lines: list[str] = []
    for bound in candidates:
        guard = _guard(bound, bind)
        body = _row(bound, bind)
        if guard is None:
            lines += body
            break  # an unguarded candidate is always taken: the ones after it can never be
        lines.append(f"if {guard}:")
        lines += ["    " + line for line in body]
    else:
        lines.append("return False")
    return _build(label, lines, names, dispatcher)


def _guard(bound: BoundRow, bind: Callable[[str, Any], str]) -> str | None:
    """The row's guards as one short-circuit expression in table order; None when it has none."""
    row = bound.row
    terms = [f"{bind(name, condition)}()" for name, condition in zip(row.conditions, bound.conditions)]
    terms += [f"not {bind(name, guard)}()" for name, guard in zip(row.unless, bound.unless)]
    return " and ".join(terms) or None


def _row(bound: BoundRow, bind: Callable[[str, Any], str]) -> list[str]:
    """The statements that take ``bound`` once its guards passed (see the module docstring)."""
    lines = [f"d.row = {bound.index}"]
    # What d.hook holds at this point of the row.  Between transitions it is 0 (every row ends by setting it so, and
    # so do restore and a failed transition), so a row whose first kept hook is hook 0 need not set it.
    hook = 0
    keep_output = bound.enters_end and bound.returns_last
    last = len(bound.steps) - 1
    for k, (fn, takes_args, index, after, between) in enumerate(bound.steps):
        if index != hook:
            lines.append(f"d.hook = {index}")
        name = bind(bound.row.hooks[index], fn)
        call = f"{name}(*d.args, **d.kwargs)" if takes_args else f"{name}()"
        lines.append(f"result = {call}" if keep_output and k == last else call)
        if k == last:
            break  # the row's end sets d.hook = 0 next: nothing can read the index past its last hook
        lines.append(f"d.hook = {after}")
        hook = after
        if between:
            lines += ["if d.observer is not None:", "    d.observer(d.owner)"]
    lines += [f"d.state = {bound.dest!r}", "d.row = None", "d.hook = 0"]
    if bound.enters_end:
        lines.append("d.output = result" if keep_output else "d.output = None")
        lines += ["if d.nested:", "    return True"]  # a nested loop's END is not a boundary
    lines += ["observer = d.observer", "if observer is not None:", "    observer(d.owner)", "return True"]
    return lines


def _build(label: str, lines: list[str], names: dict[str, Any], dispatcher: Any) -> Callable[[], bool]:
    """Compile ``lines`` as the body of a function whose free variables are ``names`` and ``d`` (closure cells)."""
    params = ", ".join(["d", *names])
    body = "\n".join("        " + line for line in lines)
    source = f"def make({params}):\n    def take():\n{body}\n    return take\n"
    namespace: dict[str, Any] = {}
    exec(_code(label, source), namespace)  # noqa: S102 - our own generated source, no user text
    take = namespace["make"](dispatcher, *names.values())
    take.__source__ = source
    take.__qualname__ = take.__name__ = f"take[{label}]"
    return take


#: (label, source) -> its code.  Every loop instance of a class generates the same source (only the callables
#: bound into it differ), so each is compiled and registered with linecache once per process, not per Trainer.
_CODE: dict[tuple[str, str], Any] = {}


def _code(label: str, source: str) -> Any:
    code = _CODE.get((label, source))
    if code is None:
        filename = f"<statemachine_trainer {label} #{len(_CODE)}>"
        code = _CODE[label, source] = compile(source, filename, "exec")
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    return code
