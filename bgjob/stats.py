"""Queue statistics and listings, read from the server: nothing here creates or changes anything."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .core import Core

log = logging.getLogger("bgjob.client")

#: the routing lanes' subject kinds after `<prefix>.<queue>.` (bgjob.placement), counted as `QueueStats.routed`.
ROUTED_KINDS = ("one", "part", "target", "group")


@dataclass(frozen=True)
class QueueStats:
    """A queue's counts as JetStream reports them (read when asked; they move while you look)."""

    queue: str
    #: jobs ready to run, not yet delivered to a worker.
    pending: int
    #: jobs delivered to a worker and not yet settled.
    in_flight: int
    #: delayed and rescheduled jobs and periodic schedules, waiting for their time (not the retrying ones).
    scheduled: int
    #: dead letters of the queue.
    dlq: int
    #: jobs waiting for a retry schedule to fire (`<prefix>.<queue>.retry.<job id>`); they hold no worker slot.
    retrying: int = 0
    #: jobs on the routing lanes' subjects (bgjob.placement: singleton `one.`, partition `part.`, claim `target.`
    #: and group `group.`), waiting for their consumer's slot or a worker of their claim or group, or running.
    routed: int = 0


async def count_matching(core: Core, stream: str, subject: str, *, after: int | None = None) -> int:
    """Messages of `stream` on subjects matching `subject` (only those stored after sequence `after`, when
    given), counted by the server: an ephemeral consumer that never pulls reports its matches (per-subject
    totals would not scale to one subject per job). A work-queue stream allows one consumer per filter: when
    another process counts at the same moment, wait and retry."""
    config = ConsumerConfig(
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL if not after else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=after + 1 if after else None,
        inactive_threshold=5.0,  # removed by the server even if we cannot delete it
        mem_storage=True,
        num_replicas=1,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + core.settings.retry_for
    while True:
        try:
            counter = await core.js.add_consumer(stream, config)
            break
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10100 or loop.time() > deadline:
                raise  # 10100: "filtered consumer not unique on workqueue stream"
            await asyncio.sleep(random.uniform(0.01, 0.1))
    try:
        return counter.num_pending or 0  # nats-py types it Optional; the server always sends it
    finally:
        try:
            await core.js.delete_consumer(stream, counter.name)
        except Exception as exc:  # noqa: BLE001 - it expires after its inactive threshold
            log.debug("could not delete the counting consumer %s: %r", counter.name, exc)


async def count_dead_letters(
    core: Core, queue: str | None = None, job_type: str | None = None, reason: str | None = None,
    after: int | None = None,
) -> int:  # fmt: skip
    """Dead letters, all or of one queue / job type / reason, all or those stored after DLQ sequence `after`;
    0 while the DLQ stream does not exist."""
    stream = core.topology.dlq_stream
    try:
        info = await core.js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0  # no dead letter yet: nothing to count, nothing to create
    if queue is None and job_type is None and reason is None and not after:
        return info.state.messages
    if after and after >= info.state.last_seq:
        return 0
    return await count_matching(core, stream, core.topology.dlq_filter(queue=queue, job_type=job_type,
                                                                       reason=reason), after=after)


async def queue_stats(core: Core, queue: str) -> QueueStats:
    """The queue's counts; a missing queue is empty. Before any worker ran (no consumer yet), `pending` is the
    number of ready job messages stored."""
    topology = core.topology
    name = topology.queue_stream(queue)
    try:
        stream = await core.js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return QueueStats(queue, 0, 0, 0, await count_dead_letters(core, queue=queue))
    try:
        consumer = await core.js.consumer_info(name, topology.consumer(queue))
        pending, in_flight = consumer.num_pending, consumer.num_ack_pending
    except nats.js.errors.NotFoundError:  # jobs sent before any worker ran: they wait in the stream
        filtered = await core.js.stream_info(name, subjects_filter=topology.job_filter(queue))
        pending, in_flight = sum((filtered.state.subjects or {}).values()), 0  # one subject per job type
    others = stream.state.messages - pending - in_flight
    retrying = await count_matching(core, name, topology.retry_filter(queue)) if others > 0 else 0
    routed = 0
    if others - retrying > 0:
        # Per-subject counts (a lane's subjects are per type, claim or partition, never per job); count_matching
        # cannot: its filter would overlap the lanes' own consumers, which a work-queue stream refuses.
        for kind in ROUTED_KINDS:
            filtered = await core.js.stream_info(name, subjects_filter=f"{topology.prefix}.{queue}.{kind}.>")
            routed += sum((filtered.state.subjects or {}).values())
    return QueueStats(
        queue=queue,
        pending=pending,
        in_flight=in_flight,
        scheduled=max(0, others - retrying - routed),
        dlq=await count_dead_letters(core, queue=queue),
        retrying=retrying,
        routed=routed,
    )


async def list_queues(core: Core) -> list[str]:
    """Names of the queues whose streams exist under this prefix (every page of the server's stream list)."""
    prefix, topology = core.settings.prefix, core.topology
    names = []
    for config in await _stream_configs(core, f"{prefix}.>"):
        name, subjects = config.get("name", ""), config.get("subjects") or []
        if name.startswith(topology.stream_prefix) and name not in (topology.dlq_stream, topology.events_stream) \
                and subjects:  # fmt: skip
            subject = subjects[0]
            if subject.startswith(prefix + ".") and subject.endswith(".>"):
                names.append(subject[len(prefix) + 1 : -2])
    return sorted(names)


async def _stream_configs(core: Core, subject: str) -> list[dict[str, Any]]:
    """The configs of the streams whose subjects overlap `subject`, filtered by the server and read page by page
    (it answers at most 256 streams a request: an account with many streams has several pages)."""
    configs: list[dict[str, Any]] = []
    while True:
        request = json.dumps({"offset": len(configs), "subject": subject}).encode()
        reply = await core.nc.request(f"{core.js._prefix}.STREAM.LIST", request, timeout=core.settings.request_timeout)
        data = json.loads(reply.data)
        if "error" in data:
            raise nats.js.errors.APIError(**{k: data["error"].get(k) for k in ("code", "err_code", "description")})
        page = [s["config"] for s in data.get("streams") or []]
        configs.extend(page)
        if not page or len(configs) >= data.get("total", 0):
            return configs
