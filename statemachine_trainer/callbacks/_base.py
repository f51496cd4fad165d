"""The ``Callback`` base class: the same hooks as ``TrainingModule``, with the trainer and module passed in.

Callbacks are called by the same loop transitions as the module's hooks, right
after the module's own hook (so a callback at ``on_validation_epoch_end`` sees
what the module logged there), with the run and the module first; ``setup``
and ``teardown`` are the exception, called before the module's (after the
data module's), as in Lightning.  The run
(the ``trainer`` argument) is the narrow run context, ``_run.Run``, under
Lightning's names.  The hooks are the spec's (``_hook_spec.HOOKS``); only
overridden ones are called.  A callback
that keeps state returns it from ``state_dict`` as JSON-able data; it is saved
and restored with the rest of the run's state.
"""

from __future__ import annotations

from typing import Any

from .._hook_spec import install_stubs

__all__ = ["Callback"]


@install_stubs(owner="callback")  # one no-op per hook of the spec, taking (trainer, module, *args)
class Callback:
    #: Set to False (e.g. in ``setup``) to take no part in a run: none of its hooks is called then.
    enabled: bool = True

    @property
    def state_key(self) -> str:
        """The name this callback's state is saved under; unique among a trainer's callbacks."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
