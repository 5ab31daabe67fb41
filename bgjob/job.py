"""The Job model, its validation, and its encoding as a JetStream message."""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeGuard

from .errors import InvalidJob
from .headers import (  # noqa: F401
    CONTENT_TYPE,
    HEADER_ENQUEUED_AT,
    HEADER_ID,
    HEADER_REQUEST_ID,
    HEADER_TYPE,
    SENSITIVE_KEYS,
)
from .redaction import is_sensitive_name

JSON = "application/json"
BYTES = "application/octet-stream"


class _KeepCheckpoint:
    def __repr__(self) -> str:
        return "KEEP_CHECKPOINT"


#: Pause's and job.pause's default checkpoint: leave the job's stored checkpoint (if any) as it is.
KEEP_CHECKPOINT: Any = _KeepCheckpoint()
_TYPE = re.compile(r"^[A-Za-z0-9_:-]{1,100}(\.[A-Za-z0-9_:-]{1,100})*$")
_QUEUE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_:=+-]{1,200}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+^_`|~-]{1,100}$")
_RESERVED_HEADER = ("nats-", "bgjob-", "content-type")
_REASON = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SENSITIVE_KEY = re.compile(r"[^,\s]{1,100}")


@dataclass(frozen=True)
class Job:
    """One delivery of a job to a handler.

    Its repr shows only id, type, queue and attempt: never `arg` or `headers`, which may hold personal data
    or secrets (a repr reaches logs, Sentry's frame variables and Django's debug page).
    """

    id: str
    type: str
    arg: Any
    queue: str = "default"
    #: 1 on the first delivery; JetStream's delivery count.
    attempt: int = 1
    request_id: str | None = None
    enqueued_at: datetime | None = None
    #: the producer's custom headers.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the effective attempt limit: the job's own (`send_job(..., max_attempts=)`), else its handler's retry
    #: policy's, else the worker's; `attempt == max_attempts` is the last try before the DLQ. None: no limit.
    max_attempts: int | None = None
    #: the arg keys marked sensitive (by the producer's `sensitive=` and the handler's): their values are masked
    #: wherever the job is shown, and scrubbed from error texts stored with it.
    sensitive: frozenset[str] = frozenset()
    #: when the job stops being worth running (`send_job(..., deadline=)`), an aware datetime in UTC, or None.
    #: A delivery after it is dead-lettered unrun (reason `deadline`); a retry that would run after it is too.
    deadline: datetime | None = None
    #: set by the worker: what `heartbeat()` calls.
    _heartbeat: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, type={self.type!r}, queue={self.queue!r}, attempt={self.attempt!r})"

    def heartbeat(self) -> None:
        """Tell the worker this handler is alive and still working on the job: the job's lease is extended now
        (a JetStream `in_progress`, at most about once a second however often it is called), on top of the
        worker's automatic heartbeats (dagnats' `Heartbeat`). Safe from any thread or greenlet, cheap enough for
        a loop, a no-op outside a worker (a Job built by hand or in a test), and it never raises: a heartbeat
        that cannot be sent leaves the job to the automatic ones."""
        beat = self._heartbeat
        if beat is not None:
            try:
                beat()
            except Exception:  # noqa: BLE001 - a heartbeat is a courtesy: the handler's work goes on
                pass

    # -- long-running jobs (bgjob.long_running, from dagnats' TaskContext): only inside a worker ------------------
    def checkpoint(self, state: Any) -> None:
        """Save `state` (JSON-serialisable or bytes) as this job's checkpoint, replacing the previous one: it
        survives retries, redeliveries, pauses and worker crashes, and is deleted when the job succeeds or is
        dead-lettered (`Settings.checkpoint_ttl` after its last save at the latest). Blocks until stored.
        Raises InvalidJob for a state that does not encode or is too large, a bgjob error when NATS refuses or
        does not answer, and RuntimeError outside a worker's handler thread."""
        _long_running(self, "checkpoint").checkpoint(self, state)

    def load_checkpoint(self) -> Any:
        """This job's last checkpoint (as saved: JSON value or bytes), or None when it has none. Raises a bgjob
        error when NATS does not answer, RuntimeError outside a worker's handler thread."""
        return _long_running(self, "load_checkpoint").load_checkpoint(self)

    def pause(self, until: timedelta | float | datetime, *, checkpoint: Any = KEEP_CHECKPOINT) -> None:
        """Stop now and run again at `until` (seconds or a timedelta from now, or an aware datetime): the same as
        returning `bgjob.Pause(until, checkpoint=...)` (`checkpoint`, when given, is saved first); the slot is
        given back and the pause costs no attempt. Never returns (it raises an internal BaseException the worker
        turns into the Pause: do not catch it). Raises InvalidResult for a bad `until` or checkpoint, and
        RuntimeError outside a worker's handler thread."""
        _long_running(self, "pause").pause(self, until, checkpoint)

    def wait_for_signal(self, name: str, timeout: timedelta | float, *, pause: bool = False,
                        recheck: timedelta | float = 60.0) -> Any:  # fmt: skip
        """The payload of signal `name` sent to this job (`client.send_signal(job.id, name, data)`), consumed;
        a signal sent before the wait is waiting already. Blocks up to `timeout` (seconds or a timedelta) while
        the job's lease is kept with heartbeats. With `pause=True` no thread is held: when the signal is not
        there the job pauses and checks again after `recheck` seconds (or at the wait's end), until `timeout`
        after the first call (remembered across pauses). Raises bgjob.SignalTimeout when the time is up,
        InvalidJob for a bad name, RuntimeError outside a worker's handler thread."""
        return _long_running(self, "wait_for_signal").wait_for_signal(self, name, timeout, pause=pause,
                                                                      recheck=recheck)  # fmt: skip

    def report_progress(self, data: Any) -> None:
        """Publish this job's progress (JSON-serialisable or bytes, e.g. `{"done": 300, "total": 1000}`) for
        `client.progress(job_id)` and `client.watch_progress(job_id)`. Throttled (`Settings.progress_interval`:
        reports in between are coalesced, the latest is stored when the handler returns); never blocks on a
        throttled report. A no-op outside a worker (a Job built by hand or in a test). Raises InvalidJob for
        data that does not encode."""
        service = worker_services.get()
        if service is not None:
            service.report_progress(self, data)


#: the worker's long-running services (a bgjob.long_running.LongRunning) in the handler's thread or greenlet;
#: None elsewhere. Set by the worker's dispatch around each handler call.
worker_services: ContextVar[Any] = ContextVar("bgjob_worker_services", default=None)


def _long_running(job: Job, method: str) -> Any:
    service = worker_services.get()
    if service is None:
        raise RuntimeError(f"job.{method}() works only in a bgjob worker, in the thread (or greenlet) that runs the "
                           "job's handler")  # fmt: skip
    return service


@dataclass(frozen=True)
class JobSpec:
    """A job to send with send_jobs; `queue` None means the queue given to send_jobs."""

    type: str
    arg: Any = None
    queue: str | None = None
    delay: timedelta | float | None = None
    at: datetime | None = None
    job_id: str | None = None
    request_id: str | None = None
    headers: Mapping[str, str] | None = None
    store_result: bool | None = None
    #: seconds or timedelta (1 s to 30 days; needs `job_id`): the id stays reserved that long, see bgjob.unique.
    unique_for: timedelta | float | None = None
    #: arg keys whose values are sensitive (at any depth): masked wherever the job is shown.
    sensitive: Collection[str] | None = None
    #: an aware datetime, or a timedelta or seconds from now: delivered after it, the job is dead-lettered unrun.
    deadline: datetime | timedelta | float | None = None
    #: this job's attempt limit (an int >= 1), winning over its handler's and worker's retry policies.
    max_attempts: int | None = None
    #: a placement claim (e.g. "primary", "region/eu"): only a worker holding it runs the job (bgjob.placement).
    target: str | None = None
    #: seconds (> 0) or a timedelta: dead-lettered (reason `no_target`) when no worker holds `target` by then
    #: (bgjob.placement); None: Settings.target_timeout (None there: it waits for ever).
    target_timeout: timedelta | float | None = None
    #: jobs with the same key run one at a time, in send order (bgjob.placement); a printable str.
    partition_key: str | None = None


def new_job_id() -> str:
    """A random (version 4) UUID as 32 hex digits: `uuid.uuid4().hex`, without building a UUID."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def validate_type(job_type: str) -> str:
    if not isinstance(job_type, str) or not _TYPE.fullmatch(job_type) or len(job_type) > 200:
        raise InvalidJob(
            f"invalid job type {job_type!r}: use letters, digits, '_', '-', ':' and dots between words "
            "(e.g. 'report' or 'billing.invoice'), at most 200 characters"
        )
    return job_type


_CLAIM = re.compile(r"^[A-Za-z0-9_:/=-]{1,100}$")


def validate_claim(claim: str) -> str:
    """A placement claim: 1-100 letters, digits, '_', '-', ':', '/', '='; no dots (a subject token)."""
    if not isinstance(claim, str) or not _CLAIM.fullmatch(claim):
        raise InvalidJob(f"invalid claim {claim!r}: use letters, digits, '_', '-', ':', '/' and '=' "
                         "(e.g. 'primary' or 'region/eu'), at most 100 characters, no dots")  # fmt: skip
    return claim


def positive_seconds(name: str, value: float | timedelta) -> float:
    """`value` as seconds: an int or float > 0 (finite), or a timedelta. The one reading of a handler's duration
    options (`time_limit`, a request-reply handler's and an external program's `timeout`).

    Raises ValueError naming `name` for anything else (0, a negative, NaN, infinity, an int too large for a float,
    a bool, a str, None)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
    else:
        raise ValueError(f"{name} must be seconds (an int or float) or a timedelta, got {type(value).__name__} "
                         f"{reprlib.repr(value)}")  # fmt: skip
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {reprlib.repr(value)}")
    return seconds


def validate_target_timeout(timeout: timedelta | float | None) -> float | None:
    """A placed job's target_timeout as seconds (a float > 0), None for None: a timedelta or an int/float of
    seconds. Raises InvalidJob for zero or less, NaN/infinity, or another type."""
    if timeout is None:
        return None
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise InvalidJob(f"target_timeout must be seconds (a number > 0) or a timedelta, got {type(timeout).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidJob(f"target_timeout must be more than 0 seconds (None: wait for ever), got {timeout!r}")
    return seconds


def _edge_space(text: str) -> bool:
    """Whether `text` starts or ends with whitespace, which nats-py strips from every header value when it
    publishes and when it reads: such a value would change in flight (a partition key would then route its
    retries and dead-letter retries to another partition than its first send, and fail its signature)."""
    return text != text.strip()


def validate_partition_key(key: str) -> str:
    """A partition key: a printable str of 1 to 256 UTF-8 bytes, without leading or trailing whitespace."""
    if not isinstance(key, str) or not key or not key.isprintable() or len(key.encode("utf-8", "replace")) > 256:
        raise InvalidJob(f"invalid partition_key {key!r}: a printable str of 1 to 256 bytes")
    if _edge_space(key):
        raise InvalidJob(f"invalid partition_key {key!r}: no leading or trailing whitespace (NATS headers drop it, "
                         "so the key would change in flight)")  # fmt: skip
    try:
        key.encode()
    except UnicodeEncodeError:
        raise InvalidJob(f"invalid partition_key {key!r}: not encodable as UTF-8") from None
    return key


def validate_queue(queue: str) -> str:
    if not isinstance(queue, str) or not _QUEUE.fullmatch(queue):
        raise InvalidJob(f"invalid queue name {queue!r}: use lower-case letters, digits, '_' and '-' (max 64)")
    return queue


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidJob(f"invalid job id {job_id!r}: use letters, digits and '_', '-', ':', '=', '+' (max 200)")
    return job_id


def is_valid_job_id(job_id: object) -> TypeGuard[str]:
    return isinstance(job_id, str) and bool(_JOB_ID.fullmatch(job_id))


def validate_sensitive(keys: Collection[str] | None) -> frozenset[str]:
    """Arg key names marked sensitive: a collection of str (1-100 characters, no comma or space); a lone str
    is refused (it would be read letter by letter). Raises InvalidJob."""
    if keys is None:
        return frozenset()
    if isinstance(keys, str | bytes) or not isinstance(keys, Collection):
        raise InvalidJob(f"sensitive must be a list of arg key names, e.g. ['card'], not {keys!r}")
    for key in keys:
        if not isinstance(key, str) or not _SENSITIVE_KEY.fullmatch(key) or not _ascii(key):
            raise InvalidJob(f"invalid sensitive key {key!r}: an arg key name, 1-100 characters, no ',' or space")
    return frozenset(keys)


def sensitive_of(headers: Mapping[str, str] | None) -> frozenset[str]:
    """The sensitive keys a message carries (its SENSITIVE_KEYS header)."""
    text = (headers or {}).get(SENSITIVE_KEYS)
    return frozenset(k for k in text.split(",") if k) if text else frozenset()


def validate_deadline(deadline: datetime | timedelta | float | None, now: datetime) -> datetime | None:
    """The deadline a job is sent with, as an aware UTC datetime: `deadline` itself (an aware datetime) or `now`
    plus it (a timedelta, or seconds as an int or float, like `delay`; Celery's `expires=60`); None for None.
    Raises InvalidJob for a naive datetime, a deadline not after `now` (the job could never run), one beyond the
    year 9999, or another type."""
    if deadline is None:
        return None
    if isinstance(deadline, (int, float)) and not isinstance(deadline, bool):
        if not math.isfinite(deadline):
            raise InvalidJob(f"deadline must be a finite number of seconds from now, got {deadline!r}")
        try:
            deadline = timedelta(seconds=deadline)
        except OverflowError:
            raise InvalidJob(f"deadline {deadline!r} seconds reaches beyond the year 9999") from None
    if isinstance(deadline, timedelta):
        try:
            moment = now + deadline
        except OverflowError:
            raise InvalidJob(f"deadline {deadline!r} reaches beyond the year 9999") from None
    elif isinstance(deadline, datetime):
        if deadline.tzinfo is None or deadline.utcoffset() is None:
            raise InvalidJob("deadline must be a timezone-aware datetime (e.g. datetime.now(timezone.utc) + "
                             "timedelta(minutes=5)) or a timedelta from now, got a naive datetime")  # fmt: skip
        moment = deadline
    else:
        raise InvalidJob(f"deadline must be an aware datetime, or a timedelta or seconds from now, got "
                         f"{type(deadline).__name__}")  # fmt: skip
    try:
        moment = moment.astimezone(timezone.utc)
    except OverflowError:
        raise InvalidJob(f"deadline {deadline!r} is beyond the year 9999 in UTC") from None
    if moment <= now:
        raise InvalidJob(f"deadline {format_time(moment)} has already passed (now {format_time(now)}): the job "
                         "could never run")  # fmt: skip
    return moment


def validate_max_attempts(max_attempts: int | None) -> int | None:
    """A job's own attempt limit: None (its handler's or worker's) or an int >= 1. Raises InvalidJob."""
    if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
                                     or not 1 <= max_attempts <= 1_000_000):  # fmt: skip
        raise InvalidJob(f"max_attempts must be an int from 1 to 1000000 (or None: the handler's or worker's "
                         f"retry policy), got {max_attempts!r}")  # fmt: skip
    return max_attempts


def _ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def validate_reason(reason: str) -> str:
    """A DLQ reason is one subject token: letters, digits, '_' and '-' (max 64). Raises InvalidJob otherwise."""
    if not isinstance(reason, str) or not _REASON.fullmatch(reason):
        raise InvalidJob(f"invalid DLQ reason {reason!r}: use letters, digits, '_' and '-' (max 64)")
    return reason


def validate_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if not headers:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidJob("headers must be a mapping of str to str")
    clean: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidJob(f"invalid header name {name!r}")
        if name.lower().startswith(_RESERVED_HEADER):
            raise InvalidJob(f"header {name!r} is reserved (Nats-*, Bgjob-* and Content-Type are set by bgjob)")
        # A sensitive header's value is never quoted: the error reaches logs and Sentry.
        shown = f"a {type(value).__name__}" if is_sensitive_name(name) else repr(value)
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise InvalidJob(f"header {name!r} needs a single-line str value, got {shown}")
        if _edge_space(value):
            raise InvalidJob(f"header {name!r} has leading or trailing whitespace, which NATS headers drop (the "
                             f"handler would get another value): got {shown}")  # fmt: skip
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            where = f" at position {exc.start}"
            raise InvalidJob(f"header {name!r} has text that UTF-8 cannot encode{where}: {exc.reason}") from None
        clean[name] = value
    return clean


def encode_arg(arg: Any) -> tuple[bytes, str]:
    """The message body and content type for a job's arg: JSON, or raw bytes.

    Only what a handler gets back unchanged is accepted: dicts with str keys, lists, str, int, float (finite),
    bool and None; a tuple arrives as a list and a subclass (an enum, an OrderedDict) as its JSON base type.
    Raises InvalidJob naming the path of the first offending value (`arg["a"][3]`): a dict key that is not a str
    (JSON would turn `1` into `"1"`, silently merging `{1: .., "1": ..}`), a value of another type, NaN or
    infinity, an int beyond Python's 4300-digit conversion limit, text UTF-8 cannot encode, or nesting too deep.
    """
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg), BYTES
    problem = _json_problem(arg)
    if problem is not None:
        raise InvalidJob(f"job arg must be JSON-serialisable or bytes, and read back unchanged: {problem}")
    try:
        return json.dumps(arg, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(), JSON
    except UnicodeEncodeError as exc:  # lone surrogates: no UTF-8 for them
        raise InvalidJob(f"job arg must be JSON-serialisable or bytes: text that UTF-8 cannot encode ({exc})") from exc
    except (TypeError, ValueError, RecursionError) as exc:
        where = _non_finite_float(arg) if "float" in str(exc) else None
        raise InvalidJob(f"job arg must be JSON-serialisable or bytes: {f'{where}: ' if where else ''}{exc}") from exc


_PLAIN = frozenset({str, int, float, bool, type(None)})
_SCALARS = (str, int, float, type(None))
_CONTAINERS = (dict, list, tuple)


def _json_problem(arg: Any) -> str | None:
    """What in `arg` JSON would change or refuse, with its path; None when nothing. One walk over the containers
    (each visited once: shared and cyclic ones too, json.dumps reports cycles); long lists of scalars are checked
    by their set of types, at C speed."""
    if type(arg) in _PLAIN:
        return None
    if not isinstance(arg, _CONTAINERS):
        return None if isinstance(arg, _SCALARS) else f"arg: {type(arg).__name__} is not JSON-serialisable"
    stack: list[tuple[Any, Any]] = [(arg, None)]  # (container, link to its path: (parent link, key) or None)
    seen: set[int] = set()
    plain = _PLAIN
    while stack:
        value, link = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        items: Any
        if isinstance(value, dict):
            for key in value:
                if type(key) is not str and not isinstance(key, str):
                    return f"{_path((link, key))}: JSON object keys must be strings, not {_key_fate(key)}"
            items = value.items()
        else:
            if len(value) > 32 and plain.issuperset(map(type, value)):
                continue
            items = enumerate(value)
        for key, item in items:
            if type(item) in plain:
                continue
            if isinstance(item, _CONTAINERS):
                stack.append((item, (link, key)))
            elif not isinstance(item, _SCALARS):
                return f"{_path((link, key))}: {type(item).__name__} is not JSON-serialisable"
    return None


def _key_fate(key: Any) -> str:
    if isinstance(key, (int, float)) or key is None:  # bool is an int; json.dumps would turn these into text
        as_text = json.dumps({key: 0}, allow_nan=True)[1:].rsplit(":", 1)[0]
        return f"{type(key).__name__} (it would arrive as the string {as_text[:40]})"
    return type(key).__name__


def _non_finite_float(arg: Any) -> str | None:
    """The path of the first NaN or infinity in `arg` (only looked for once json.dumps refused one)."""
    stack: list[tuple[Any, Any]] = [(arg, None)]
    while stack:
        value, link = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return _path(link)
        if isinstance(value, dict):
            stack.extend((item, (link, key)) for key, item in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((item, (link, key)) for key, item in enumerate(value))
    return None


def _path(link: Any) -> str:
    parts = []
    while link is not None:
        link, key = link
        parts.append(f"[{json.dumps(key)}]" if isinstance(key, str) else f"[{key!r}]")
    return "arg" + "".join(reversed(parts))


class DecodeError(ValueError):
    """A message on a job subject cannot be turned into a Job."""


def decode_arg(body: bytes, content_type: str | None) -> Any:
    if content_type == BYTES:
        return body
    if content_type not in (None, "", JSON):
        raise DecodeError(f"unsupported Content-Type {content_type!r}")
    try:
        return json.loads(body) if body else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise DecodeError("body is JSON nested too deeply to decode") from exc


def user_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if not headers:
        return {}
    return {k: v for k, v in headers.items() if not k.lower().startswith(_RESERVED_HEADER)}


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as nats-server schedules expect."""
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    """An aware datetime from RFC 3339 / ISO 8601 text (one without an offset is taken as UTC); None for no text
    or text that is not a time."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
