"""Immediate mode, for unit tests with no server at all (Celery's `task_always_eager`, Huey's `immediate=True`).

Turn it on with `Settings(immediate=True)`, the environment variable `BGJOB_IMMEDIATE=1` (the module-level
`bgjob.send_job`'s client), or `BGJOB["IMMEDIATE"] = True` in Django (whose registry is then the handlers). Then
`send_job`, `send_jobs` and `publish_prepared` never connect: each job is run at once, in the caller's thread, by
the handler of the client's `immediate_mux` (else the Mux given to `set_immediate_mux`), through the handler's own
middleware, its time limit is not enforced, the process-wide hooks see it (`on_job_start`, `on_job_end`,
`on_settled`), and its Result is applied as far as it can be without JetStream:

- `Complete(value)`: done; the value is kept in `immediate_log(client).results[job_id]` when the job stores its
  result (`store_result`, or a queue in Settings.result_queues).
- `Retry(delay)` or an exception: run again at once (the delay is not waited for), attempt + 1, until the retry
  policy's max_attempts (the job's, else the handler's, else the client's `immediate_retry_policy`'s — in Django
  BGJOB["MAX_ATTEMPTS"] — else `RetryPolicy()`'s); then a dead letter, reason
  `max_attempts`. An exception the policy gives up on (`non_retryable`) is a dead letter at once (`handler`).
  A policy without a limit stops after IMMEDIATE_ATTEMPTS runs, the last one's fate left `retry_scheduled`.
- `MoveToDlq(error, reason)`, an unknown job type (`unknown_handler`), a job past its deadline (`deadline`):
  a dead letter in `immediate_log(client).dead_letters` (in memory only).
- `Reschedule` and `Pause`: recorded (fate `rescheduled`, or `handed_back` reason `pause`), not run again.

Jobs sent from inside a handler run in immediate mode (a chain, a fan-out) are not run inside that send_job: they
join a per-thread FIFO queue and run after the sending job's run ends (its immediate retries included), in the
order sent — breadth-first, as a worker draining a queue would take them — so chains of any length run without
recursion; the outermost send_job returns once that queue is empty. Error texts (`MoveToDlq`'s,
`Retry(error=...)`'s, an exception's) are scrubbed as the worker's settle path scrubs them (`HookSet.scrub`: the
job's sensitive values, then the hooks' `scrub`) before they are logged or reported in the Fate.

What differs from production: jobs run synchronously inside `send_job` (an exception-free call returns after
the handler), so inside the caller's transaction and before `on_commit` (bgjob_django runs them at commit as
usual); `delay`/`at` are ignored; no serialization round trip through a server (the arg is encoded and decoded
as usual, so a non-JSON arg still fails); `unique_for` reserves nothing; no worker middleware (`Recovery`,
`Metrics`, ...), no signatures checked, no placement (`target`, `partition_key`, singletons run inline too);
`client.result()`, `client.dlq` and every other call that needs a server raise ConfigurationError.

It refuses to start (ConfigurationError) under a production-looking configuration: a `url`, or a BGJOB_URL in the
environment (whatever the Settings' url), naming a host that is not loopback; in Django, also `DEBUG = False`
outside Django's test environment. Every client in immediate mode logs a WARNING once, when it is built
(logger `bgjob.testing`), so a production process that has it on by mistake shows it.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import job as jobmod
from ..codec import attempts_used, carried_deadline, carried_max_attempts
from ..encryption import cipher_for, decrypt_body
from ..errors import ConfigurationError
from ..hooks import Failure, Fate, FateKind, HookSet
from ..job import Job
from ..result import Complete, MoveToDlq, Pause, Reschedule, Retry
from ..retry_policy import RetryPolicy
from ..topology import Topology
from ..worker.settle import error_text
from .run import JobOutcome

if TYPE_CHECKING:
    from ..client import Client
    from ..codec import PreparedJob
    from ..handler import Mux

__all__ = ["IMMEDIATE_ATTEMPTS", "ImmediateLog", "immediate_log", "refuse_production_url", "set_immediate_mux"]

log = logging.getLogger("bgjob.testing")

#: the most runs of one job in immediate mode when its retry policy has no max_attempts.
IMMEDIATE_ATTEMPTS = 25

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_process_mux: Mux | None = None
_logs: weakref.WeakKeyDictionary[Any, ImmediateLog] = weakref.WeakKeyDictionary()
_logs_lock = threading.Lock()
#: per thread: the FIFO of jobs sent while an immediate handler runs in this thread (None: none is running).
_trampoline = threading.local()


@dataclass
class ImmediateLog:
    """What immediate mode did for one client: `outcomes` (every run, in order, as `bgjob.testing.JobOutcome`s),
    `dead_letters` (the outcomes that ended in the in-memory DLQ) and `results` (job id -> Complete's value, for
    jobs that store their result)."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    dead_letters: list[JobOutcome] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.outcomes.clear()
        self.dead_letters.clear()
        self.results.clear()


def immediate_log(client: Client | None = None) -> ImmediateLog:
    """The `ImmediateLog` of `client` (None: the process-wide default client, `bgjob.default_client()`)."""
    if client is None:
        from ..client import default_client

        client = default_client()
    with _logs_lock:
        found = _logs.get(client)
        if found is None:
            found = _logs[client] = ImmediateLog()
        return found


def set_immediate_mux(mux: Mux | None) -> None:
    """The handlers immediate mode runs for clients without their own `immediate_mux` (e.g. the module-level
    `bgjob.send_job`'s client under BGJOB_IMMEDIATE=1); None forgets it. Raises TypeError for a non-Mux."""
    from ..handler import Mux

    global _process_mux
    if mux is not None and not isinstance(mux, Mux):
        raise TypeError(f"set_immediate_mux needs a bgjob.Mux, got {mux!r}")
    _process_mux = mux


def refuse_production_url(url: str) -> None:
    """ConfigurationError when `url` (comma-separated server URLs) names a host that is not loopback: immediate
    mode is for tests, and a real server address says this is not one."""
    for part in url.split(","):
        part = part.strip()
        host = urlsplit(part if "://" in part else f"nats://{part}").hostname or ""
        if host.lower() in _LOOPBACK_NAMES:
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        raise ConfigurationError(f"immediate mode (a test-only setting) is refused with a server URL of host "
                                 f"{host!r}, which is not loopback: unset BGJOB_IMMEDIATE / immediate=True in "
                                 "production, or the URL in tests")  # fmt: skip


def announce_immediate(client: Client) -> None:
    """Called by `Client.__init__` for a client in immediate mode: ConfigurationError when BGJOB_URL in the
    environment names a host that is not loopback (see refuse_production_url), else one WARNING for this client."""
    env_url = os.environ.get("BGJOB_URL")
    if env_url:
        refuse_production_url(env_url)
    log.warning("bgjob client in immediate mode (test-only: Settings.immediate / BGJOB_IMMEDIATE / "
                "BGJOB['IMMEDIATE']): send_job runs handlers inline in the caller and sends nothing to NATS; "
                "turn it off outside tests")  # fmt: skip


def run_immediately(client: Client, jobs: list[PreparedJob]) -> list[str]:
    """Run each prepared job now with the client's handlers (Client._publish in immediate mode); returns their
    ids. Called from inside an immediate handler (in this thread), the jobs are queued instead and run after
    the current job's run ends, in order (a FIFO, not recursion). Raises ConfigurationError when no Mux is known."""
    mux = getattr(client, "immediate_mux", None) or _process_mux
    if mux is None:
        raise ConfigurationError("immediate mode needs the handlers to run: set client.immediate_mux = mux or "
                                 "call bgjob.testing.set_immediate_mux(mux)")  # fmt: skip
    record = immediate_log(client)
    pending: collections.deque[tuple[Client, Mux, PreparedJob, ImmediateLog]] | None
    pending = getattr(_trampoline, "pending", None)
    if pending is not None:  # sent by a handler this thread is running: after it, in order
        pending.extend((client, mux, prepared, record) for prepared in jobs)
        return [prepared.job_id for prepared in jobs]
    pending = _trampoline.pending = collections.deque((client, mux, prepared, record) for prepared in jobs)
    try:
        while pending:
            _run(*pending.popleft())
    finally:
        _trampoline.pending = None
    return [prepared.job_id for prepared in jobs]


def _run(client: Client, mux: Mux, prepared: PreparedJob, record: ImmediateLog) -> None:
    from ..worker.dispatch import Dispatcher

    settings, headers = client.settings, prepared.headers
    hooks = HookSet([], settings.sensitive_headers)
    options = mux.options(prepared.job_type)
    default = getattr(client, "immediate_retry_policy", None) or RetryPolicy()
    policy = (options.retry_policy or default).limited_to(carried_max_attempts(headers))
    dispatcher = Dispatcher(prepared.queue, mux, [], hooks, policy, Topology(settings.prefix), None)
    arg = jobmod.decode_arg(decrypt_body(prepared.body, headers, cipher_for(settings.encryption_keys)),
                            headers.get(jobmod.CONTENT_TYPE))  # fmt: skip
    deadline = carried_deadline(headers)
    attempt = attempts_used(headers) + 1
    while True:
        job = Job(id=prepared.job_id, type=prepared.job_type, arg=arg, queue=prepared.queue, attempt=attempt,
                  request_id=headers.get(jobmod.HEADER_REQUEST_ID),
                  enqueued_at=jobmod.parse_time(headers.get(jobmod.HEADER_ENQUEUED_AT)),
                  headers=jobmod.user_headers(headers), max_attempts=policy.max_attempts,
                  sensitive=jobmod.sensitive_of(headers) | options.sensitive, deadline=deadline)  # fmt: skip
        handler = mux.get(prepared.job_type)
        outcome: Any
        if handler is None:
            outcome = Failure(f"no handler for job type {prepared.job_type!r} (known: {', '.join(mux.types())})")
            fate = Fate.dead_lettered("unknown_handler", outcome.error)
        elif deadline is not None and datetime.now(UTC) >= deadline:
            outcome = Failure("run after the job's deadline; not run")
            fate = Fate.dead_lettered("deadline", outcome.error)
        else:
            outcome = dispatcher.call(handler, job)
            fate = _fate(outcome, attempt, policy, hooks, job)
        done = JobOutcome(job, outcome, fate)
        record.outcomes.append(done)
        hooks.call("on_settled", job, outcome, fate)
        if fate.kind is FateKind.ACKED and isinstance(outcome, Complete) and prepared.store_result:
            record.results[job.id] = outcome.value
        if fate.kind is FateKind.DEAD_LETTERED:
            record.dead_letters.append(done)
            log.error("job %s (%s) dead-lettered in immediate mode after %d attempt(s): %s", job.id, job.type,
                      attempt, fate.error)  # fmt: skip
        if fate.kind is not FateKind.RETRY_SCHEDULED or attempt >= (policy.max_attempts or IMMEDIATE_ATTEMPTS):
            return
        attempt += 1


def _fate(outcome: Any, attempt: int, policy: RetryPolicy, hooks: HookSet, job: Job) -> Fate:
    """What immediate mode does with one run's outcome (the worker's settle table, without JetStream); error
    texts scrubbed as the settle path scrubs them (a Failure's were scrubbed by dispatch when it was made)."""
    if isinstance(outcome, Complete):
        return Fate.acked()
    if isinstance(outcome, Reschedule):
        return Fate.rescheduled(outcome.by.next_run(datetime.now(UTC)))
    if isinstance(outcome, Pause):
        return Fate.handed_back("pause")
    error: str | None
    error, trace = error_text(outcome)
    if not isinstance(outcome, Failure):
        error, trace = hooks.scrub(error, job) or None, hooks.scrub(trace, job)
    if isinstance(outcome, MoveToDlq):
        return Fate.dead_lettered(outcome.reason, error, trace)
    exc = outcome.exception if isinstance(outcome, Failure) else getattr(outcome, "error", None)
    if isinstance(exc, BaseException) and policy.gives_up_on(exc):
        return Fate.dead_lettered("handler", error, trace)
    if policy.exhausted(attempt):
        return Fate.dead_lettered("max_attempts", error, trace)
    delay = outcome.delay_seconds() if isinstance(outcome, Retry) else None
    return Fate.retry_scheduled(delay if delay is not None else policy.delay_for(attempt), error=error,
                                traceback=trace)  # fmt: skip
