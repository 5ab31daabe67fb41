"""Testing support: `run_jobs` (a real worker's code, run in the test's thread, against a real nats-server), the
pytest plugin's fixtures (`bgjob.testing.pytest_plugin`, loaded by pytest through the `pytest11` entry point), and
immediate mode (`Settings(immediate=True)`: `send_job` runs the handler inline, no server at all).

The peers' equivalents: Celery's `task_always_eager`, RQ's `Queue(is_async=False)`, Dramatiq's `StubBroker` and
`join()`, Huey's `immediate=True`, Django's `ImmediateBackend`/`DummyBackend`. See README "Testing".
"""

from __future__ import annotations

from .run import JobOutcome, RunJobsTimeout, run_jobs

__all__ = ["JobOutcome", "RunJobsTimeout", "run_jobs"]
