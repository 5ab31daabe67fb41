"""The Client: bgjob's blocking, thread-safe, fork-safe facade over nats-py."""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import job as jobmod
from . import job_results, unique
from .codec import DEFAULT_MAX_PAYLOAD, PreparedJob, check_size, periodic_message, prepare_job, prepared_job, spec_of
from .core import Core, QueueConfig, as_bgjob_error, is_transient
from .encryption import cipher_for
from .errors import BgjobError, ConnectionError, InvalidJob, JobTooLarge, ResultNotFound, SendJobsError
from .job import JobSpec
from .job_results import JobResult
from .provisioning import validate_queue_changes
from .publisher import Outgoing, PublishBatch, Publisher
from .redaction import mask_url
from .runtime import Runtime, in_gevent_hub_thread
from .settings import Settings
from .signing import signer_for
from .stats import QueueStats, list_queues, queue_stats

if TYPE_CHECKING:
    from .dead_letters import DeadLetters
    from .directory import WorkerInfo
    from .periodic import PeriodicJob

log = logging.getLogger("bgjob.client")

# Re-exported: Core and prepare_job are what integrations (bgjob_django) build on.
__all__ = ["Client", "Core", "PreparedJob", "QueueStats", "connect", "default_client", "is_transient", "prepare_job",
           "send_job", "send_jobs", "signer_for"]  # fmt: skip


def _resolve_url(settings: Settings) -> str:
    """settings.url, else BGJOB_URL, else the embedded server of settings.data_dir, else of BGJOB_DATA_DIR, else
    of the current directory's project (bgjob.server.default_data_dir)."""
    url = settings.url or os.environ.get("BGJOB_URL")
    if url:
        return url
    from .server import ensure_embedded_server

    return ensure_embedded_server(settings.data_dir or os.environ.get("BGJOB_DATA_DIR") or None)


class Client:
    """A connection to NATS JetStream, safe to share between threads and across fork()."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        cipher_for(self.settings.encryption_keys)  # unusable keys, or no cryptography: ConfigurationError now
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._core: Core | None = None
        self._closed = False
        self._url: str | None = None
        self._dlq: DeadLetters | None = None
        self._publisher: Publisher | None = None
        self._green_gate: tuple[int, Any] | None = None
        _live_clients.add(self)

    # -- lifecycle -------------------------------------------------------------------------------
    def _ensure(self) -> tuple[Runtime, Core]:
        """The runtime and connection of this process, (re)built on first use or after fork()."""
        runtime, core = self._runtime, self._core
        if runtime is not None and core is not None and runtime.alive and not core.lost:
            return runtime, core
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
            return self._runtime, self._core  # type: ignore[return-value]

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

    def run(self, coro_fn: Any, *args: Any, timeout: float | None = None, idempotent: bool = False) -> Any:
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

    def _call(self, runtime: Runtime, coro: Any, timeout: float | None = None,
              job_ids: tuple[str, ...] = (), publishing: bool = False) -> Any:  # fmt: skip
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

    # -- producing ---------------------------------------------------------------------------------
    def send_job(
        self,
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
    ) -> str:
        """Enqueue a job; returns its id once JetStream has stored it (PubAck).

        `delay`/`at` hand the job to a server-side schedule; `job_id` makes sending idempotent within
        the duplicate window; `store_result` keeps its status and return value for `result()` (default:
        whether `queue` is in Settings.result_queues). Raises InvalidJob (nothing published) or
        ConnectionError (not confirmed).

        `unique_for` (timedelta or seconds, 1 s to 30 days; needs `job_id`): the id is reserved for that long
        in the `<PREFIX>_UNIQUE` bucket, across server restarts; a send of a reserved id returns it without
        publishing (see bgjob.unique for what happens when a publish fails).

        `sensitive` (a list of arg key names, e.g. `["card", "password"]`; exact names, matched at any depth of
        a JSON arg): the values under those keys are masked (`bgjob.redaction.MASK`) in bgjob's logs, dead
        letters' errors and displays, stored results' errors and Sentry; the job itself carries them intact
        (its handler sees the real arg). The keys travel in the `Bgjob-Sensitive` header; the worker adds the
        handler's own (`Mux.handler(..., sensitive=)`). A lone str or a key with ',' or a space is InvalidJob.

        The same as `publish_prepared([prepare_job(JobSpec(job_type, arg, ...), queue=queue)])`, except for the
        errors: one job's own (a refusal, or a ConnectionError that names it), never SendJobsError.
        """
        spec = JobSpec(job_type, arg, queue=queue, delay=delay, at=at, job_id=job_id, request_id=request_id,
                       headers=headers, store_result=store_result, unique_for=unique_for,
                       sensitive=sensitive)  # fmt: skip
        # Sized now against the server's max_payload when connected; else once connected, in _publish.
        job = self._prepare(spec, queue, self._connected_max_payload())
        try:
            return self._publish([job], window=1)[0]
        except SendJobsError as exc:
            raise _one_job_error(exc, job.job_id) from None

    def send_jobs(
        self, jobs: Iterable[JobSpec | tuple[str, Any]], *, queue: str = "default", window: int = 2000
    ) -> list[str]:
        """Enqueue many jobs, pipelined; returns their ids (in order) once every one is stored.

        `jobs` holds `(type, arg)` pairs or `JobSpec`s. All are validated before anything is published
        (InvalidJob names the index of the first bad one). At most `window` publishes are in flight. If
        some cannot be confirmed, SendJobsError says which ids were stored and which were not. A JobSpec with
        `unique_for` is not published when its id is reserved (by an earlier send, or earlier in `jobs`).
        A JobSpec's `sensitive` keys are masked as `send_job`'s are. The same as `publish_prepared` of each
        job's `prepare_job`.
        """
        prepared = []
        for index, item in enumerate(jobs):
            try:
                prepared.append(self._prepare(item if isinstance(item, JobSpec) else spec_of(item), queue, None))
            except InvalidJob as exc:
                raise InvalidJob(f"job {index}: {exc}; nothing was sent") from exc
        return self._publish(prepared, window)

    def prepare_job(self, spec: JobSpec, *, queue: str = "default") -> PreparedJob:
        """Build `spec` into a PreparedJob now, for `publish_prepared` to publish later (at a transaction's commit,
        from an outbox table): validated, its arg encoded (read now: changing it afterwards changes nothing),
        size-checked, encrypted (Settings.encryption_keys) and signed (Settings.signing_key). `queue` is used
        when `spec.queue` is None. A delay or `at` is fixed now: the job is due at the same moment however late
        it is published. `store_result` None is decided now too (Settings.result_queues).

        No network I/O: it never connects. The size limit is the connected server's max_payload when this
        client is connected, else nats-server's default of 1 MiB (`codec.DEFAULT_MAX_PAYLOAD`), less the room
        kept for a dead letter's error. Raises InvalidJob (nothing to publish), ConfigurationError for unusable
        encryption keys.
        """
        return self._prepare(spec, queue, self._known_max_payload())

    def _prepare(self, spec: JobSpec, queue: str, max_payload: int | None) -> PreparedJob:
        if not isinstance(spec, JobSpec):
            raise InvalidJob(f"expected a bgjob.JobSpec, got a {type(spec).__name__}")
        job_queue = spec.queue or queue
        ttl = unique.validate_unique_for(spec.unique_for, spec.job_id)
        return prepared_job(self.settings, spec, queue=queue, store_result=self._stores_result(job_queue,
                            spec.store_result), max_payload=max_payload, unique_for=ttl)  # fmt: skip

    def _known_max_payload(self) -> int:
        """The connected server's max_payload, else nats-server's default (nothing is connected for it)."""
        return self._connected_max_payload() or DEFAULT_MAX_PAYLOAD

    def _connected_max_payload(self) -> int | None:
        """The connected server's max_payload (bytes), None when this client is not connected."""
        runtime, core = self._runtime, self._core
        if runtime is not None and runtime.alive and core is not None and core.nc is not None and core.nc.is_connected:
            return core.max_payload
        return None

    def publish_prepared(self, jobs: Sequence[PreparedJob], *, window: int = 2000) -> list[str]:
        """Publish jobs built by `prepare_job` (or read back with `PreparedJob.from_record`), their bytes as they
        are, pipelined (at most `window` in flight); returns their ids, in order, once every one is stored
        (PubAck). Publishing a job again is safe: inside the queue's duplicate window the server drops it
        (its Nats-Msg-Id is its job id), and a job with `unique_for` is published only while it holds its id.
        Jobs with `store_result` get their READY result record once stored.

        Raises InvalidJob (nothing published) for an item that is not a PreparedJob or was prepared for another
        prefix, JobTooLarge (nothing published) for one larger than the connected server accepts, SendJobsError
        when some were published but not all confirmed (`stored`, `not_stored`, `errors`; re-publishing the
        not_stored ones is the retry), ConnectionError when NATS cannot be reached (before anything is
        published, or the result records after all were stored: it names the job ids).
        """
        jobs = list(jobs)
        for index, job in enumerate(jobs):
            if not isinstance(job, PreparedJob):
                raise InvalidJob(f"job {index}: expected a bgjob.PreparedJob, got a {type(job).__name__}; "
                                 "nothing was sent")  # fmt: skip
            try:
                job.check_prefix(self.settings.prefix)
            except InvalidJob as exc:
                raise InvalidJob(f"job {index}: {exc}; nothing was sent") from exc
        return self._publish(jobs, window)

    def _publish(self, jobs: list[PreparedJob], window: int) -> list[str]:
        """Size-check against the connected server, reserve unique ids, publish the jobs not reserved by an
        earlier send (once each), release the reservations of jobs not confirmed stored, record READY results."""
        runtime, core = self._ensure()
        for index, job in enumerate(jobs):
            if job.size_checked_for(core.max_payload):
                continue
            try:
                check_size(core.max_payload, job.body, job.headers)
            except InvalidJob as exc:
                which = f"job {index}: " if len(jobs) > 1 else ""
                raise JobTooLarge(f"{which}{exc}; nothing was sent", job_ids=(job.job_id,)) from None
        uniques = [(job.job_id, job.queue, job.unique_for, job.reservation_token) for job in jobs
                   if job.unique_for is not None]
        held: dict[str, unique.Reservation | None] = {}
        publish = jobs
        if uniques:
            held = self._call(runtime, unique.reserve_many(core, uniques))
            publish, seen = [], set()
            for job in jobs:
                if job.job_id in held and (held[job.job_id] is None or job.job_id in seen):
                    continue  # reserved by an earlier send, or sent earlier in this batch
                seen.add(job.job_id)
                publish.append(job)
        try:
            if len(publish) == 1:
                self._publish_one(runtime, publish[0])  # send_job: the pipelining book-keeping costs a tenth
            else:
                self._publish_pipelined(runtime, publish, max(1, window))
        except BaseException as exc:
            if held:
                stored = set(getattr(exc, "stored", ()))
                self._release_unique(runtime, core, [r for r in held.values() if r and r.job_id not in stored], exc)
            raise
        reserved = [r for r in held.values() if r is not None]
        if reserved:
            self._call(runtime, unique.mark_published(core, reserved))
        with_results = [(job.job_id, job.job_type, job.queue) for job in publish if job.store_result]
        if with_results:
            self._record_ready(runtime, _record_ready_all(core, with_results), tuple(i for i, *_ in with_results))
        return [job.job_id for job in jobs]

    def _release_unique(self, runtime: Runtime, core: Core, held: list[unique.Reservation], exc: BaseException) -> None:
        try:
            unique.note_still_reserved(exc, self._call(runtime, unique.release_all(core, held)))
        except Exception:  # noqa: BLE001 - the runtime itself is gone
            unique.note_still_reserved(exc, [r.job_id for r in held])


    def _stores_result(self, queue: str, store_result: bool | None) -> bool:
        return store_result if store_result is not None else queue in self.settings.result_queues

    def _record_ready(self, runtime: Runtime, coro: Any, job_ids: tuple[str, ...]) -> None:
        """Write the READY result records of jobs already stored; ConnectionError (with the ids) if that fails."""
        try:
            self._call(runtime, coro, job_ids=job_ids)
        except BgjobError as exc:
            raise ConnectionError(
                f"job(s) {', '.join(job_ids)} stored, but their result record could not be written ({exc}); the "
                "job(s) will run, result() may not find them until a worker records their outcome", job_ids=job_ids,
            ) from exc

    def result(self, job_id: str, wait: float | None = None) -> JobResult:
        """The stored result of a job sent with store_result; with `wait`, block up to that many seconds
        for it to finish (then return whatever it is). Raises ResultNotFound when nothing is stored."""
        runtime, core = self._ensure()
        deadline = time.monotonic() + (wait or 0)
        pause = 0.01
        while True:
            record = self._call(runtime, job_results.read_record(core, job_id))
            if record is None:
                raise ResultNotFound(f"no stored result for job {job_id!r} (sent without store_result, or expired)")
            result = JobResult.from_record(record)
            if result.status.finished or time.monotonic() >= deadline:
                return result
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

    def _publish_one(self, runtime: Runtime, job: PreparedJob) -> None:
        """Publish one job and wait for its PubAck; SendJobsError (as `_publish_pipelined`'s) if not stored."""
        batch = self._publisher.submit([Outgoing(job.subject, job.body, job.headers, job.queue)])  # type: ignore[union-attr]
        runtime.wait_batch(batch, max(0.0, batch.deadline - time.monotonic()) + self._bound())
        if batch.settled[0] and batch.errors[0] is None:
            return
        error = batch.errors[0] if batch.settled[0] else None
        _raise_unsent([job.job_id], set(), {job.job_id: error or ConnectionError("not confirmed in time",
                                                                                 job_ids=(job.job_id,))})  # fmt: skip

    def _publish_pipelined(self, runtime: Runtime, prepared: list[PreparedJob], window: int) -> list[str]:
        publisher = self._publisher
        assert publisher is not None
        stored: set[str] = set()
        errors: dict[str, BaseException] = {}
        in_flight: collections.deque[tuple[list[str], PublishBatch]] = collections.deque()

        def settle_oldest_chunk() -> None:
            ids, batch = in_flight.popleft()
            runtime.wait_batch(batch, max(0.0, batch.deadline - time.monotonic()) + self._bound())
            for job_id, error, settled in zip(ids, batch.errors, list(batch.settled), strict=True):
                if not settled:
                    errors.setdefault(job_id, ConnectionError("not confirmed in time", job_ids=(job_id,)))
                elif error is None:
                    stored.add(job_id)
                else:
                    errors.setdefault(job_id, error)

        # Two chunks in flight: the next is on the wire while we wait for the PubAcks of the current.
        chunk = max(1, window // 2)
        for start in range(0, len(prepared), chunk):
            if errors:
                break
            part = prepared[start : start + chunk]
            in_flight.append(([job.job_id for job in part], publisher.submit(
                [Outgoing(job.subject, job.body, job.headers, job.queue) for job in part])))
            if len(in_flight) == 2:
                settle_oldest_chunk()
        while in_flight:
            settle_oldest_chunk()
        ids = [job.job_id for job in prepared]
        if errors or len(stored) < len(set(ids)):
            _raise_unsent(ids, stored, errors)
        return ids

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
        *,
        ack_wait: float | timedelta | None = None,
        max_ack_pending: int | None = None,
        replicas: int | None = None,
        duplicate_window: float | timedelta | None = None,
        allow_msg_schedules: bool | None = None,
    ) -> dict[str, tuple[Any, Any]]:
        """Change a queue's configuration on the server: the explicit act, since provisioning never changes
        what exists. Arguments left None are kept as they are.

        `ack_wait` (seconds or timedelta, >= 1) and `max_ack_pending` (jobs delivered and unsettled, queue-wide)
        belong to the queue's consumer; `replicas` (1-5), `duplicate_window` (seconds or timedelta) and
        `allow_msg_schedules` (True only) to its stream. A missing stream is created from Settings; a missing
        consumer only when one of its fields is given. Running workers pick a new ack_wait up at their next
        start (they pace heartbeats to the value they read then): restart them after lowering it.
        Returns {field: (old, new)} for what changed (old None: the consumer was created). Raises
        ConfigurationError for a bad value or one the server refuses, naming it.
        """
        jobmod.validate_queue(queue)
        changes = validate_queue_changes(
            ack_wait=ack_wait, max_ack_pending=max_ack_pending, replicas=replicas,
            duplicate_window=duplicate_window, allow_msg_schedules=allow_msg_schedules,
        )  # fmt: skip
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
            raise periodic.InvalidSchedule("unschedule(..., revision=) needs the queue the revision was read from")
        return self.run(periodic.remove, name, queue, revision)

    def schedules(self, queue: str | None = None) -> list[PeriodicJob]:
        """The periodic jobs declared (on one queue, or all)."""
        from . import periodic

        if queue is not None:
            jobmod.validate_queue(queue)
        return self.run(periodic.list_schedules, queue, idempotent=True)


def _raise_unsent(ids: list[str], stored: set[str], errors: dict[str, BaseException]) -> None:
    """SendJobsError for a publish of `ids` of which only `stored` were confirmed (`errors` by job id); shared
    by `Client._publish_one` and `Client._publish_pipelined`."""
    not_stored = [i for i in ids if i not in stored]
    first = next(iter(errors.values()), None)
    refused = [i for i in not_stored if i in errors and not isinstance(errors[i], ConnectionError)]
    unsure = [i for i in not_stored if isinstance(errors.get(i), ConnectionError)]
    parts = [f"{len(refused)} refused by the server, not stored ({errors[refused[0]]})"] if refused else []
    if unsure:
        parts.append(f"{len(unsure)} not confirmed ({errors[unsure[0]]}): they may have been stored")
    if len(not_stored) > len(refused) + len(unsure):
        parts.append(f"{len(not_stored) - len(refused) - len(unsure)} not sent after the first error")
    what = "; ".join(parts) or f"not confirmed ({first})"
    raise SendJobsError(
        f"{len(stored)} of {len(ids)} jobs stored, {what}; sending the not_stored ones again with the same "
        "job ids is safe and is the way to retry (a send without those ids could run a job twice)",
        stored=[i for i in ids if i in stored], not_stored=not_stored, errors=errors,
    )  # fmt: skip


def _not_confirmed(error: BaseException, job_id: str) -> BaseException:
    """The error send_job raises for `job_id` after its publish left the process: a refusal as it is (the server
    answered; the job was not stored), anything else a ConnectionError that says the job may be stored."""
    if not isinstance(error, ConnectionError) and isinstance(error, BgjobError):
        return as_bgjob_error(error, job_ids=(job_id,))
    why = str(as_bgjob_error(error))
    result = ConnectionError(
        f"job {job_id!r} not confirmed ({why}); it may have been stored all the same: send it again with "
        f"job_id={job_id!r}, which is safe and is the way to retry (a send without that job id could run it twice)",
        job_ids=(job_id,),
    )
    result.__cause__ = error
    return result


def _one_job_error(exc: SendJobsError, job_id: str) -> BaseException:
    """send_job's error for its one job from the SendJobsError of its publish, with that error's notes."""
    error = exc.errors.get(job_id) or ConnectionError(str(exc), job_ids=(job_id,))
    result = _not_confirmed(error, job_id)
    for note in getattr(exc, "__notes__", ()):
        result.add_note(note)
    return result


async def _record_ready_all(core: Core, jobs: list[tuple[str, str, str]]) -> None:
    for job_id, job_type, queue in jobs:
        await job_results.record_ready(core, job_id, job_type, queue)


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


def send_job(job_type: str, arg: Any = None, **kwargs: Any) -> str:
    """`default_client().send_job(...)`."""
    return default_client().send_job(job_type, arg, **kwargs)


def send_jobs(jobs: Iterable[JobSpec | tuple[str, Any]], **kwargs: Any) -> list[str]:
    """`default_client().send_jobs(...)`."""
    return default_client().send_jobs(jobs, **kwargs)


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
