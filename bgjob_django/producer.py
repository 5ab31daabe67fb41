"""Sending jobs from Django code: the project's client, the current request id, and on_commit."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, transaction

import bgjob
from bgjob import job as jobmod
from bgjob import unique
from bgjob.client import prepare_job
from bgjob.codec import spec_of

from .conf import get_client, get_config
from .request_id import get_request_id


def send_job(
    job_type: str,
    arg: Any = None,
    *,
    queue: str = "default",
    delay: timedelta | float | None = None,
    at: datetime | None = None,
    job_id: str | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    store_result: bool | None = None,
    unique_for: timedelta | float | None = None,
    sensitive: Collection[str] | None = None,
    on_commit: bool | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> str:
    """Enqueue a job with the project's client; returns its id.

    The job carries the current request id (RequestIdMiddleware, or the job being handled) unless one
    is given; `store_result` keeps its outcome for `get_client().result(job_id)`. With `on_commit`
    (default: `BGJOB["ON_COMMIT"]`) it is published when the transaction of database `using` commits,
    and never if it rolls back; outside a transaction it is published at once. The job is validated
    now either way (bgjob.InvalidJob). `unique_for` (with `job_id`): see bgjob's send_job; with on_commit
    the id is reserved when the transaction commits. `sensitive` (arg key names, e.g. `["card"]`): their
    values are masked in bgjob's logs, dead letters, stored errors, the admin and Sentry (see bgjob's send_job).
    """
    unique.validate_unique_for(unique_for, job_id)
    if request_id is None:
        request_id = get_request_id()
    if on_commit is None:
        on_commit = get_config().on_commit
    kwargs = {"queue": queue, "delay": delay, "at": at, "request_id": request_id, "headers": headers,
              "sensitive": sensitive}  # fmt: skip
    if not on_commit:
        return get_client().send_job(job_type, arg, job_id=job_id, store_result=store_result, unique_for=unique_for,
                                     **kwargs)  # fmt: skip
    job_id = job_id if job_id is not None else jobmod.new_job_id()
    prepare_job(get_client().settings, job_type, arg, job_id=job_id, **kwargs)  # refuse bad jobs now, not at commit
    kwargs["store_result"] = store_result
    kwargs["unique_for"] = unique_for
    # A failed publish raises from the commit (the data is committed by then): it is not swallowed.
    transaction.on_commit(lambda: get_client().send_job(job_type, arg, job_id=job_id, **kwargs), using=using)
    return job_id


def send_jobs(
    jobs: Iterable[bgjob.JobSpec | tuple[str, Any]],
    *,
    queue: str = "default",
    on_commit: bool | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> list[str]:
    """Enqueue many jobs with the project's client, pipelined; returns their ids in order.

    Like send_job: each job carries the current request id unless its JobSpec names one, all are
    validated now (InvalidJob names the first bad one, nothing is sent), and with `on_commit` they are
    published together when the transaction commits, never if it rolls back.
    """
    request_id = get_request_id()
    specs = []
    for index, item in enumerate(jobs):
        try:
            spec = item if isinstance(item, bgjob.JobSpec) else spec_of(item)
            unique.validate_unique_for(spec.unique_for, spec.job_id)
        except bgjob.InvalidJob as exc:
            raise bgjob.InvalidJob(f"job {index}: {exc}; nothing was sent") from exc
        specs.append(dataclasses.replace(
            spec,
            job_id=spec.job_id if spec.job_id is not None else jobmod.new_job_id(),
            request_id=spec.request_id if spec.request_id is not None else request_id,
        ))  # fmt: skip
    if on_commit is None:
        on_commit = get_config().on_commit
    client = get_client()
    if not on_commit:
        return client.send_jobs(specs, queue=queue)
    for index, spec in enumerate(specs):  # refuse bad jobs now, not at commit
        try:
            prepare_job(client.settings, spec.type, spec.arg, queue=spec.queue or queue, delay=spec.delay,
                        at=spec.at, job_id=spec.job_id, request_id=spec.request_id, headers=spec.headers,
                        sensitive=spec.sensitive)  # fmt: skip
        except bgjob.InvalidJob as exc:
            raise bgjob.InvalidJob(f"job {index}: {exc}; nothing was sent") from exc
    transaction.on_commit(lambda: get_client().send_jobs(specs, queue=queue), using=using)
    return [spec.job_id for spec in specs]  # type: ignore[misc]

