"""The package's shape: dependencies point one way, and hook names come from one specification."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import statemachine_trainer
from statemachine_trainer import Callback, TrainingModule
from statemachine_trainer._hook_spec import HOOK_NAMES, HOOKS, STAGE_HOOKS, is_default_hook
from statemachine_trainer._hooks import HookRelay
from statemachine_trainer._results import Results

PACKAGE = Path(statemachine_trainer.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every package module ``path`` imports, anywhere in the file (TYPE_CHECKING and function bodies too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from .x import y" imports module x.y when y is one, otherwise a name of module x.
            found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names)
    resolved = set()
    for module in found:
        while module and module not in modules:
            module = module.rpartition(".")[0]
        resolved.add(module)
    return resolved


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    facade = "statemachine_trainer"  # the top-level __init__ only re-exports (lazily): not design coupling
    return {name: _imports(path, set(modules)) - {name, facade, ""}
            for name, path in modules.items() if name != facade}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a list of modules, or None (a depth-first search for a back edge)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_among_the_packages_modules_type_only_imports_included():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["statemachine_trainer._run", "statemachine_trainer._hook_spec",
                                    "statemachine_trainer._flags", "statemachine_trainer._boundary"])
def test_the_run_context_sits_below_trainer_loops_and_callbacks(module):
    graph = _graph()
    reachable, todo = set(), [module]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                todo.append(nxt)
    upward = sorted(m for m in reachable if m.startswith(("statemachine_trainer.trainer", "statemachine_trainer.loops",
                                                           "statemachine_trainer.callbacks",
                                                           "statemachine_trainer.module")))
    assert upward == []


def test_module_callback_and_datamodule_stubs_are_the_specs_hooks_with_the_specs_arguments():
    from statemachine_trainer import DataModule

    classes = {"module": (TrainingModule, ["self"]), "callback": (Callback, ["self", "trainer", "module"]),
               "datamodule": (DataModule, ["self"])}
    for hook in HOOKS:
        if hook.default:  # a real default on the module (Lightning's): no stub, no callback hook
            assert not hasattr(Callback, hook.name) and not hasattr(DataModule, hook.name), hook.name
            default = getattr(TrainingModule, hook.name)
            assert is_default_hook(default), hook.name
            names = [name.lstrip("*") for name in hook.params]
            assert list(inspect.signature(default).parameters) == ["self", *names], hook.name
            continue
        for owner, (cls, first) in classes.items():
            if owner not in hook.owners:
                assert not hasattr(cls, hook.name), (owner, hook.name)
                continue
            assert list(inspect.signature(getattr(cls, hook.name)).parameters) == [*first, *hook.params], hook.name
            assert getattr(getattr(cls, hook.name), "__noop_hook__", False), (owner, hook.name)


def test_the_relay_has_every_relayed_hook_and_no_other():
    relay = HookRelay(TrainingModule(), [], None, Results(lambda t: t))
    assert all(callable(getattr(relay, name)) for name in HOOK_NAMES)
    # A misspelt hook name fails loudly, with Python's own message (and its "Did you mean" in a traceback): the
    # relay has no __getattr__ of its own, which would keep Python 3.11 from caching the loops' hook reads.
    with pytest.raises(AttributeError, match="'HookRelay' object has no attribute 'on_fit_begin'"):
        relay.on_fit_begin  # noqa: B018
    for stage, names in STAGE_HOOKS.items():
        stage_relay = relay.stage(stage)
        assert stage_relay.batch_end is getattr(relay, names.batch_end)
        assert stage_relay.step_name == names.step


def test_no_loop_builds_a_hook_name_from_strings():
    for path in (PACKAGE / "loops").glob("*.py"):
        text = path.read_text()
        assert 'f"on_' not in text and "f'on_" not in text, path.name
