"""Draw tables and loop trees as Mermaid or Graphviz DOT text, from the tables themselves.

Nothing here runs a loop or needs the graphviz binary: the diagram is the
table, printed.  A loop *tree* is drawn as nested composite states (Mermaid)
or clusters (DOT), one per loop, labelled with its path and class.

RESTARTING is drawn too, with a dashed ``restart`` edge to every state a run
can be saved in: the dispatcher's built-in way back after a resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._loop import Loop
from ._table import END, RESTART_TRIGGER, RESTARTING, START, Table

__all__ = ["to_dot", "to_mermaid"]


def _rows(table: Table, restartable: bool = True) -> Iterator[tuple[str, str, str]]:
    for row in table.rows:
        yield row.source, row.dest, row.label()
    if restartable:
        for state in table.states:
            if state != END:
                yield RESTARTING, state, RESTART_TRIGGER


def _restartable(obj: Any) -> bool:
    """Whether a drawn loop can be restored (and so resumes through RESTARTING): not the entry loops."""
    cls = obj if isinstance(obj, type) else type(obj)
    return not (issubclass(cls, Loop) and not cls.checkpointed)


def _resolve(obj: Any) -> tuple[str, Table, list[tuple[str, Any]]]:
    """(label, table, [(child name, child)]) for a Table, a Loop class or a Loop instance."""
    if isinstance(obj, Table):
        return obj.name or "table", obj, []
    if isinstance(obj, type) and issubclass(obj, Loop):
        return obj.__name__, obj.table, []
    if isinstance(obj, Loop):
        return f"{obj.name} ({type(obj).__name__})", obj.table, list(obj.children().items())
    raise TypeError(f"Cannot draw {obj!r}: pass a Table, a Loop subclass or a Loop instance.")


# -- Mermaid -------------------------------------------------------------------------------
def to_mermaid(obj: Table | type[Loop] | Loop) -> str:
    """A Mermaid ``stateDiagram-v2`` of a table, a loop class, or a loop instance and its sub-loops."""
    lines = ["stateDiagram-v2"]
    if isinstance(obj, Loop) and obj.children():
        lines += _mermaid_block(obj, obj.name, indent=1)
    else:
        label, table, _ = _resolve(obj)
        lines.append(f"    %% {label}")
        lines += _mermaid_states(table, prefix="", indent=1, restartable=_restartable(obj))
    return "\n".join(lines) + "\n"


def _mid(prefix: str, state: str) -> str:
    return f"{prefix}__{state}" if prefix else state


def _mermaid_states(table: Table, prefix: str, indent: int, restartable: bool = True) -> list[str]:
    pad = "    " * indent
    out = []
    if prefix:
        states = (*table.states, RESTARTING) if restartable else table.states
        out += [f'{pad}state "{s}" as {_mid(prefix, s)}' for s in states]
    out.append(f"{pad}[*] --> {_mid(prefix, START)}")
    for source, dest, label in _rows(table, restartable):
        out.append(f"{pad}{_mid(prefix, source)} --> {_mid(prefix, dest)}: {label}")
    out.append(f"{pad}{_mid(prefix, END)} --> [*]")
    return out


def _mermaid_block(loop: Loop, path: str, indent: int) -> list[str]:
    pad = "    " * indent
    ident = path.replace(".", "__")
    out = [f'{pad}state "{path} ({type(loop).__name__})" as {ident} {{']
    out += _mermaid_states(loop.table, prefix=ident, indent=indent + 1, restartable=_restartable(loop))
    for name, child in loop.children().items():
        out += _mermaid_block(child, f"{path}.{name}", indent + 1)
    out.append(f"{pad}}}")
    return out


# -- Graphviz DOT --------------------------------------------------------------------------
def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(obj: Table | type[Loop] | Loop) -> str:
    """A Graphviz ``digraph`` of a table, a loop class, or a loop instance and its sub-loops."""
    label, _, _ = _resolve(obj)
    lines = [f"digraph {_q(label)} {{", "    rankdir=LR;", "    node [shape=box, style=rounded];"]
    if isinstance(obj, Loop):
        lines += _dot_cluster(obj, obj.name, indent=1)
    else:
        lines += _dot_states(_resolve(obj)[1], prefix="", indent=1, restartable=_restartable(obj))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_states(table: Table, prefix: str, indent: int, restartable: bool = True) -> list[str]:
    pad = "    " * indent

    def node(state: str) -> str:
        return _q(f"{prefix}.{state}" if prefix else state)

    out = []
    for state in table.states:
        shape = ", peripheries=2" if state == END else ""
        out.append(f"{pad}{node(state)} [label={_q(state)}{shape}];")
    if restartable:
        out.append(f"{pad}{node(RESTARTING)} [label={_q(RESTARTING)}, style=dashed];")
    for source, dest, text in _rows(table, restartable):
        style = ", style=dashed" if source == RESTARTING else ""
        out.append(f"{pad}{node(source)} -> {node(dest)} [label={_q(text)}{style}];")
    return out


def _dot_cluster(loop: Loop, path: str, indent: int) -> list[str]:
    pad = "    " * indent
    out = [f"{pad}subgraph {_q('cluster_' + path)} {{", f"{pad}    label={_q(f'{path} ({type(loop).__name__})')};"]
    out += _dot_states(loop.table, prefix=path, indent=indent + 1, restartable=_restartable(loop))
    for name, child in loop.children().items():
        out += _dot_cluster(child, f"{path}.{name}", indent + 1)
    out.append(f"{pad}}}")
    return out
