"""The worker directory: live workers announce themselves in the BGJOB_WORKERS bucket, with a TTL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import StorageType
from nats.js.kv import KeyValue

from . import job as jobmod

if TYPE_CHECKING:
    from .core import Core


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker as it last reported itself."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    in_flight: int
    processed: int
    started_at: datetime | None
    last_beat: datetime | None
    version: str


_SUFFIX = "WORKERS"


async def _bucket(core: Core, create: bool) -> KeyValue | None:
    return await core.bucket(_SUFFIX, ttl=core.settings.worker_ttl, storage=StorageType.MEMORY,
                             description="bgjob live workers", create=create)  # fmt: skip


#: what a bucket whose stream is gone answers (the directory is stored in memory: a server restart drops it).
_GONE = (nats.js.errors.NotFoundError, nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError)


async def announce(core: Core, entry: dict[str, Any]) -> None:
    """Store (or refresh) a worker's entry; it expires unless refreshed within Settings.worker_ttl. A bucket
    lost with a server restart is created again."""
    for last_try in (False, True):
        kv = await _bucket(core, create=True)
        assert kv is not None
        try:
            await kv.put(entry["id"], json.dumps(entry).encode())
            return
        except _GONE:
            core.forget_bucket(_SUFFIX)
            if last_try:
                raise


async def withdraw(core: Core, worker_id: str) -> None:
    kv = await _bucket(core, create=False)
    if kv is not None:
        await kv.purge(worker_id)


async def list_workers(core: Core) -> list[WorkerInfo]:
    kv = await _bucket(core, create=False)
    if kv is None:
        return []
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    except _GONE:  # lost with a server restart: no worker has announced itself since
        core.forget_bucket(_SUFFIX)
        return []
    found = []
    for key in keys:
        try:
            entry = json.loads((await kv.get(key)).value or b"null")
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, ValueError):
            continue  # expired or withdrawn meanwhile
        if not entry:
            continue
        found.append(WorkerInfo(
            id=entry["id"], host=entry.get("host", "?"), pid=entry.get("pid", 0),
            queues=tuple(entry.get("queues", ())), concurrency=entry.get("concurrency", 0),
            in_flight=entry.get("in_flight", 0), processed=entry.get("processed", 0),
            started_at=jobmod.parse_time(entry.get("started_at")), last_beat=jobmod.parse_time(entry.get("last_beat")),
            version=entry.get("version", "?"),
        ))  # fmt: skip
    return sorted(found, key=lambda w: w.id)
