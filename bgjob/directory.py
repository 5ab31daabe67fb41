"""The worker directory: live workers announce themselves in the BGJOB_WORKERS bucket, with a TTL.

An entry is the JSON object a worker writes every third of Settings.worker_ttl (bgjob.worker.lanes): its id,
host, pid, queues, concurrency, in-flight and processed counts, start and beat times, version, the placement
claims it holds (`claims`, which bgjob.placement's no_target sweep reads: an expired entry holds nothing) and the
worker groups it serves (`groups`, a group worker's only)."""

from __future__ import annotations

import asyncio
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
    #: the placement claims the worker holds now (`Worker(..., claims=)`), for the queues it serves.
    claims: tuple[str, ...] = ()
    #: the worker groups it serves (`Worker(..., groups=)`; such a worker runs only those groups' job types).
    groups: tuple[str, ...] = ()


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


async def _entries(core: Core) -> list[dict[str, Any]]:
    """Every live entry. The keys come from the bucket stream's subject list (one stream-info request,
    authoritative; not `kv.keys()`, whose watch ends at nats-py's end-of-initial-values marker, which can come
    early), then one read per key; entries expired or withdrawn meanwhile, and unreadable ones, are skipped.
    Raises nats-py's errors of those requests (a bucket lost with a server restart reads as empty)."""
    kv = await _bucket(core, create=False)
    if kv is None:
        return []
    bucket = core.topology.stream_prefix + _SUFFIX
    subject_prefix = f"$KV.{bucket}."
    try:
        info = await core.js.stream_info(f"KV_{bucket}", subjects_filter=subject_prefix + ">")
    except _GONE:  # lost with a server restart: no worker has announced itself since
        core.forget_bucket(_SUFFIX)
        return []
    keys = [subject[len(subject_prefix) :] for subject in (info.state.subjects or {})]
    values = await asyncio.gather(*(_value(kv, key) for key in keys))
    return [entry for entry in values if isinstance(entry, dict) and isinstance(entry.get("id"), str)]


async def _value(kv: KeyValue, key: str) -> Any:
    try:
        return json.loads((await kv.get(key)).value or b"null")
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, ValueError):
        return None  # expired or withdrawn meanwhile, or not JSON


async def held_claims(core: Core, queue: str) -> set[str]:
    """The claims that live workers of `queue` hold now: the union of the `claims` of the directory entries
    (unexpired: a worker that died stops counting once its entry's Settings.worker_ttl has run out) whose
    `queues` include `queue`. Raises nats-py's errors when the directory cannot be read (the caller must then
    assume nothing about who holds what)."""
    held: set[str] = set()
    for entry in await _entries(core):
        queues, claims = entry.get("queues"), entry.get("claims")
        if isinstance(queues, list) and queue in queues and isinstance(claims, list):
            held.update(claim for claim in claims if isinstance(claim, str))
    return held


async def list_workers(core: Core) -> list[WorkerInfo]:
    """The live workers, sorted by id (see `_entries` for how they are read)."""
    found = []
    for entry in await _entries(core):
        found.append(WorkerInfo(
            id=entry["id"], host=entry.get("host", "?"), pid=entry.get("pid", 0),
            queues=tuple(entry.get("queues", ())), concurrency=entry.get("concurrency", 0),
            in_flight=entry.get("in_flight", 0), processed=entry.get("processed", 0),
            started_at=jobmod.parse_time(entry.get("started_at")), last_beat=jobmod.parse_time(entry.get("last_beat")),
            version=entry.get("version", "?"), claims=tuple(entry.get("claims") or ()),
            groups=tuple(entry.get("groups") or ()),
        ))  # fmt: skip
    return sorted(found, key=lambda w: w.id)
