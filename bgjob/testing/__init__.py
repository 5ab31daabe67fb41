"""Testing support: `run_jobs` (a real worker's code, run in the test's thread, against a real nats-server), the
pytest plugin's fixtures (`pytest_bgjob`, loaded by pytest through the `pytest11` entry point), and
immediate mode (`Settings(immediate=True)`: `send_job` runs the handler inline, no server at all).

The peers' equivalents: Celery's `task_always_eager`, RQ's `Queue(is_async=False)`, Dramatiq's `StubBroker` and
`join()`, Huey's `immediate=True`, Django's `ImmediateBackend`/`DummyBackend`. See docs/testing.md.
"""

from __future__ import annotations

from .immediate import IMMEDIATE_ATTEMPTS, ImmediateLog, immediate_log, set_immediate_mux
from .run import JobOutcome, RunJobsTimeout, run_jobs

__all__ = ["IMMEDIATE_ATTEMPTS", "ImmediateLog", "JobOutcome", "RunJobsTimeout", "immediate_log", "run_jobs",
           "set_immediate_mux"]  # fmt: skip
