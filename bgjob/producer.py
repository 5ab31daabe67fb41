"""Turning a job into a message: validation, encoding, headers, delays and signing."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from nats.js.api import Header

from . import job as jobmod
from . import results
from .context import current_request_id
from .errors import InvalidJob
from .headers import MAX_HEADER_BYTES, header_block_size
from .job import JobSpec
from .settings import Settings
from .topology import Topology

if TYPE_CHECKING:
    from .core import Core


@functools.lru_cache(maxsize=4)
def signer_for(signing_key: str) -> Any:
    from .signing import Signer

    return Signer(signing_key)


def spec_of(item: Any) -> JobSpec:
    if isinstance(item, tuple) and len(item) == 2:
        return JobSpec(item[0], item[1])
    raise InvalidJob(f"expected a (type, arg) pair or a bgjob.JobSpec, got {item!r}")


#: bytes kept free below the server's max_payload, and below JetStream's 64 KiB header limit, so a job can
#: always be dead-lettered with its error.
DLQ_HEADROOM = 8 * 1024


def check_size(core: Core, body: bytes, headers: dict[str, str]) -> None:
    """Refuse (InvalidJob) a job whose header block or whole message, in bytes as sent, leaves less than
    DLQ_HEADROOM free under JetStream's header limit or the server's max_payload."""
    block = header_block_size(headers)
    if block > MAX_HEADER_BYTES - 1 - DLQ_HEADROOM:
        raise InvalidJob(f"job headers are {block} bytes as sent; JetStream refuses {MAX_HEADER_BYTES} or more and "
                         f"bgjob keeps {DLQ_HEADROOM} for a dead letter's error: use at most "
                         f"{MAX_HEADER_BYTES - 1 - DLQ_HEADROOM} (put large data in the arg)")  # fmt: skip
    size = len(body) + block
    if size > core.max_payload - DLQ_HEADROOM:
        raise InvalidJob(f"job is {size} bytes with its headers; the server accepts at most "
                         f"{core.max_payload - DLQ_HEADROOM} (its max_payload of {core.max_payload} less "
                         f"{DLQ_HEADROOM} kept for a dead letter's error)")  # fmt: skip


@functools.lru_cache(maxsize=16)
def _topology(prefix: str) -> Topology:
    return Topology(prefix)


def prepare_job(
    settings: Settings,
    job_type: str,
    arg: Any,
    *,
    queue: str = "default",
    delay: timedelta | float | None = None,
    at: datetime | None = None,
    job_id: str | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    store_result: bool = False,
) -> tuple[str, bytes, dict[str, str], str]:
    """Validate a job and build its (subject, body, headers, id); raises InvalidJob."""
    topology = _topology(settings.prefix)
    jobmod.validate_type(job_type)
    jobmod.validate_queue(queue)
    job_id = jobmod.validate_job_id(job_id) if job_id is not None else jobmod.new_job_id()
    if request_id is None:
        request_id = current_request_id.get()
    if request_id is not None and (not isinstance(request_id, str) or not request_id.isprintable()
                                   or not _encodable(request_id)):  # fmt: skip
        raise InvalidJob(f"request_id must be a printable str, got {request_id!r}")
    hdrs = jobmod.validate_headers(headers)
    body, content_type = jobmod.encode_arg(arg)
    now = datetime.now(timezone.utc)
    due = _due_time(now, delay, at)
    hdrs.update({
        "Nats-Msg-Id": job_id,
        jobmod.HEADER_ID: job_id,
        jobmod.HEADER_TYPE: job_type,
        jobmod.HEADER_ENQUEUED_AT: jobmod.format_time(now),
        jobmod.CONTENT_TYPE: content_type,
    })  # fmt: skip
    if request_id:
        hdrs[jobmod.HEADER_REQUEST_ID] = request_id
    if store_result:
        hdrs[results.HEADER_STORE_RESULT] = "1"
    if settings.signing_key:
        signer_for(settings.signing_key).sign(queue, hdrs, body)
    target = topology.job_subject(queue, job_type)
    if due is None:
        return target, body, hdrs, job_id
    hdrs[Header.SCHEDULE.value] = f"@at {jobmod.format_time(due)}"
    hdrs[Header.SCHEDULE_TARGET.value] = target
    return topology.delayed_subject(queue, job_id), body, hdrs, job_id


def _encodable(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


def _due_time(now: datetime, delay: timedelta | float | None, at: datetime | None) -> datetime | None:
    if delay is not None and at is not None:
        raise InvalidJob("give either delay or at, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (timedelta, int, float)):
            raise InvalidJob(f"delay must be a timedelta or seconds, got {delay!r}")
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds != seconds or seconds < 0:
            raise InvalidJob(f"delay must be >= 0, got {delay!r}")
        try:
            return now + timedelta(seconds=seconds) if seconds > 0 else None
        except OverflowError as exc:
            raise InvalidJob(f"delay {delay!r} reaches beyond the year 9999") from exc
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise InvalidJob("at must be a timezone-aware datetime (e.g. datetime.now(timezone.utc) + ...)")
        try:
            at.astimezone(timezone.utc)
        except OverflowError as exc:
            raise InvalidJob(f"at {at!r} is beyond the year 9999 in UTC") from exc
        return at if at > now else None
    return None
