"""Unique jobs: a job id reserved for `unique_for` in the `<PREFIX>_UNIQUE` key-value bucket.

`send_job(..., job_id=..., unique_for=...)` first creates the key of the job id (`result_key`'s encoding) with a
per-message TTL of `unique_for` (nats-server >= 2.11: the bucket's stream allows message TTLs and the create
carries a `Nats-TTL` header; one bucket serves every TTL). The create fails when the key exists: then an earlier
send of that id holds it and the job is not published again. The key lives in a file-stored, replicated
(Settings.replicas) stream, so it survives a server restart and a cluster failover, unlike the stream's duplicate
window, which the server rebuilds from the messages it still holds (an acked job's id is forgotten).

Crash windows (the order is: create the key, publish, PubAck):

- the publish is refused (the server answered with an error) or not confirmed (ConnectionError): the key is
  deleted before the error is raised (only if it still holds this send's revision), so re-sending with the same
  id publishes again; a job that was in fact stored is dropped by the stream's duplicate window (default 2 min),
  as for any re-send of an unconfirmed job;
- that delete fails too (the server is unreachable), or the process dies between the create and the PubAck: the
  id stays reserved until `unique_for` has passed. A re-send within it returns the id without publishing, whether
  or not the first publish was stored. The raised error says so (an exception note).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import StorageType
from nats.js.kv import KeyValue

from . import job as jobmod
from .errors import ConnectionError, InvalidJob, PublishError, describe_error
from .job_results import result_key
from .schedule import as_seconds

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("bgjob.unique")

#: the shortest `unique_for`, in seconds (the server's message TTLs are whole seconds, at least one).
MIN_UNIQUE_FOR = 1
#: err_codes of a write whose expected last revision is not the key's (nats-py's KeyWrongLastSequenceError).
_WRONG_LAST_SEQUENCE = (10071, 10164)
#: the longest `unique_for`, in seconds: 30 days (also the bucket's max age).
MAX_UNIQUE_FOR = 30 * 24 * 3600


@dataclass(frozen=True)
class Reservation:
    """A job id this send reserved: its bucket key and the revision the create wrote."""

    job_id: str
    key: str
    revision: int
    #: what the reservation holds (id, queue, time, unique_for, token).
    value: dict[str, Any] = field(default_factory=dict, compare=False)


def validate_unique_for(unique_for: timedelta | float | None, job_id: str | None) -> int | None:
    """`unique_for` (a timedelta, or seconds as int/float) as whole seconds rounded up, or None when not given.

    Raises InvalidJob when it is given without a `job_id`, is not a number, or is outside
    MIN_UNIQUE_FOR..MAX_UNIQUE_FOR (1 s .. 30 days).
    """
    if unique_for is None:
        return None
    if job_id is None:
        raise InvalidJob("unique_for needs a job_id: the id is what is kept unique (e.g. job_id='report-7')")
    seconds = as_seconds(unique_for)
    if seconds is None:
        raise InvalidJob(f"unique_for must be a timedelta or seconds, got {unique_for!r}")
    if not math.isfinite(seconds) or not MIN_UNIQUE_FOR <= seconds <= MAX_UNIQUE_FOR:
        raise InvalidJob(f"unique_for must be between {MIN_UNIQUE_FOR} s and {MAX_UNIQUE_FOR} s (30 days), "
                         f"got {unique_for!r}")  # fmt: skip
    return math.ceil(seconds)


async def _bucket(core: Core) -> KeyValue:
    kv = await core.bucket("UNIQUE", ttl=MAX_UNIQUE_FOR, storage=StorageType.FILE,
                           description="bgjob unique job ids (per-key TTL)")  # fmt: skip
    assert kv is not None
    return kv


async def reserve(core: Core, job_id: str, queue: str, unique_for: int, token: str | None = None) -> Reservation | None:
    """Reserve `job_id` for `unique_for` seconds; None when an earlier send holds it (do not publish).

    `token` names this send: a reservation found with the same token is this send's own (made by an attempt
    that died before it published: a relay killed between reserving and publishing an outbox row), so it
    counts as reserved and the job is published. A prepared job's token is the same for every attempt to
    publish it (`PreparedJob.reservation_token`); None: a new one.

    Transient errors are retried for Settings.retry_for (a create that was stored but not confirmed is
    recognised by its token), then bgjob.ConnectionError; a refusal by the server is bgjob.PublishError (the
    job was not published).
    """
    # A re-send from this process after a create that was not confirmed reuses that create's token, so it finds
    # the reservation (if the server stored it late) to be its own and publishes, instead of deduplicating itself.
    key, token = result_key(job_id), _unconfirmed.pop(job_id, None) or token or uuid.uuid4().hex
    value = json.dumps({"id": job_id, "queue": queue, "at": jobmod.format_time(datetime.now(timezone.utc)),
                        "unique_for": unique_for, "token": token}).encode()  # fmt: skip

    async def create() -> Reservation | None:
        kv = await _bucket(core)
        try:
            return Reservation(job_id, key, await kv.create(key, value, msg_ttl=unique_for), json.loads(value))
        except nats.js.errors.KeyWrongLastSequenceError:
            try:
                entry = await kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                raise nats.errors.TimeoutError from None  # expired meanwhile: try the create again
            held = json.loads(entry.value or b"{}")
            if held.get("token") == token and not await _published(kv, key):
                # Our own create (stored before its reply was lost, or made by an attempt that died before it
                # published): ours to publish. Once marked published (`mark_published`), a retry stores nothing.
                return Reservation(job_id, key, entry.revision or 0, held)
            return None

    try:
        reservation: Reservation | None = await core.retry(create)
    except nats.js.errors.APIError as exc:
        raise PublishError(f"cannot reserve unique job id {job_id!r}, the job was not published: the server "
                           f"answered {describe_error(exc)}") from exc  # fmt: skip
    except (nats.errors.Error, ConnectionError) as exc:
        _remember_unconfirmed(job_id, token)
        raise ConnectionError(
            f"cannot reserve unique job id {job_id!r}, the job was not published: {describe_error(exc)}. The "
            "reservation may still reach the server: re-send with the same job_id from this process (it recognises "
            "its own reservation); another process's re-send is deduplicated until unique_for has passed",
            job_ids=(job_id,)) from exc  # fmt: skip
    return reservation


#: job id -> token of this process's reservations whose create was not confirmed (bounded, oldest dropped).
_unconfirmed: dict[str, str] = {}
_MAX_UNCONFIRMED = 10_000


def _remember_unconfirmed(job_id: str, token: str) -> None:
    _unconfirmed[job_id] = token
    while len(_unconfirmed) > _MAX_UNCONFIRMED:
        _unconfirmed.pop(next(iter(_unconfirmed)))


async def reserve_many(core: Core, jobs: list[tuple[str, str, int, str | None]]) -> dict[str, Reservation | None]:
    """`reserve` for each distinct (job_id, queue, unique_for, token), concurrently; {job_id: Reservation or None}.
    If one fails, those reserved are released and the error is raised."""
    distinct = list({job[0]: job for job in reversed(jobs)}.values())[::-1]
    outcomes = await asyncio.gather(*(reserve(core, *job) for job in distinct), return_exceptions=True)
    error = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if error is not None:
        await release_all(core, [o for o in outcomes if isinstance(o, Reservation)])
        if isinstance(error, (ConnectionError, PublishError)):
            error.job_ids = tuple(job[0] for job in distinct)  # none of the batch was published
        raise error
    return {job[0]: outcome for job, outcome in zip(distinct, outcomes, strict=True)}  # type: ignore[misc]  # mypy cannot unpack job[0] of tuple[...]s zipped with outcomes


_PUBLISHED = ".published"


async def _published(kv: KeyValue, key: str) -> bool:
    """Whether the job holding reservation `key` was recorded stored (`mark_published`)."""
    try:
        await kv.get(key + _PUBLISHED)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return False
    return True


async def mark_published(core: Core, reservations: list[Reservation]) -> None:
    """Record that these reservations' jobs are stored, so a later attempt with the same token (a relay that died
    after the PubAck, before deleting its outbox row) publishes nothing, even after the duplicate window. One
    attempt each, bounded by Settings.request_timeout; never raises (a failure leaves that window open: logged)."""

    async def mark(reservation: Reservation) -> None:
        held = reservation.value
        at = jobmod.parse_time(held.get("at")) or datetime.now(timezone.utc)
        left = int(held.get("unique_for", 1)) - (datetime.now(timezone.utc) - at).total_seconds()
        try:
            kv = await _bucket(core)
            # A key of its own beside the reservation, expiring with it (a KV update cannot carry a TTL).
            await asyncio.wait_for(kv.create(reservation.key + _PUBLISHED, b"1", msg_ttl=max(1, math.ceil(left))),
                                   core.settings.request_timeout)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the job is stored; only a late retry's dedup is at stake
            log.info("unique job id %r: could not record it published (%s)", reservation.job_id, exc)

    await asyncio.gather(*(mark(r) for r in reservations))


async def release(core: Core, reservation: Reservation) -> bool:
    """Delete the key of a send whose publish failed, if it still holds that send's revision; one attempt
    bounded by Settings.request_timeout. Returns whether the key is free; never raises."""
    try:
        kv = await _bucket(core)
        await asyncio.wait_for(kv.delete(reservation.key, last=reservation.revision), core.settings.request_timeout)
        return True
    except Exception as exc:  # noqa: BLE001 - reported below; the publish error is what the caller gets
        if isinstance(exc, nats.js.errors.APIError) and exc.err_code in _WRONG_LAST_SEQUENCE:
            return True  # no longer ours: it expired, and another send holds it now
        log.warning("unique job id %r stays reserved until its unique_for has passed: could not release it (%s)",
                    reservation.job_id, exc)  # fmt: skip
        return False


async def release_all(core: Core, reservations: list[Reservation]) -> list[str]:
    """`release` each; returns the job ids that stay reserved."""
    freed = await asyncio.gather(*(release(core, r) for r in reservations))
    return [r.job_id for r, ok in zip(reservations, freed, strict=True) if not ok]


def note_still_reserved(exc: BaseException, job_ids: list[str]) -> None:
    """Add a note to `exc` naming job ids that stay reserved although their publish was not confirmed."""
    if job_ids:
        exc.add_note(f"unique job id(s) {', '.join(job_ids)} stay reserved until unique_for has passed (the key "
                     "could not be released): a re-send within it returns the id without publishing")  # fmt: skip
