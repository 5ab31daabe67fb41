"""Sending jobs: `send_job`, `send_jobs`, `prepare_job` and `publish_prepared`, the producing half of `Client`.

`Client` inherits them from `Sending`: a job is prepared (validated, encoded, size-checked, encrypted, signed:
`codec.prepared_job`, no I/O), then published as it is (unique ids reserved, PubAcks awaited, READY result
records written). Every call is bounded like the client's others: Settings.retry_for plus one request_timeout.
The process's send hooks (`bgjob.send_hooks`: tracing) see each job: started at the call, before it is built
(their headers built in), ended after its PubAck or refusal (`prepare_job`: at once).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Collection, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import job_results, unique
from .codec import DEFAULT_MAX_PAYLOAD, PreparedJob, check_size, prepared_job, spec_of
from .core import as_bgjob_error
from .errors import BgjobError, ConnectionError, InvalidJob, JobTooLarge, SendJobsError
from .events import emit_enqueued, withdraw_enqueued
from .job import JobSpec
from .publisher import Outgoing, PublishBatch
from .send_hooks import SendScope, end_sends, start_sends

if TYPE_CHECKING:
    from .core import Core
    from .publisher import Publisher
    from .runtime import Runtime
    from .settings import Settings

T = TypeVar("T")

class Sending:
    """The producing methods of `bgjob.Client` (documented there, each below). They use the client's connection
    (`_ensure`, `_call`, `_bound`, defined by Client) and its pipelined publisher."""

    settings: Settings
    _publisher: Publisher | None
    _runtime: Runtime | None
    _core: Core | None

    if TYPE_CHECKING:  # defined by Client (bgjob/client.py), declared here for the type checker

        def _ensure(self) -> tuple[Runtime, Core]: ...

        def _call(self, runtime: Runtime, coro: Coroutine[Any, Any, T], timeout: float | None = None,
                  job_ids: tuple[str, ...] = (), publishing: bool = False) -> T: ...  # fmt: skip

        def _bound(self) -> float: ...
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
        deadline: datetime | timedelta | float | None = None,
        max_attempts: int | None = None,
        target: str | None = None,
        partition_key: str | None = None,
        target_timeout: timedelta | float | None = None,
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

        `deadline` (an aware datetime, or a timedelta or seconds from now; choria asyncjobs' and ebind's task
        deadline): when the job stops being worth running. A worker that receives it later dead-letters it with
        reason `deadline` without running its handler, and never schedules a retry that would run after it;
        handlers see it as `job.deadline`. A naive datetime, a deadline already passed, or a delay/`at` not before
        it is InvalidJob.

        `max_attempts` (an int >= 1): this job's attempt limit, winning over its handler's retry policy and the
        worker's (`job.max_attempts` shows the effective one). Both travel in headers (Bgjob-Deadline,
        Bgjob-Max-Attempts).

        `target` (a claim, e.g. "primary" or "region/eu"; from ebind): only a worker holding that claim
        (`Worker(..., claims=[...])`) runs the job; until one does, it waits in the queue (bgjob.placement).
        `target_timeout` (seconds > 0 or a timedelta, counted from when the job is due; default
        Settings.target_timeout, None: wait for ever): when no live worker holds the claim by then, a worker of
        the queue dead-letters the job, reason `no_target` (within a few seconds; header Bgjob-Target-Until).
        Without `target` it is InvalidJob.

        `partition_key` (a printable str; from dagnats): jobs with the same key run one at a time in send order,
        across workers whose handlers are `partitioned=True`; a failing job blocks its key until it succeeds or
        is dead-lettered (bgjob.placement). Not with `target`.

        The same as `publish_prepared([prepare_job(JobSpec(job_type, arg, ...), queue=queue)])`, except for the
        errors: one job's own (a refusal, or a ConnectionError that names it), never SendJobsError.
        """
        spec = JobSpec(job_type, arg, queue=queue, delay=delay, at=at, job_id=job_id, request_id=request_id,
                       headers=headers, store_result=store_result, unique_for=unique_for,
                       sensitive=sensitive, deadline=deadline, max_attempts=max_attempts,
                       target=target, partition_key=partition_key, target_timeout=target_timeout)  # fmt: skip
        # Sized now against the server's max_payload when connected; else once connected, in _publish.
        job, scopes = self._prepare_observed(spec, queue, self._connected_max_payload(), publish=True)
        try:
            job_id = self._publish([job], window=1)[0]
        except SendJobsError as exc:
            error = _one_job_error(exc, job.job_id)
            end_sends(scopes, job.job_id, error)
            raise error from None
        except BaseException as exc:
            end_sends(scopes, job.job_id, exc)
            raise
        end_sends(scopes, job_id, None)
        return job_id

    def send_jobs(
        self, jobs: Iterable[JobSpec | tuple[str, Any]], *, queue: str = "default", window: int = 2000
    ) -> list[str]:
        """Enqueue many jobs, pipelined; returns their ids (in order) once every one is stored.

        `jobs` holds `(type, arg)` pairs or `JobSpec`s. All are validated before anything is published
        (InvalidJob names the index of the first bad one). At most `window` publishes are in flight. If
        some cannot be confirmed, SendJobsError says which ids were stored and which were not. A JobSpec with
        `unique_for` is not published when its id is reserved (by an earlier send, or earlier in `jobs`).
        A JobSpec's `sensitive` keys are masked as `send_job`'s are, its `deadline` and `max_attempts` work as
        `send_job`'s (a timedelta deadline counts from this call), and so do `target` and `target_timeout`. The
        same as `publish_prepared` of each job's `prepare_job`.
        """
        prepared: list[PreparedJob] = []
        observed: list[list[SendScope]] = []
        try:
            for index, item in enumerate(jobs):
                try:
                    job, scopes = self._prepare_observed(item if isinstance(item, JobSpec) else spec_of(item), queue,
                                                         None, publish=True)  # fmt: skip
                except InvalidJob as exc:
                    raise InvalidJob(f"job {index}: {exc}; nothing was sent") from exc
                prepared.append(job)
                observed.append(scopes)
            ids = self._publish(prepared, window)
        except BaseException as exc:
            for job, scopes in zip(prepared, observed, strict=True):
                end_sends(scopes, job.job_id, _job_error(exc, job.job_id))
            raise
        for job, scopes in zip(prepared, observed, strict=True):
            end_sends(scopes, job.job_id, None)
        return ids

    def prepare_job(self, spec: JobSpec, *, queue: str = "default") -> PreparedJob:
        """Build `spec` into a PreparedJob now, for `publish_prepared` to publish later (at a transaction's commit,
        from an outbox table): validated, its arg encoded (read now: changing it afterwards changes nothing),
        size-checked, encrypted (Settings.encryption_keys) and signed (Settings.signing_key). `queue` is used
        when `spec.queue` is None. A delay or `at` is fixed now: the job is due at the same moment however late
        it is published; so is a timedelta `deadline` (counted from now, not from the publish). `store_result`
        None is decided now too (Settings.result_queues).

        No network I/O: it never connects. The size limit is the connected server's max_payload when this
        client is connected, else nats-server's default of 1 MiB (`codec.DEFAULT_MAX_PAYLOAD`), less the room
        kept for a dead letter's error. Raises InvalidJob (nothing to publish), ConfigurationError for unusable
        encryption keys.
        """
        job, scopes = self._prepare_observed(spec, queue, self._known_max_payload(), publish=False)
        end_sends(scopes, job.job_id, None)
        return job

    def _prepare_observed(self, spec: JobSpec, queue: str, max_payload: int | None, *,
                          publish: bool) -> tuple[PreparedJob, list[SendScope]]:  # fmt: skip
        """`_prepare` with the send hooks (bgjob.send_hooks) started first: their headers built into the job; their
        scopes returned for the caller to end (ended here, with the error, when building fails)."""
        if not isinstance(spec, JobSpec):
            raise InvalidJob(f"expected a bgjob.JobSpec, got a {type(spec).__name__}")
        spec, scopes = start_sends(spec, queue, publish=publish)
        try:
            return self._prepare(spec, queue, max_payload), scopes
        except BaseException as exc:
            end_sends(scopes, None, exc)
            raise

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
        if runtime is not None and runtime.alive and core is not None and core.connected:
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
        by_queue: dict[str, list[str]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job.job_id)
        if core.must_admit(set(by_queue)):  # a queue with max_entries: QueueFull, nothing sent, if it is full
            self._call(runtime, core.admit(by_queue))
        uniques: list[tuple[str, str, int, str | None]] = [
            (job.job_id, job.queue, job.unique_for, job.reservation_token) for job in jobs if job.unique_for is not None
        ]
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
        if self.settings.events:  # lifecycle events (bgjob.events): just before the jobs, not waiting for PubAcks
            emit_enqueued(runtime, core, publish)
        try:
            if len(publish) == 1:
                self._publish_one(runtime, publish[0])  # send_job: the pipelining book-keeping costs a tenth
            else:
                self._publish_pipelined(runtime, publish, max(1, window))
        except BaseException as exc:
            if self.settings.events and isinstance(exc, SendJobsError):
                self._withdraw_events(runtime, core, publish, exc)
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


    def _withdraw_events(self, runtime: Runtime, core: Core, jobs: list[PreparedJob], exc: SendJobsError) -> None:
        """Remove the `enqueued` events of jobs surely not stored (refused, or never sent after an error); the
        events of jobs not confirmed stay (they may well be stored)."""
        unsure = {i for i, e in exc.errors.items() if isinstance(e, ConnectionError)}
        gone = [i for i in exc.not_stored if i not in unsure]
        if gone:
            try:
                self._call(runtime, withdraw_enqueued(core, [job for job in jobs if job.job_id in gone]))
            except Exception:  # noqa: BLE001 - logged by withdraw_enqueued; the send's own error matters
                pass

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

    def _publish_one(self, runtime: Runtime, job: PreparedJob) -> None:
        """Publish one job and wait for its PubAck; SendJobsError (as `_publish_pipelined`'s) if not stored."""
        assert self._publisher is not None  # _ensure() made it
        batch = self._publisher.submit([Outgoing(job.subject, job.body, job.headers, job.queue)])
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


def _job_error(exc: BaseException, job_id: str) -> BaseException | None:
    """What a failed send_jobs call means for its job `job_id`: None if it was stored all the same (a SendJobsError
    that lists it as stored), else its own error, else the call's."""
    if isinstance(exc, SendJobsError):
        if job_id in exc.stored:
            return None
        return exc.errors.get(job_id) or exc
    return exc


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
