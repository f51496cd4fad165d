"""Run a bare table with scripted conditions and record the hooks it fires.

This is how the contract in ``specs/`` is checked ("given these condition
outcomes, the table fires exactly these hooks"), and it is public so users can
pin down the hook order of their own tables in their own tests::

    hooks = record_hooks(MyLoop.table, {"done": [False, False, True]})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._dispatch import ENGINES
from ._table import Table

__all__ = ["ScriptExhausted", "record_hooks", "recorder_for"]


class ScriptExhausted(LookupError):
    """A condition was asked more often than the script has answers for."""


def recorder_for(table: Table, conditions: Mapping[str, Iterable[bool]], fire: Mapping[str, Iterable[str]] = {}):
    """An object whose hooks append their names to ``.calls`` and whose conditions follow a script.

    ``conditions[name]`` is the sequence of answers the condition gives, one per
    evaluation; ``fire[hook]`` lists triggers the hook fires (queued) when called.
    """
    answers = {name: list(values) for name, values in conditions.items()}
    namespace: dict[str, Any] = {}

    def make_hook(name: str):
        def hook(self: Any) -> str:
            self.calls.append(name)
            for trigger in self._fire.get(name, ()):
                self.dispatcher.fire(trigger)
            return name
        return hook

    def make_condition(name: str):
        def condition(self: Any) -> bool:
            script = self._answers.get(name)
            if not script:
                raise ScriptExhausted(f"condition {name!r} was evaluated more often than scripted")
            return script.pop(0)
        return condition

    for name in table.hook_names:
        namespace[name] = make_hook(name)
    for name in table.condition_names:
        namespace[name] = property(make_condition(name))
    recorder = type("Recorder", (), namespace)()
    recorder.calls = []
    recorder._answers = answers
    recorder._fire = {hook: list(triggers) for hook, triggers in fire.items()}
    return recorder


def record_hooks(table: Table, conditions: Mapping[str, Iterable[bool]], engine: str = "direct",
                 fire: Mapping[str, Iterable[str]] = {}) -> list[str]:
    """Run ``table`` to END with scripted conditions; return the hook names fired, in order."""
    recorder = recorder_for(table, conditions, fire)
    recorder.dispatcher = ENGINES[engine](table, recorder, table.name or "table")
    recorder.dispatcher.run((), {})
    return recorder.calls
