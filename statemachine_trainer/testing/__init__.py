"""Property-test your own modules and loops for exact resume.

- :func:`assert_resume_exact` -- run your module, interrupt it at the n-th
  call of a hook, resume in fresh objects, and compare everything bit for bit.
- :func:`interruption_points` -- a Hypothesis strategy of ``(hook, call)``
  pairs to drive it.
- :mod:`statemachine_trainer.testing.strategies` -- Hypothesis strategies
  for tables and their transition points (positions), e.g. to check that
  your loop's state round-trips from any point.
- :func:`assert_kill_resume_exact` -- run your training *script*, SIGKILL it
  at a drawn moment (:func:`kill_points`), resume it with ``--resume
  latest``, and compare its final checkpoint with an uninterrupted run's.
- :func:`statemachine_trainer.machine.recording.record_hooks` -- pin the hook
  order of your own tables.
"""

from collections.abc import Mapping
from typing import Any

from ._kill import KillMissed, RunFailed, assert_kill_resume_exact, compare_final_states, kill_points
from ._resume import INTERRUPT_HOOKS, ResumeMismatch, assert_resume_exact, interrupt_at

__all__ = ["INTERRUPT_HOOKS", "KillMissed", "ResumeMismatch", "RunFailed", "assert_kill_resume_exact", "assert_resume_exact",
           "compare_final_states", "interrupt_at", "interruption_points", "kill_points"]


def interruption_points(hooks: tuple[str, ...] = INTERRUPT_HOOKS, max_call: int | Mapping[str, int] = 4) -> Any:
    """Hypothesis strategy: ``(hook, call)`` with ``1 <= call <= max_call``.

    Keep ``max_call`` within how often each hook runs in your run: a mapping
    gives per-hook caps (e.g. ``{"on_train_epoch_end": max_epochs}``), falling
    back to 4 for hooks it does not name.  A drawn call that never happens is
    an error in :func:`assert_resume_exact`, not a silent pass.
    """
    from hypothesis import strategies as st

    caps = dict.fromkeys(hooks, max_call) if isinstance(max_call, int) else {h: max_call.get(h, 4) for h in hooks}
    bad = {hook: cap for hook, cap in caps.items() if not isinstance(cap, int) or cap < 1}
    if bad:
        raise ValueError(f"interruption_points: every max_call must be an int >= 1, got {bad}.")
    return st.sampled_from(hooks).flatmap(lambda hook: st.tuples(st.just(hook), st.integers(1, caps[hook])))
