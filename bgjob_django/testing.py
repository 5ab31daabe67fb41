"""Testing helpers for Django projects: `captured_jobs()`, in the spirit of `django.core.mail.outbox`.

```python
from bgjob_django.testing import captured_jobs

class SignupTests(TestCase):
    def test_signup_sends_the_welcome_mail_job(self):
        with captured_jobs() as jobs, self.captureOnCommitCallbacks(execute=True):
            self.client.post("/signup/", {"email": "a@example.com"})
        [job] = jobs
        assert (job.type, job.arg, job.queue, job.on_commit) == ("welcome", {"email": "a@example.com"}, "mail", True)
```

While the block is open, `bgjob_django.send_job`/`send_jobs` (and so the django.tasks backend's sends that go
through them) validate, encode and size-check each job exactly as usual (InvalidJob at the call), then record it
instead of sending it: no NATS, no outbox row, nothing for a worker. When a job is recorded depends on how it was
sent, as when it would have been sent:

- directly: at the call.
- `on_commit=True`: when Django runs the transaction's on_commit callbacks. A `TestCase` never commits: wrap the
  code in `self.captureOnCommitCallbacks(execute=True)` (or run the callbacks it captured) and the jobs are recorded
  then. Until then they wait in `jobs.pending`; callbacks that never run (the transaction rolled back, or a
  TestCase's callbacks were never executed) leave them there, never in `jobs`, as such jobs would never be sent.
  Outside a transaction (autocommit) Django runs the callback at once: recorded at the call.
- `outbox=True`: at the call, even if the caller's transaction later rolls back (no outbox row is written, so
  there is nothing to roll back; in production the rollback would drop the row and the job would never be sent).
  Assert on outbox jobs of a transaction that commits, or check the transaction's outcome yourself.

Scope: process-wide, like `django.core.mail.outbox`. Blocks nest, the innermost open one records; jobs sent by
other threads (a view served by `LiveServerTestCase`'s thread, a thread pool) while a block is open are recorded
too. Each block's exit (also by an exception) unregisters its own recorder, whatever order blocks end in.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

import bgjob
from bgjob import job as jobmod
from bgjob.headers import ENCRYPTION

from . import producer

__all__ = ["CaptureStackError", "CapturedJob", "CapturedJobs", "captured_jobs"]


@dataclass(frozen=True)
class CapturedJob:
    """One job a captured `send_job`/`send_jobs` would have sent.

    `arg` is the arg as encoded at the call (what the handler would see; an encrypted job's arg as given),
    `mode` is "direct", "on_commit" or "outbox", `delay`/`at` as given, `due` the moment it would run (an aware
    UTC datetime, None: at once), `prepared` the `bgjob.PreparedJob` that would have been published.
    """

    id: str
    type: str
    arg: Any
    queue: str
    mode: str
    delay: timedelta | float | None = None
    at: datetime | None = None
    due: datetime | None = None
    request_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    using: str = "default"
    prepared: bgjob.PreparedJob | None = field(default=None, repr=False, compare=False)

    @property
    def on_commit(self) -> bool:
        return self.mode == "on_commit"

    @property
    def outbox(self) -> bool:
        return self.mode == "outbox"


class CapturedJobs(list[CapturedJob]):
    """The jobs recorded by one `captured_jobs()` block, in the order they would have been sent (a list).

    `pending`: jobs sent with on_commit whose transaction's callbacks have not run (yet)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[CapturedJob] = []
        self._lock = threading.Lock()

    def types(self) -> list[str]:
        """The recorded jobs' types, in order."""
        return [job.type for job in self]

    def of_type(self, job_type: str) -> list[CapturedJob]:
        """The recorded jobs of one type, in order."""
        return [job for job in self if job.type == job_type]

    def sent(self, specs: Sequence[bgjob.JobSpec], prepared: Sequence[bgjob.PreparedJob], mode: str,
             using: str) -> list[str]:  # fmt: skip
        """Record jobs instead of sending them (called by bgjob_django.producer); returns their ids."""
        jobs = [_captured(spec, job, mode, using) for spec, job in zip(specs, prepared, strict=True)]
        if mode == "on_commit":
            with self._lock:
                self.pending.extend(jobs)
            transaction.on_commit(lambda: self._committed(jobs), using=using)
        else:
            with self._lock:
                self.extend(jobs)
        return [job.id for job in jobs]

    def _committed(self, jobs: list[CapturedJob]) -> None:
        with self._lock:
            for job in jobs:
                if job in self.pending:
                    self.pending.remove(job)
            self.extend(jobs)


def _captured(spec: bgjob.JobSpec, job: bgjob.PreparedJob, mode: str, using: str) -> CapturedJob:
    arg = spec.arg
    if ENCRYPTION not in job.headers:  # the arg as the handler will see it (an encrypted one: as given)
        with contextlib.suppress(jobmod.DecodeError):
            arg = jobmod.decode_arg(job.body, job.headers.get(jobmod.CONTENT_TYPE))
    return CapturedJob(id=job.job_id, type=job.job_type, arg=arg, queue=job.queue, mode=mode, delay=spec.delay,
                       at=spec.at, due=job.due, request_id=spec.request_id, headers=dict(spec.headers or {}),
                       using=using, prepared=job)  # fmt: skip


class CaptureStackError(bgjob.BgjobError, RuntimeError):
    """A `captured_jobs()` block ended but its recorder was no longer registered (something outside the block
    emptied or replaced `bgjob_django.producer._captures`): jobs sent in the block may have been sent for real."""


_captures_lock = threading.Lock()


@contextlib.contextmanager
def captured_jobs() -> Iterator[CapturedJobs]:
    """Record the jobs `bgjob_django.send_job`/`send_jobs` send inside the block instead of sending them; yields
    the `CapturedJobs` list (see the module docstring for when on_commit jobs appear in it, and for its scope:
    process-wide, the innermost open block records).

    On exit (normal or by an exception) the block's own recorder is unregistered, found by identity, whatever
    order blocks end in; sending is back to normal once no block is open. Raises CaptureStackError on exit when
    its recorder was no longer registered (nothing is left registered either way)."""
    recorder = CapturedJobs()
    with _captures_lock:
        producer._captures.append(recorder)
    try:
        yield recorder
    finally:
        with _captures_lock:
            found = [index for index, each in enumerate(producer._captures) if each is recorder]
            for index in reversed(found):
                del producer._captures[index]
        if not found:
            raise CaptureStackError("captured_jobs(): this block's recorder was no longer registered when it ended "
                                    "(bgjob_django.producer._captures was changed from outside); jobs sent in the "
                                    "block may have been sent")  # fmt: skip
