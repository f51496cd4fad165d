"""Hypothesis profiles: ``ci`` (bounded, no deadline; what .ci/run uses) and ``dev`` (more examples).

Plus one autouse fixture: a test that runs ``strategy="ddp", devices=1`` in this process joins a world-of-one
process group, which the Trainer leaves only at interpreter exit (fit, validate and test share it); leaving it
after each test keeps every later test's starting point the same, whatever order the tests run in.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _no_process_group_left_behind():
    yield
    from statemachine_trainer.distributed import leave_process_group

    leave_process_group()
