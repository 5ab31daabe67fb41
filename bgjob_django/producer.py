"""Sending jobs from Django code: the project's client, the current request id, and the three ways to send.

- direct (the default): published now; the call returns once JetStream stored the job.
- `on_commit=True` (BGJOB["ON_COMMIT"]): prepared now (validated, encoded, size-checked, signed; InvalidJob at the
  call), published as prepared when the transaction of database `using` commits, never if it rolls back. If NATS
  is unavailable at commit the unsent jobs go into the outbox table, and the relay sends them.
- `outbox=True` (BGJOB["OUTBOX"]): prepared now, inserted into the outbox table in the current transaction with
  no NATS round trip; the relay publishes it after the commit (bgjob_django.outbox, bgjob_django.relay).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, transaction

import bgjob
from bgjob.codec import spec_of

from . import outbox as outbox_table
from .conf import get_client, get_config
from .request_id import get_request_id

if TYPE_CHECKING:
    from .testing import CapturedJobs

log = logging.getLogger("bgjob_django.producer")

#: the recorders of bgjob_django.testing.captured_jobs() (the innermost last): while one is open, send_job and
#: send_jobs validate and prepare jobs as usual and hand them to it instead of sending them.
_captures: list[CapturedJobs] = []


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
    deadline: datetime | timedelta | float | None = None,
    max_attempts: int | None = None,
    target: str | None = None,
    partition_key: str | None = None,
    target_timeout: timedelta | float | None = None,
    on_commit: bool | None = None,
    outbox: bool | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> str:
    """Enqueue a job with the project's client; returns its id.

    The job carries the current request id (RequestIdMiddleware, or the job being handled) unless one is given;
    `store_result` keeps its outcome for `get_client().result(job_id)`; `unique_for` (with `job_id`) and
    `sensitive` (arg key names whose values are masked) are bgjob's send_job options, and so are `deadline` (an
    aware datetime, or a timedelta or seconds from this call: delivered later, the job is dead-lettered unrun,
    reason `deadline`) and `max_attempts` (this job's attempt limit, winning over the handler's and BGJOB's).
    `target` (a placement claim such as "primary" or "region/eu", from ebind: only a worker holding it runs the job) and
    `partition_key` (a printable str, from dagnats: jobs with one key run one at a time in send order on
    `partitioned=True` handlers) route the job as bgjob's send_job does; not both (see docs/routing.md).
    `target_timeout` (seconds > 0 or a timedelta, with `target`; default Settings.target_timeout): when no worker
    holds the claim that long after the job is due, it is dead-lettered, reason `no_target` (counted from when it
    is due, not from the commit or the relay's publish; the outbox row keeps its Bgjob-Target-Until header).

    The job is validated, encoded and size-checked at the call in every mode (bgjob.InvalidJob, nothing sent:
    the view can roll back), and `arg` is read then: changing it afterwards changes nothing.

    - `outbox` (default BGJOB["OUTBOX"]): the job becomes a row of the outbox table in the current transaction
      of database `using` (no NATS round trip; outside a transaction the row commits at once); the relay
      publishes it after the commit, and nothing if the transaction rolls back. With `unique_for` the id is
      reserved when the relay publishes it. Raises django.db.DatabaseError if the table is missing (migrate).
    - `on_commit` (default BGJOB["ON_COMMIT"]): the prepared job is published when the transaction of `using`
      commits (outside one: now), never if it rolls back; with `unique_for` the id is reserved at commit. If
      the publish fails at commit (NATS unavailable), the job goes into the outbox table and the relay sends
      it (a WARNING is logged).
    - neither: published now; ConnectionError when NATS stays unreachable (see bgjob's send_job).

    `outbox` wins over `on_commit` when both are true: it is the stronger guarantee (the job commits with the
    data). A caller that must publish directly while BGJOB["OUTBOX"] is set passes `outbox=False`.
    """
    spec = bgjob.JobSpec(job_type, arg, queue=queue, delay=delay, at=at, job_id=job_id, request_id=request_id,
                         headers=headers, store_result=store_result, unique_for=unique_for,
                         sensitive=sensitive, deadline=deadline, max_attempts=max_attempts, target=target,
                         partition_key=partition_key, target_timeout=target_timeout)  # fmt: skip
    spec = _with_request_id(spec, get_request_id())
    mode = _mode(on_commit, outbox)
    client = get_client()
    if _captures:  # bgjob_django.testing.captured_jobs(): recorded, not sent
        return _captures[-1].sent([spec], [client.prepare_job(spec, queue=queue)], mode, using)[0]
    if mode == "direct":
        return _send_direct(client, spec)
    prepared = [client.prepare_job(spec, queue=queue)]
    _defer(prepared, mode, using)
    return prepared[0].job_id


def send_jobs(
    jobs: Iterable[bgjob.JobSpec | tuple[str, Any]],
    *,
    queue: str = "default",
    on_commit: bool | None = None,
    outbox: bool | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> list[str]:
    """Enqueue many jobs with the project's client; returns their ids in order.

    `jobs` holds `(type, arg)` pairs or bgjob.JobSpecs (a JobSpec's `queue` None means `queue`; its `target` and
    `partition_key` route it as in send_job, kept in the outbox row and relayed unchanged). Each carries the
    current request id unless its JobSpec names one. All are validated and encoded at the call (InvalidJob
    names the index of the first bad one; nothing is sent or written). Then, as send_job: directly (pipelined;
    SendJobsError says which were stored), at commit (`on_commit`), or as outbox rows in the current
    transaction, in the order given (`outbox`, which wins over `on_commit`).
    """
    request_id = get_request_id()
    specs = []
    for index, item in enumerate(jobs):
        try:
            spec = item if isinstance(item, bgjob.JobSpec) else spec_of(item)
        except bgjob.InvalidJob as exc:
            raise bgjob.InvalidJob(f"job {index}: {exc}; nothing was sent") from exc
        specs.append(_with_request_id(spec, request_id))
    mode = _mode(on_commit, outbox)
    client = get_client()
    if mode == "direct" and not _captures:
        return client.send_jobs(specs, queue=queue)
    prepared = []
    for index, spec in enumerate(specs):
        try:
            prepared.append(client.prepare_job(spec, queue=queue))
        except bgjob.InvalidJob as exc:
            raise bgjob.InvalidJob(f"job {index}: {exc}; nothing was sent") from exc
    if _captures:  # bgjob_django.testing.captured_jobs(): recorded, not sent
        return _captures[-1].sent(specs, prepared, mode, using)
    _defer(prepared, mode, using)
    return [job.job_id for job in prepared]


def _with_request_id(spec: bgjob.JobSpec, request_id: str | None) -> bgjob.JobSpec:
    if spec.request_id is not None or request_id is None:
        return spec
    return dataclasses.replace(spec, request_id=request_id)


def _mode(on_commit: bool | None, outbox: bool | None) -> str:
    """'outbox', 'on_commit' or 'direct': the arguments, else the BGJOB defaults; outbox wins."""
    config = get_config()
    if outbox if outbox is not None else config.outbox:
        return "outbox"
    if on_commit if on_commit is not None else config.on_commit:
        return "on_commit"
    return "direct"


def _send_direct(client: bgjob.Client, spec: bgjob.JobSpec) -> str:
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("type", "arg")}
    return client.send_job(spec.type, spec.arg, **fields)


def _defer(prepared: list[bgjob.PreparedJob], mode: str, using: str) -> None:
    if mode == "outbox":
        outbox_table.add(prepared, using=using)
    else:
        transaction.on_commit(lambda: publish_at_commit(prepared, using=using), using=using)


def publish_at_commit(jobs: Sequence[bgjob.PreparedJob], *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Publish prepared jobs (the on_commit hook of send_job/send_jobs); the ones not stored go to the outbox.

    The data is committed when this runs, so a job NATS did not confirm must not be dropped: it is inserted
    into the outbox table of database `using` (its own transaction) and a WARNING says the relay will send it
    (re-publishing one that was stored after all is dropped as a duplicate: its job id is its Nats-Msg-Id).
    If the insert fails too (no table: `manage.py migrate` not run), an ERROR names the job ids and the
    publish's error (bgjob.ConnectionError, SendJobsError, ...) is raised.
    """
    client = get_client()
    try:
        client.publish_prepared(jobs)
        return
    except bgjob.SendJobsError as exc:
        not_stored = set(exc.not_stored)
        unsent = [job for job in jobs if job.job_id in not_stored]
        error: bgjob.BgjobError = exc
    except bgjob.BgjobError as exc:  # ConnectionError, a refusal: the relay tries again, and keeps refused ones
        unsent, error = list(jobs), exc
    ids = ", ".join(job.job_id for job in unsent)
    try:
        outbox_table.add(unsent, using=using)
    except DatabaseError as db_error:
        log.error("%d job(s) could not be published at commit (%s) nor written to the outbox table of database %r "
                  "(%s): they are NOT sent; send them again with the same job ids: %s", len(unsent), error, using,
                  db_error, ids)  # fmt: skip
        raise error from db_error
    log.warning("%d job(s) could not be published at commit (%s); they are in the outbox table of database %r and "
                "the relay (manage.py bgjob_worker, or bgjob_relay) will send them: %s", len(unsent), error, using,
                ids)  # fmt: skip
