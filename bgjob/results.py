"""Opt-in job results in the BGJOB_RESULTS key-value bucket: status, return value, errors, attempts."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js.api import StorageType
from nats.js.kv import KeyValue

from . import job as jobmod

if TYPE_CHECKING:
    from .core import Core

HEADER_STORE_RESULT = "Bgjob-Store-Result"
_PLAIN_KEY = re.compile(r"[-_=a-zA-Z0-9]+")


class ResultStatus(enum.StrEnum):
    """Where a job with a stored result is in its life."""

    READY = "READY"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    SUCCESSFUL = "SUCCESSFUL"

    @property
    def finished(self) -> bool:
        return self in (ResultStatus.FAILED, ResultStatus.SUCCESSFUL)


@dataclass(frozen=True)
class JobError:
    """One failed attempt."""

    attempt: int
    error: str
    traceback: str | None
    at: datetime | None


@dataclass(frozen=True)
class JobResult:
    """The stored result of a job (send_job(..., store_result=True))."""

    id: str
    status: ResultStatus
    job_type: str
    queue: str
    value: Any
    errors: tuple[JobError, ...]
    attempts: int
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker_ids: tuple[str, ...]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> JobResult:
        return cls(
            id=record["id"],
            status=ResultStatus(record["status"]),
            job_type=record.get("type", ""),
            queue=record.get("queue", ""),
            value=record.get("value"),
            errors=tuple(
                JobError(e["attempt"], e["error"], e.get("traceback"), jobmod.parse_time(e.get("at")))
                for e in record.get("errors", [])
            ),
            attempts=record.get("attempts", 0),
            enqueued_at=jobmod.parse_time(record.get("enqueued_at")),
            started_at=jobmod.parse_time(record.get("started_at")),
            finished_at=jobmod.parse_time(record.get("finished_at")),
            worker_ids=tuple(record.get("worker_ids", [])),
        )


def result_key(job_id: str) -> str:
    """The bucket key of a job id (ids with ':' or '+' are hex-encoded; plain ids never contain '.')."""
    return job_id if _PLAIN_KEY.fullmatch(job_id) else "x." + job_id.encode().hex()


async def bucket(core: Core, create: bool = True) -> KeyValue | None:
    """The results bucket; created on first write, so jobs without results never cost one."""
    return await core.bucket("RESULTS", ttl=core.settings.result_ttl, storage=StorageType.FILE,
                             description="bgjob job results", create=create)  # fmt: skip


async def _bucket(core: Core) -> KeyValue:
    kv = await bucket(core)
    assert kv is not None
    return kv


def _now() -> str:
    return jobmod.format_time(datetime.now(timezone.utc))


async def record_ready(core: Core, job_id: str, job_type: str, queue: str) -> None:
    """READY, unless a worker has already written a later state (create fails then)."""
    record = {"id": job_id, "status": "READY", "type": job_type, "queue": queue, "enqueued_at": _now(),
              "attempts": 0, "errors": [], "worker_ids": []}  # fmt: skip
    kv = await _bucket(core)
    try:
        await kv.create(result_key(job_id), json.dumps(record).encode())
    except nats.js.errors.KeyWrongLastSequenceError:
        pass


async def read_record(core: Core, job_id: str) -> dict[str, Any] | None:
    kv = await bucket(core, create=False)
    if kv is None:
        return None
    try:
        entry = await kv.get(result_key(job_id))
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    return json.loads(entry.value) if entry.value else None


async def record_running(
    core: Core, job_id: str, job_type: str, queue: str, attempt: int, enqueued_at: str | None, worker_id: str
) -> dict[str, Any]:
    """RUNNING, keeping what earlier attempts recorded; returns the record for record_outcome."""
    record = await read_record(core, job_id) or {
        "id": job_id, "type": job_type, "queue": queue, "errors": [], "worker_ids": [], "enqueued_at": enqueued_at,
    }  # fmt: skip
    record.update(status="RUNNING", attempts=attempt, started_at=_now(), finished_at=None)
    if worker_id not in record["worker_ids"]:
        record["worker_ids"].append(worker_id)
    await (await _bucket(core)).put(result_key(job_id), json.dumps(record).encode())
    return record


async def record_outcome(
    core: Core,
    record: dict[str, Any],
    status: ResultStatus,
    *,
    value: Any = None,
    error: str | None = None,
    traceback: str | None = None,
) -> None:
    """Store the outcome of an attempt: SUCCESSFUL with a value, FAILED, or READY again (a retry)."""
    if error is not None:
        record["errors"].append({"attempt": record.get("attempts", 0), "error": error, "traceback": traceback,
                                 "at": _now()})  # fmt: skip
    record["status"] = status.value
    if status.finished:
        record["finished_at"] = _now()
    if status is ResultStatus.SUCCESSFUL:
        try:
            json.dumps(value)
            record["value"] = value
        except (TypeError, ValueError):
            record["value"] = repr(value)
    await (await _bucket(core)).put(result_key(record["id"]), json.dumps(record, default=str).encode())
