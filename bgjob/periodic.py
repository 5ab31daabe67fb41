"""Periodic jobs: server-native cron schedules, one per name, firing once per tick cluster-wide."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js.api import Header

from . import job as jobmod
from .errors import InvalidSchedule
from .headers import CRON, SCHEDULE_NAME
from .schedule import ByCron
from .stats import list_queues

if TYPE_CHECKING:
    from .core import Core

HEADER_SCHEDULE = SCHEDULE_NAME
_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")


@dataclass(frozen=True)
class PeriodicJob:
    """A declared periodic job, as stored on the server."""

    name: str
    queue: str
    job_type: str
    cron: str
    tz: str
    arg: Any
    headers: Mapping[str, str]

    def next_run(self, now: datetime | None = None) -> datetime:
        return ByCron(self.cron, self.tz).next_run(now or datetime.now(timezone.utc))


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSchedule(f"invalid schedule name {name!r}: use letters, digits, '_' and '-' (max 100)")
    return name


async def declare(core: Core, subject: str, body: bytes, headers: dict[str, str], queue: str) -> bool:
    """Store the schedule unless an identical one is already stored; returns whether it changed."""
    await core.ensure_queue(queue)
    current = await _get(core, queue, subject)
    if current is not None and current.data == body and _same(current.headers or {}, headers):
        return False
    # Publishing on the same schedule subject replaces the previous schedule.
    await core.publish(subject, body, headers, queue=queue)
    return True


def _same(stored: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(stored.get(k) == v for k, v in wanted.items())


async def _get(core: Core, queue: str, subject: str) -> Any:
    try:
        return await core.js.get_msg(core.topology.queue_stream(queue), subject=subject)
    except nats.js.errors.NotFoundError:
        return None


async def remove(core: Core, name: str, queue: str) -> bool:
    await core.ensure_queue(queue)
    subject = core.topology.cron_subject(queue, name)
    if await _get(core, queue, subject) is None:
        return False
    await core.js.purge_stream(core.topology.queue_stream(queue), subject=subject)
    return True


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
            found.append(PeriodicJob(
                name=headers.get(HEADER_SCHEDULE, raw.subject.rsplit(".", 1)[-1]),
                queue=q,
                job_type=headers.get(jobmod.HEADER_TYPE, "?"),
                cron=headers.get(CRON, headers.get(Header.SCHEDULE.value, "?")),
                tz=headers.get(Header.SCHEDULE_TIME_ZONE.value, "UTC"),
                arg=_arg(raw.data or b"", headers.get(jobmod.CONTENT_TYPE)),
                headers=jobmod.user_headers(headers),
            ))  # fmt: skip
            seq = raw.seq + 1
    return sorted(found, key=lambda p: (p.queue, p.name))


def _arg(body: bytes, content_type: str | None) -> Any:
    try:
        return jobmod.decode_arg(body, content_type)
    except jobmod.DecodeError:
        return body
