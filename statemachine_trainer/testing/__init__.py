"""Property-test your own modules and loops for exact resume.

- :func:`assert_resume_exact` -- run your module, interrupt it at the n-th
  call of a hook, resume in fresh objects, and compare everything bit for bit.
- :func:`interruption_points` -- a Hypothesis strategy of ``(hook, call)``
  pairs to drive it.
- :func:`statemachine_trainer.machine.recording.record_hooks` -- pin the hook
  order of your own tables.
"""

from typing import Any

from ._resume import INTERRUPT_HOOKS, ResumeMismatch, assert_resume_exact, interrupt_at

__all__ = ["INTERRUPT_HOOKS", "ResumeMismatch", "assert_resume_exact", "interrupt_at", "interruption_points"]


def interruption_points(hooks: tuple[str, ...] = INTERRUPT_HOOKS, max_call: int = 4) -> Any:
    """Hypothesis strategy: ``(hook, call)`` with ``1 <= call <= max_call`` (keep it within how often hooks run)."""
    from hypothesis import strategies as st

    return st.tuples(st.sampled_from(hooks), st.integers(1, max_call))
