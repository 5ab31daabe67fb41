"""Static type checks of bgjob's public API, read by mypy ([tool.mypy] modules in pyproject.toml), never run.

Each function below holds correct uses (that must type-check, with `assert_type` pinning what a call gives back)
and deliberate mistakes, each marked `# type: ignore[<code>]`: strict mode's warn_unused_ignores fails the check
when a mistake stops being caught (an annotation widened to Any, an overload lost). Nothing runs at import: the
functions are never called, and pytest does not collect this module (not `test_*.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import assert_type

import bgjob
from bgjob import Complete, Job, JobHandle, Mux, Result, Retry, RetryPolicy, TypedJob, Worker


def _handlers_and_worker() -> None:
    mux = Mux()

    def report(job: Job) -> Result:
        if job.attempt < 3:
            return Retry(delay=5)
        return Complete({"rows": 10})

    mux.handle("report", report, retry_policy=RetryPolicy(max_attempts=5, base_delay=2.0))
    mux.handle("report.bad", lambda job: None)  # type: ignore[arg-type,return-value]
    RetryPolicy(max_attempts="5")  # type: ignore[arg-type]

    client = bgjob.connect()
    worker = Worker(client, mux, queue="default", concurrency=4)
    Worker(client, mux, concurrency="4")  # type: ignore[arg-type]
    Worker(mux, client)  # type: ignore[arg-type]
    del worker


def _sending() -> None:
    job_id = bgjob.send_job("report", {"month": 5}, queue="reports", delay=timedelta(minutes=5), deadline=300,
                            job_id="report-5", max_attempts=3, sensitive=["card"])  # fmt: skip
    assert_type(job_id, str)
    bgjob.send_job("report", deadline=datetime.now(UTC) + timedelta(hours=1))
    bgjob.send_job("report", deadline=timedelta(hours=1), store_result=True)
    ids = bgjob.send_jobs([("report", 1), bgjob.JobSpec("report", 2, deadline=60.0)], queue="reports")
    assert_type(ids, list[str])

    bgjob.send_job("report", dealine=300)  # type: ignore[call-arg]
    bgjob.send_job("report", max_attempts="3")  # type: ignore[arg-type]
    bgjob.send_job("report", deadline="tomorrow")  # type: ignore[arg-type]
    bgjob.send_jobs([("report", 1)], windw=10)  # type: ignore[call-arg]
    bgjob.connect().send_job("report", delay="5s")  # type: ignore[arg-type]


def _typed_jobs() -> None:
    mux = Mux()

    @mux.job
    def add(a: int, b: int = 0) -> int:
        return a + b

    @mux.job(name="images.resize", queue="images", retry_policy=RetryPolicy(max_attempts=3))
    def resize(path: str, *, width: int = 100) -> str:
        return f"{path}-{width}"

    as_typed: TypedJob[[int, int], int] = add
    assert_type(add(1, 2), int)
    handle = add.send(1, b=2)
    assert_type(handle, JobHandle[int])
    total: int = handle.result(timeout=30)
    assert_type(resize.options(queue="big", deadline=600, delay=timedelta(seconds=5)).send("a.png", width=50),
                JobHandle[str])  # fmt: skip
    name: str = resize.send("a.png").result(timedelta(seconds=30))
    resize.s("a.png", width=50)
    del as_typed, total, name

    add.send("1", 2)  # type: ignore[arg-type]
    add.send(1, c=2)  # type: ignore[call-arg]
    resize.send("a.png", 50)  # type: ignore[call-arg]
    wrong: str = add.send(1).result()  # type: ignore[assignment]
    add.options(dealine=5)  # type: ignore[call-arg]
    add.options(deadline="soon")  # type: ignore[arg-type]
    add.options(queue="q").send(b"1")  # type: ignore[arg-type]
    del wrong
