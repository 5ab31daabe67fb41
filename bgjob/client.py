"""The Client: bgjob's blocking, thread-safe, fork-safe facade over nats-py."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from . import job as jobmod
from . import job_results
from .codec import PreparedJob, periodic_message, prepare_job
from .core import Core, QueueConfig, as_bgjob_error, is_transient, queue_config_changes
from .encryption import cipher_for
from .errors import BgjobError, ConfigurationError, InvalidJob, InvalidSchedule, ResultNotFound
from .job import JobSpec
from .job_results import JobResult
from .provisioning import validate_queue_changes
from .publisher import Publisher
from .redaction import mask_url
from .runtime import Runtime, in_gevent_hub_thread
from .sending import Sending
from .settings import Settings
from .signing import signer_for
from .stats import QueueStats, list_queues, queue_stats
from .topology import Topology

if TYPE_CHECKING:
    from .dead_letters import DeadLetters
    from .directory import WorkerInfo
    from .events import Event, JobStatus
    from .handler import Mux
    from .periodic import PeriodicJob
    from .retry_policy import RetryPolicy

T = TypeVar("T")

log = logging.getLogger("bgjob.client")

# Re-exported: Core and prepare_job are what integrations (bgjob_django) build on.
__all__ = ["Client", "Core", "PreparedJob", "QueueConfig", "QueueStats", "connect", "default_client", "is_transient",
           "prepare_job", "send_job", "send_jobs", "signer_for"]  # fmt: skip


def _resolve_url(settings: Settings) -> str:
    """settings.url, else BGJOB_URL, else the embedded server of settings.data_dir, else of BGJOB_DATA_DIR, else
    of the current directory's project (bgjob.server.default_data_dir)."""
    url = settings.url or os.environ.get("BGJOB_URL")
    if url:
        return url
    from .server import ensure_embedded_server

    return ensure_embedded_server(settings.data_dir or os.environ.get("BGJOB_DATA_DIR") or None)


class Client(Sending):
    """A connection to NATS JetStream, safe to share between threads and across fork()."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        env_prefix = os.environ.get("BGJOB_PREFIX")
        if settings is not None and env_prefix and env_prefix != settings.prefix:
            # A second client built with Settings(...) beside bgjob.connect()'s would send to other streams, silently.
            log.warning("BGJOB_PREFIX is %r but this client's Settings has prefix %r: its jobs go to other streams "
                        "than the environment's; build it with bgjob.Settings.from_env(...) to take the "
                        "environment's prefix", env_prefix, settings.prefix)  # fmt: skip
        cipher_for(self.settings.encryption_keys)  # unusable keys, or no cryptography: ConfigurationError now
        if self.settings.immediate:  # test-only: refused under a production BGJOB_URL, else one WARNING per client
            from .testing.immediate import announce_immediate

            announce_immediate(self)
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._core: Core | None = None
        self._closed = False
        self._url: str | None = None
        self._dlq: DeadLetters | None = None
        self._publisher: Publisher | None = None
        self._green_gate: tuple[int, Any] | None = None
        #: immediate mode (Settings.immediate, test-only): the Mux whose handlers send_job runs inline; None: the
        #: one given to bgjob.testing.set_immediate_mux (bgjob.testing.immediate).
        self.immediate_mux: Mux | None = None
        #: immediate mode: the retry policy for handlers without their own (None: RetryPolicy()), as a worker's.
        self.immediate_retry_policy: RetryPolicy | None = None
        _live_clients.add(self)

    # -- lifecycle -------------------------------------------------------------------------------
    def _ensure(self) -> tuple[Runtime, Core]:
        """The runtime and connection of this process, (re)built on first use or after fork()."""
        runtime, core = self._runtime, self._core
        if runtime is not None and core is not None and runtime.alive and not core.lost:
            return runtime, core
        if self.settings.immediate:
            raise ConfigurationError("this client is in immediate mode (Settings.immediate, test-only): it never "
                                     "connects; only sending works (see bgjob.testing.immediate)")  # fmt: skip
        with self._connect_gate():
            if self._closed:
                raise BgjobError("this bgjob client is closed")
            if self._core is not None and self._core.lost and self._runtime is not None and self._runtime.alive:
                log.warning("the NATS connection was closed under us; connecting again")
                self._runtime.stop()
            if self._runtime is None or not self._runtime.alive or self._core is None or self._core.lost:
                if self._url is None:
                    self._url = _resolve_url(self.settings)
                runtime = Runtime()
                core = Core(self.settings, self._url)
                try:
                    runtime.run(core.connect())
                    publisher = Publisher(core, runtime)
                    runtime.run(publisher.start())
                except BaseException:
                    runtime.stop()
                    raise
                self._publisher = publisher
                self._runtime, self._core = runtime, core
            return self._runtime, self._core

    def _publish(self, jobs: list[PreparedJob], window: int) -> list[str]:
        """Sending's publish, or in immediate mode (Settings.immediate) each job run inline instead
        (bgjob.testing.immediate)."""
        if self.settings.immediate:
            from .testing.immediate import run_immediately

            return run_immediately(self, jobs)
        return super()._publish(jobs, window)

    def _connect_gate(self) -> Any:
        """What serialises connecting: a gevent lock for greenlets (an OS lock held while a greenlet waits
        for the server would freeze the whole hub), else an OS lock. Greenlets and real threads connecting
        at the very same moment could each connect; connections made before fork() are never reused."""
        if in_gevent_hub_thread():
            if self._green_gate is None or self._green_gate[0] != os.getpid():
                import gevent.lock

                self._green_gate = (os.getpid(), gevent.lock.Semaphore())
            return self._green_gate[1]
        return self._lock

    def connect(self) -> Client:
        """Connect now (connecting is otherwise lazy); returns self."""
        self._ensure()
        return self

    @property
    def url(self) -> str:
        """The server URL(s) this client talks to, credentials masked (`nats://***@host:4222`); connects first."""
        return mask_url(self._ensure()[1].url)

    def _raw_url(self) -> str:
        """The URL with its credentials: for bgjob's own use (which embedded server it is), never for display."""
        return self._ensure()[1].url

    def run(self, coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float | None = None,
            idempotent: bool = False) -> T:  # fmt: skip
        """Run `await coro_fn(core, *args)` on the runtime loop and block for the result, at most `timeout`
        seconds (None: Settings.retry_for plus one request_timeout, plus a second of slack). An `idempotent`
        call (a read) is retried on transient errors within retry_for, so it rides out a leader election.

        Every exception out of nats-py becomes a bgjob error (core.as_bgjob_error): ConnectionError when NATS
        did not answer in time (or the timeout passed), ServerRefused (or a more specific name) when it refused.
        """
        runtime, core = self._ensure()
        coro = core.retry(coro_fn, core, *args) if idempotent else coro_fn(core, *args)
        return self._call(runtime, coro, timeout)

    def _bound(self) -> float:
        """Seconds a blocking call may take: retry_for plus one request timeout (plus a second of slack)."""
        return self.settings.retry_for + self.settings.request_timeout + 1.0

    def _call(self, runtime: Runtime, coro: Coroutine[Any, Any, T], timeout: float | None = None,
              job_ids: tuple[str, ...] = (), publishing: bool = False) -> T:  # fmt: skip
        """`runtime.run(coro)` bounded by `timeout` (None: `_bound()`), nats-py errors turned into bgjob errors
        (`publishing`: a refusal gets its publish name, StorageFull, QueueFull, ...)."""
        try:
            return runtime.run(coro, self._bound() if timeout is None else timeout)
        except BgjobError:
            raise
        except Exception as exc:
            converted = as_bgjob_error(exc, job_ids=job_ids, publishing=publishing)
            if converted is exc:
                raise
            raise converted from exc

    def close(self, timeout: float = 10.0) -> None:
        """Drain the connection (pending publishes and acks go out) and stop the runtime thread."""
        with self._lock:
            self._closed = True
            runtime, core = self._runtime, self._core
            self._runtime = self._core = None
        if runtime is not None and core is not None and runtime.alive:
            try:
                runtime.run(core.close(), timeout)
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.debug("close: %s", exc)
            runtime.stop()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producing: inherited from bgjob.sending.Sending (send_job, send_jobs, prepare_job, publish_prepared)

    # -- workflows (bgjob.workflows) ---------------------------------------------------------------
    def start(self, workflow: Any, *, run_id: str | None = None) -> Any:
        """Start a `bgjob.Workflow`, `bgjob.chain(...)` or `bgjob.group(...)`; returns its `bgjob.WorkflowRun`
        once its first steps are stored. `run_id` makes the start idempotent (see `bgjob.workflows.start`).
        Raises WorkflowError, UnknownStep, WorkflowCycle (nothing sent), InvalidJob, ConnectionError."""
        from .workflows import start

        return start(self, workflow, run_id=run_id)

    def workflow(self, run_id: str) -> Any:
        """The `bgjob.WorkflowRun` of a run started elsewhere (nothing is read until you ask it)."""
        from .workflows import WorkflowRun

        return WorkflowRun(self, run_id)

    # -- results ---------------------------------------------------------------------------------
    def result(self, job_id: str, wait: float | None = None) -> JobResult:
        """The stored result of a job sent with store_result; with `wait`, block up to that many seconds
        for it to finish (then return whatever it is). Its `progress`/`progress_at` are the job's latest
        `job.report_progress` value and when it was stored (bgjob.long_running; kept Settings.progress_ttl, so
        also after it finished), read with it. Raises ResultNotFound when nothing is stored."""
        from .long_running import latest_progress

        runtime, core = self._ensure()
        deadline = time.monotonic() + (wait or 0)
        pause = 0.01
        while True:
            record = self._call(runtime, job_results.read_record(core, job_id))
            if record is None:
                raise ResultNotFound(f"no stored result for job {job_id!r} (sent without store_result, or expired)")
            result = JobResult.from_record(record)
            if result.status.finished or time.monotonic() >= deadline:
                progress = self._call(runtime, latest_progress(core, job_id))  # None when unreadable: never fails
                if progress is None:
                    return result
                return dataclasses.replace(result, progress=progress.value, progress_at=progress.at)
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)

    def delete_result(self, job_id: str) -> bool:
        """Erase the stored result of job `job_id` (a data-subject request): every revision of its record
        the results stream holds is deleted by sequence with JetStream's secure erase (the bytes are
        overwritten in the block file, not only dropped from the index; earlier revisions, which carry earlier
        attempts' error texts, were already erased by the workers when they wrote the next one), then the key
        is purged, so `result(job_id)` raises ResultNotFound afterwards. Returns True if a result was stored,
        False if none was (never raises ResultNotFound). Delete after the job has finished: a worker still
        running it writes its outcome again. Raises InvalidJob for a job id that is not a non-empty str,
        ConnectionError when NATS does not answer within retry_for.

        Not covered: the job message itself (its arg) after it was acked, and messages removed by a limit,
        keep their bytes in their stream's files until JetStream compacts or drops the block; a results bucket
        created by an earlier bgjob denies deletes by sequence and is only purged. Encryption at rest
        (`Settings.encryption_keys`, nats-server's JetStream cipher) protects those bytes."""
        if not isinstance(job_id, str) or not job_id:
            raise InvalidJob(f"job_id must be a non-empty str, not {job_id!r}")
        return bool(self.run(job_results.delete_record, job_id))

    # -- lifecycle events and job status (bgjob.events; Settings.events) ---------------------------
    def events(
        self,
        queue: str | None = None,
        job_type: str | None = None,
        job_id: str | None = None,
        since: datetime | timedelta | None = None,
        timeout: float | None = 5.0,
        follow: bool = True,
    ) -> Iterator[Event]:
        """Iterate lifecycle events (`bgjob.events.Event`, oldest first), filtered on the server by `queue`,
        `job_type` and `job_id` (None: any), from `since` (an aware datetime, or a timedelta back from now;
        None: every event kept). Blocks for the next event; ends when none comes within `timeout` seconds (None:
        waits for ever) or, with `follow=False`, once it has yielded every event stored when it began.

        An ordered consumer (ephemeral, on the server) per iteration; close the iterator (or let it end) to
        remove it. Each iterator belongs to the thread that iterates it; any number may run at once. The events
        stream is created when missing if Settings.events is on or `follow`; else nothing is yielded. Raises
        InvalidJob for a bad queue, type or id, ValueError for a naive `since`, ConnectionError when NATS does
        not answer.
        """
        from . import events

        if queue is not None:
            jobmod.validate_queue(queue)
        if job_type is not None:
            jobmod.validate_type(job_type)
        if job_id is not None:
            jobmod.validate_job_id(job_id)
        if timeout is not None and not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
                                        and timeout >= 0):  # fmt: skip
            raise ValueError(f"timeout must be seconds >= 0 or None, not {timeout!r}")
        if isinstance(since, timedelta):
            if since < timedelta(0):
                raise ValueError(f"since must be a timedelta back from now (>= 0), not {since!r}")
            since = datetime.now(timezone.utc) - since
        elif since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
            raise ValueError(f"since must be an aware datetime or a timedelta, not {since!r}")
        subject = Topology(self.settings.prefix).events_filter(queue, job_type, job_id)
        return events.iterate(self, subject, since, timeout, follow)

    def job_status(self, job_id: str) -> JobStatus:
        """The state of job `job_id` (`bgjob.events.JobStatus`: `state`, the last `event`, its `time`,
        `attempt`, `due`, `error`) from its last lifecycle event, and its latest `progress` (`progress_at`,
        `masked_progress`; None when it reported none): two requests sent together, no store_result needed.
        `state` is a `JobState`: scheduled, ready, running, retry_scheduled, succeeded, dead_lettered, or unknown
        when no event of it is kept (events were off, it is older than Settings.events_max_age, or there is no
        such job). A job whose worker died mid-job stays `running` until it is delivered again
        (after ack_wait), then is `running` with the next attempt. Raises InvalidJob for a bad id,
        ConnectionError when NATS does not answer within retry_for."""
        from . import events

        jobmod.validate_job_id(job_id)
        return self.run(events.job_status, job_id, idempotent=True)

    # -- long-running jobs (bgjob.long_running, from dagnats) -------------------------------------------------
    def send_signal(self, job_id: str, name: str, data: Any = None) -> None:
        """Deliver signal `name` (1-64 letters, digits, '_' and '-') with `data` (JSON-serialisable or bytes) to
        job `job_id`, whose handler receives it from `job.wait_for_signal(name, timeout)`. It is stored (for
        Settings.signal_ttl) until the job consumes it, so a signal sent before the job waits is not lost; a
        second one of the same name sent before the first is consumed replaces it. Raises InvalidJob for a bad
        id, name or data, ConnectionError when NATS does not answer within retry_for."""
        from . import long_running

        long_running.send_signal(self, job_id, name, data)

    def progress(self, job_id: str) -> Any:
        """The latest progress job `job_id` reported with `job.report_progress(data)` (its data: a JSON value or
        bytes), or None when it reported none (or it is older than Settings.progress_ttl). Raises InvalidJob for
        a bad id, ConnectionError when NATS does not answer within retry_for."""
        from . import long_running

        return long_running.progress(self, job_id)

    def watch_progress(self, job_id: str, timeout: timedelta | float | None = None) -> Iterator[Any]:
        """A blocking iterator of job `job_id`'s progress: its latest value (if any), then each update as it is
        stored, until `timeout` seconds (or a timedelta) after the call; None: until you stop iterating (close
        the iterator, or break out of the loop, to free its server-side watch). Raises InvalidJob for a bad id
        or timeout, ConnectionError when NATS does not answer."""
        from . import long_running

        return long_running.watch_progress(self, job_id, timeout)

    # -- operating ---------------------------------------------------------------------------------
    @property
    def dlq(self) -> DeadLetters:
        """The dead-letter queue: list, get, retry, delete, purge, count."""
        if self._dlq is None:
            from .dead_letters import DeadLetters

            self._dlq = DeadLetters(self)
        return self._dlq

    def ensure_queue(self, queue: str = "default") -> None:
        """Create the queue's stream if missing (never its consumer: the first worker creates that)."""
        jobmod.validate_queue(queue)
        self.run(Core.ensure_queue, queue)

    def configure_queue(
        self,
        queue: str = "default",
        config: QueueConfig | None = None,
        *,
        ack_wait: float | timedelta | None = None,
        max_ack_pending: int | None = None,
        replicas: int | None = None,
        duplicate_window: float | timedelta | None = None,
        allow_msg_schedules: bool | None = None,
        max_entries: int | None = None,
        max_age: float | timedelta | None = None,
        max_deliveries: int | None = None,
    ) -> dict[str, tuple[Any, Any]]:
        """Change a queue's configuration on the server: the explicit act, since provisioning never changes
        what exists (a process starting with other Settings never undoes it). Arguments left None are kept as
        they are; a limit given as 0 (`bgjob.provisioning.NO_LIMIT`) is removed.

        `ack_wait` (seconds or timedelta, >= 1), `max_ack_pending` (jobs delivered and unsettled, queue-wide: the
        queue's concurrency across all workers) and `max_deliveries` (>= 2: the server delivers one message at
        most that often; the worker dead-letters the last delivery unrun, reason "max_deliveries", so nothing
        stays undeliverable) belong to the queue's consumer; `replicas` (1-5), `duplicate_window` (seconds or
        timedelta) and `allow_msg_schedules` (True only) to its stream. `max_entries` (>= 1: a send is refused with
        QueueFull when the stream holds that many messages; delayed, retrying and periodic ones count) and
        `max_age` (seconds or timedelta, >= 1: a job ready that long before its first delivery is dead-lettered
        unrun, reason "expired"; delayed jobs and schedules age from when they fire) are kept in the stream's
        metadata. A missing stream is created from Settings; a missing consumer only when one of its fields is
        given. Running workers read ack_wait, max_age and max_deliveries when they start: restart them after a
        change; producers read max_entries within 30 s (this client at once).
        `config`, a `QueueConfig` (as `queue_config` returns it; e.g. `dataclasses.replace(client.queue_config("a"),
        max_entries=1000)`), gives the queue that configuration: its limits as they are (a limit None in it is
        removed), its ack_wait, max_ack_pending, replicas, duplicate_window and allow_msg_schedules where they are
        set (None keeps the queue's); its queue, stream and consumer names are not used, so one read from another
        queue copies that queue's configuration. A keyword given beside it wins over its field.
        Returns {field: (old, new)} for what changed (old None: the consumer was created, or no limit was set).
        Raises ConfigurationError for a bad value or one the server refuses, naming it, and for a `config` that is
        not a QueueConfig.
        """
        jobmod.validate_queue(queue)
        given: dict[str, Any] = {
            "ack_wait": ack_wait, "max_ack_pending": max_ack_pending, "replicas": replicas,
            "duplicate_window": duplicate_window, "allow_msg_schedules": allow_msg_schedules,
            "max_entries": max_entries, "max_age": max_age, "max_deliveries": max_deliveries,
        }  # fmt: skip
        if config is not None:
            given = {**queue_config_changes(config), **{k: v for k, v in given.items() if v is not None}}
        changes = validate_queue_changes(**given)
        return self.run(Core.configure_queue, queue, changes) if changes else {}

    def queue_config(self, queue: str = "default") -> QueueConfig | None:
        """The queue's configuration as the server has it (None when the queue does not exist); creates nothing."""
        jobmod.validate_queue(queue)
        return self.run(Core.queue_config, queue, idempotent=True)

    def queue_stats(self, queue: str = "default") -> QueueStats:
        jobmod.validate_queue(queue)
        return self.run(queue_stats, queue, idempotent=True)

    def queues(self) -> list[str]:
        """Names of the queues that exist on the server."""
        return self.run(list_queues, idempotent=True)

    def workers(self) -> list[WorkerInfo]:
        """Live workers (those whose last heartbeat is younger than Settings.worker_ttl)."""
        from .directory import list_workers

        return self.run(list_workers, idempotent=True)

    # -- periodic jobs -----------------------------------------------------------------------------
    def schedule(
        self,
        name: str,
        cron: str,
        job_type: str,
        arg: Any = None,
        *,
        queue: str = "default",
        tz: str = "UTC",
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Declare a periodic job: `job_type` with `arg` enqueued at every tick of `cron` (5 fields, or 6
        with seconds first) in time zone `tz` (an IANA name). The server fires it, once per tick however many
        processes declare it.

        A declaration is the whole schedule: declaring `name` again replaces everything stored (a header left
        out is gone). Returns True if the stored schedule changed, False if it already was exactly this one.
        Every write is a compare-and-set: racing declarations with different values end with exactly one of
        them whole, the one with the greatest `periodic.declaration_key` (the others log a warning and return
        False). Names are unique across queues.

        Raises InvalidSchedule (bad name, cron or time zone; `name` exists on another queue), InvalidJob (type,
        queue, arg, headers).
        """
        from . import periodic

        periodic.validate_name(name)
        subject, body, hdrs = periodic_message(self.settings, name, cron, job_type, arg, queue, tz, headers)
        runtime, core = self._ensure()
        return self._call(runtime, periodic.declare(core, name, queue, subject, body, hdrs), publishing=True)

    def unschedule(self, name: str, *, queue: str | None = None, revision: int | None = None) -> bool:
        """Remove the periodic job `name` from whichever queue holds it (or only from `queue`, when given).

        `revision` (a `PeriodicJob.revision` from `schedules()`, with `queue`) removes it only if it was not
        declared again since: a compare-and-delete. Returns True if a schedule was removed, False if there was
        none by that name (on that queue, at that revision); a miss is not an error, as with a dict's `pop` with
        a default. Raises InvalidSchedule (bad name, or `revision` without `queue`), InvalidJob (bad queue).
        """
        from . import periodic

        periodic.validate_name(name)
        if queue is not None:
            jobmod.validate_queue(queue)
        elif revision is not None:
            raise InvalidSchedule("unschedule(..., revision=) needs the queue the revision was read from")
        return self.run(periodic.remove, name, queue, revision)

    def schedules(self, queue: str | None = None) -> list[PeriodicJob]:
        """The periodic jobs declared (on one queue, or all)."""
        from . import periodic

        if queue is not None:
            jobmod.validate_queue(queue)
        return self.run(periodic.list_schedules, queue, idempotent=True)


# -- the process-wide default client -----------------------------------------------------------------
_default: Client | None = None
_default_lock = threading.Lock()
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def connect(url: str | None = None, **options: Any) -> Client:
    """Connect to NATS (None and no BGJOB_URL: the embedded server) and make it the default client.

    `options` are Settings fields (prefix, replicas, ack_wait, ..., and nats_options={...} for nats.connect's
    keyword arguments). Raises ConfigurationError for an unknown key (naming the closest) or a bad value.
    """
    global _default
    client = Client(Settings.from_env(url=url, **options)).connect()
    with _default_lock:
        previous, _default = _default, client
    if previous is not None and previous is not client:
        previous.close()
    return client


def default_client() -> Client:
    """The process-wide client, created from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Client(Settings.from_env())
        return _default


def send_job(
    job_type: str,
    arg: Any = None,
    *,
    queue: str = "default",
    delay: timedelta | float | None = None,
    at: datetime | None = None,
    job_id: str | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    store_result: bool | None = None,
    unique_for: timedelta | float | None = None,
    sensitive: Collection[str] | None = None,
    deadline: datetime | timedelta | float | None = None,
    max_attempts: int | None = None,
    target: str | None = None,
    partition_key: str | None = None,
    target_timeout: timedelta | float | None = None,
) -> str:
    """`default_client().send_job(...)`: the same parameters (documented at `Client.send_job`; `delay`,
    `unique_for`, `target_timeout` and `deadline` take seconds or a timedelta), the same return value (the job's
    id once JetStream has stored it) and errors (InvalidJob, ConnectionError)."""
    return default_client().send_job(job_type, arg, queue=queue, delay=delay, at=at, job_id=job_id,
                                     request_id=request_id, headers=headers, store_result=store_result,
                                     unique_for=unique_for, sensitive=sensitive, deadline=deadline,
                                     max_attempts=max_attempts, target=target, partition_key=partition_key,
                                     target_timeout=target_timeout)  # fmt: skip


def send_jobs(jobs: Iterable[JobSpec | tuple[str, Any]], *, queue: str = "default", window: int = 2000) -> list[str]:
    """`default_client().send_jobs(...)`: the same parameters (documented at `Client.send_jobs`; `window`: the
    most publishes in flight), return value (the ids, in order) and errors (InvalidJob, SendJobsError)."""
    return default_client().send_jobs(jobs, queue=queue, window=window)


def _after_fork_in_child() -> None:
    """Locks held by other threads at fork() would never be released in the child: start afresh."""
    global _default_lock
    _default_lock = threading.Lock()
    for client in list(_live_clients):
        client._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_all() -> None:
    for client in list(_live_clients):
        if client._runtime is not None and client._runtime.alive:
            client.close(timeout=5.0)
