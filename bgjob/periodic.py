"""Periodic jobs: server-native cron schedules, one per name, firing once per tick cluster-wide."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js.api import Header

from . import job as jobmod
from .encryption import Cipher, DecryptError, cipher_for, decrypt_body, placeholder
from .errors import InvalidSchedule, PublishError
from .headers import CRON, SCHEDULE_NAME
from .schedule import ByCron
from .stats import list_queues

if TYPE_CHECKING:
    from .core import Core

HEADER_SCHEDULE = SCHEDULE_NAME
log = logging.getLogger("bgjob.periodic")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")


@dataclass(frozen=True)
class PeriodicJob:
    """A declared periodic job, as stored on the server.

    `revision` is the stream sequence of the stored declaration: it changes whenever the schedule is declared
    again with other values (never when it fires); `Client.unschedule(..., revision=)` removes only that one.
    """

    name: str
    queue: str
    job_type: str
    cron: str
    tz: str
    arg: Any
    headers: Mapping[str, str]
    revision: int = 0

    def next_run(self, now: datetime | None = None) -> datetime:
        return ByCron(self.cron, self.tz).next_run(now or datetime.now(timezone.utc))


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSchedule(f"invalid schedule name {name!r}: use letters, digits, '_' and '-' (max 100)")
    return name


#: compare-and-set rounds before a declaration gives up: each lost round means another process stored a declaration
#: that sorts lower than this one in between, so a race of N declarations settles within N rounds.
_DECLARE_ATTEMPTS = 20
_WRONG_LAST_SEQUENCE = 10071  # a Nats-Expected-Last-Subject-Sequence that is no longer the subject's last


async def declare(core: Core, name: str, queue: str, subject: str, body: bytes, headers: dict[str, str]) -> bool:
    """Store the schedule (the whole declaration: body and every header) unless an identical one is stored.

    Returns whether this call changed the stored schedule to this declaration: False when it already was exactly
    this one, or when it lost a race. Every write is a compare-and-set on the subject's last sequence, so a
    declaration never overwrites one it has not read. When declarations with different values race (another one
    was stored between this one's read and write), the one with the greater `declaration_key` is kept, whatever the
    timing; the others log a warning and return False. Declarations that do not race: the later one replaces.
    Raises InvalidSchedule if `name` is declared on another queue (names are unique across queues).
    """
    await core.ensure_queue(queue)
    elsewhere = [q for q in await _queues_holding(core, name) if q != queue]
    if elsewhere:
        raise InvalidSchedule(
            f"schedule {name!r} already exists on queue {elsewhere[0]!r}: schedule names are unique across queues; "
            f"declare it with queue={elsewhere[0]!r}, or unschedule({name!r}) first to move it to {queue!r}"
        )
    mine = declaration_key(body, headers)
    stored_at_start: bool | None = None
    raced = False
    for _ in range(_DECLARE_ATTEMPTS):
        current = await _get(core, queue, subject)
        stored = _declaration(current, headers) if current is not None else None
        if stored_at_start is None:
            stored_at_start = stored == (body, headers)
        if stored == (body, headers):
            return not stored_at_start
        if raced and stored is not None and declaration_key(*stored) > mine:
            log.warning("schedule %r on queue %r: another process declared it with other values at the same moment; "
                        "its declaration is kept (racing declarations keep the greatest declaration_key)",
                        name, queue)  # fmt: skip
            return False
        expected = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(current.seq if current is not None else 0)}
        try:  # publishing on the schedule's subject replaces the schedule (the server rolls the subject up)
            await core.publish(subject, body, {**headers, **expected}, queue=queue)
            return True
        except Exception as exc:
            if _err_code(exc) != _WRONG_LAST_SEQUENCE:
                raise
            raced = True
    raise PublishError(
        f"schedule {name!r} on queue {queue!r} was redeclared by other processes {_DECLARE_ATTEMPTS} times while "
        "this declaration was written; it may not be stored"
    )


def declaration_key(body: bytes, headers: Mapping[str, str]) -> bytes:
    """The order that settles racing declarations of one schedule: a digest of the body and every header."""
    digest = hashlib.sha256(body)
    for key, value in sorted(headers.items()):
        digest.update(b"\0" + key.encode() + b"\0" + value.encode())
    return digest.digest()


def _declaration(stored: Any, wanted: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """The declaration a stored schedule message holds: its body and headers, less those the server adds
    (`Nats-Rollup`; any `Nats-*` that a declaration like `wanted` never sets)."""
    headers = {k: v for k, v in (stored.headers or {}).items() if k in wanted or not k.lower().startswith("nats-")}
    return stored.data or b"", headers


def _err_code(exc: BaseException | None) -> int | None:
    """The JetStream error code of `exc` or of the error it wraps (a bgjob error raised from a nats-py one)."""
    seen = 0
    while exc is not None and seen < 5:
        code: int | None = getattr(exc, "err_code", None)
        if code is not None:
            return code
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


async def _get(core: Core, queue: str, subject: str) -> Any:
    try:
        return await core.js.get_msg(core.topology.queue_stream(queue), subject=subject)
    except nats.js.errors.NotFoundError:  # no such message, or no such stream (a queue never used)
        return None


async def _queues_holding(core: Core, name: str) -> list[str]:
    """The queues on which a schedule called `name` is stored (one, unless two processes declared it on two
    queues at the very same moment)."""
    return [q for q in await list_queues(core) if await _get(core, q, core.topology.cron_subject(q, name))]


async def remove(core: Core, name: str, queue: str | None, revision: int | None = None) -> bool:
    """Remove the schedule `name` from `queue` (None: from whichever queue holds it); returns whether one was
    removed. Only the exact message read is deleted (by its sequence): a schedule redeclared in between survives,
    and with `revision` only that stored revision is removed."""
    removed = False
    for q in [queue] if queue is not None else await _queues_holding(core, name):
        current = await _get(core, q, core.topology.cron_subject(q, name))
        if current is None or (revision is not None and current.seq != revision):
            continue
        if not await core.delete_stored(core.topology.queue_stream(q), current.seq):
            continue  # removed meanwhile by another process
        removed = True
    return removed


async def list_schedules(core: Core, queue: str | None) -> list[PeriodicJob]:
    queues = [queue] if queue else await list_queues(core)
    found = []
    for q in queues:
        await core.ensure_queue(q)
        stream, seq = core.topology.queue_stream(q), 1
        while True:
            try:
                raw = await core.js.get_msg(stream, seq=seq, next=True, subject=core.topology.cron_subject(q, "*"))
            except nats.js.errors.NotFoundError:
                break
            headers = raw.headers or {}
            assert raw.subject is not None and raw.seq is not None  # nats-py types them Optional; a stored one has them
            found.append(PeriodicJob(
                name=headers.get(HEADER_SCHEDULE, raw.subject.rsplit(".", 1)[-1]),
                queue=q,
                job_type=headers.get(jobmod.HEADER_TYPE, "?"),
                cron=headers.get(CRON, headers.get(Header.SCHEDULE.value, "?")),
                tz=headers.get(Header.SCHEDULE_TIME_ZONE.value, "UTC"),
                arg=_arg(raw.data or b"", headers, cipher_for(core.settings.encryption_keys)),
                headers=jobmod.user_headers(headers),
                revision=raw.seq,
            ))  # fmt: skip
            seq = raw.seq + 1
    return sorted(found, key=lambda p: (p.queue, p.name))


def _arg(body: bytes, headers: Mapping[str, str], cipher: Cipher | None) -> Any:
    """The declared arg: decrypted with the reading client's keys (a placeholder str when it cannot be), then
    decoded (the raw body when it does not decode)."""
    try:
        body = decrypt_body(body, headers, cipher, who="client")
    except DecryptError as exc:
        return placeholder(exc, cipher)
    try:
        return jobmod.decode_arg(body, headers.get(jobmod.CONTENT_TYPE))
    except jobmod.DecodeError:
        return body
