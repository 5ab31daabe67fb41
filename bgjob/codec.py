"""Jobs on the wire: the one module that builds bgjob's messages and reads them back.

Built here: a new job (validated, encoded, size-checked and signed at the call, ready or delayed with an
`@at` schedule), the next run of a delivered job (a retry carrying its attempts, or a reschedule), a delivery
handed back unrun, a periodic job's cron schedule, and a dead letter sent back to its queue. Read here: a
delivery -> Job (its id, attempt and arg). Dead letters themselves are built, and fitted, in `bgjob.dlq`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import Header

from . import job as jobmod
from .context import current_request_id
from .encryption import Cipher, cipher_for, decrypt_body
from .errors import InvalidJob, InvalidSchedule
from .headers import (
    ATTEMPTS_USED,
    CARRIED_FIRST_FAILURE,
    CRON,
    DEADLINE,
    ENCRYPTION,
    MAX_ATTEMPTS,
    MAX_HEADER_BYTES,
    MSG_ID,
    PARTITION_KEY,
    SCHEDULE_NAME,
    SENSITIVE_KEYS,
    SIGNATURE,
    STORE_RESULT,
    TARGET,
    TARGET_UNTIL,
    derived_msg_id,
    header_block_size,
    stored_timestamp_ns,
    without_nats_headers,
)
from .job import Job, JobSpec
from .result import KEEP_ARG
from .schedule import ByCron, check_due
from .settings import Settings
from .signing import signer_for
from .topology import Topology

#: the attempts a header may claim: a hand-written message cannot make a job immortal or pre-exhausted.
_MAX_CARRIED = 1_000_000


# -- new jobs ----------------------------------------------------------------------------------------------------
def spec_of(item: Any) -> JobSpec:
    if isinstance(item, tuple) and len(item) == 2:
        return JobSpec(item[0], item[1])
    # Not the item's repr: it holds the arg, which may be personal data (the error reaches logs and Sentry).
    shown = f"a tuple of {len(item)}" if isinstance(item, tuple) else f"a {type(item).__name__}"
    raise InvalidJob(f"expected a (type, arg) pair or a bgjob.JobSpec, got {shown}")


#: bytes kept free below the server's max_payload, and below JetStream's 64 KiB header limit, so a job can
#: always be dead-lettered with its error.
DLQ_HEADROOM = 8 * 1024


#: nats-server's default max_payload (bytes): the size limit of a job prepared while not connected.
DEFAULT_MAX_PAYLOAD = 1024 * 1024


def check_size(max_payload: int | None, body: bytes, headers: dict[str, str]) -> None:
    """Refuse (InvalidJob) a job whose header block or whole message, in bytes as sent, leaves less than
    DLQ_HEADROOM free under JetStream's header limit or `max_payload` (the server's, in bytes; None checks the
    header block only)."""
    # Most jobs are far below both limits: a bound that needs no encoding (at most 4 bytes a character, 4 more
    # per `Name: value\r\n` line, plus the status line and the blank line) settles them.
    bound = 4 * (sum(len(k) + len(v) for k, v in headers.items()) + len(headers)) + _HEADER_BLOCK_FRAME
    if bound <= MAX_HEADER_BYTES - 1 - DLQ_HEADROOM and (max_payload is None
                                                         or len(body) + bound <= max_payload - DLQ_HEADROOM):
        return
    block = header_block_size(headers)
    if block > MAX_HEADER_BYTES - 1 - DLQ_HEADROOM:
        raise InvalidJob(f"job headers are {block} bytes as sent; JetStream refuses {MAX_HEADER_BYTES} or more and "
                         f"bgjob keeps {DLQ_HEADROOM} for a dead letter's error: use at most "
                         f"{MAX_HEADER_BYTES - 1 - DLQ_HEADROOM} (put large data in the arg)")  # fmt: skip
    size = len(body) + block
    if max_payload is not None and size > max_payload - DLQ_HEADROOM:
        raise InvalidJob(f"job is {size} bytes with its headers; the server accepts at most "
                         f"{max_payload - DLQ_HEADROOM} (its max_payload of {max_payload} less "
                         f"{DLQ_HEADROOM} kept for a dead letter's error)")  # fmt: skip


_HEADER_BLOCK_FRAME = header_block_size({})  # `NATS/1.0\r\n` and the closing `\r\n`


@functools.lru_cache(maxsize=16)
def _topology(prefix: str) -> Topology:
    return Topology(prefix)


def prepare_job(settings: Settings, job_type: str, arg: Any, *, store_result: bool = False,
                **options: Any) -> tuple[str, bytes, dict[str, str], str]:  # fmt: skip
    """The (subject, body, headers, id) of `prepared_job` for `JobSpec(job_type, arg, **options)` (`options`:
    JobSpec's fields, queue "default" unless given), with no size limit but JetStream's header limit: the
    message alone, for code that inspects it. Raises InvalidJob, ConfigurationError for unusable keys."""
    job = prepared_job(settings, JobSpec(job_type, arg, **options), queue="default", store_result=store_result,
                       max_payload=None, unique_for=None)  # fmt: skip
    return job.subject, job.body, job.headers, job.job_id


def _encodable(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


def _due_time(now: datetime, delay: timedelta | float | None, at: datetime | None) -> datetime | None:
    if delay is not None and at is not None:
        raise InvalidJob("give either delay or at, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (timedelta, int, float)):
            raise InvalidJob(f"delay must be a timedelta or seconds, got {delay!r}")
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds != seconds or seconds < 0:
            raise InvalidJob(f"delay must be >= 0, got {delay!r}")
        try:
            return _schedulable(now + timedelta(seconds=seconds), "delay") if seconds > 0 else None
        except OverflowError as exc:
            raise InvalidJob(f"delay {delay!r} reaches beyond the year 9999") from exc
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise InvalidJob("at must be a timezone-aware datetime (e.g. datetime.now(timezone.utc) + ...)")
        try:
            at.astimezone(timezone.utc)
        except OverflowError as exc:
            raise InvalidJob(f"at {at!r} is beyond the year 9999 in UTC") from exc
        return _schedulable(at, "at") if at > now else None
    return None


def _schedulable(due: datetime, what: str) -> datetime:
    try:
        return check_due(due, f"a job sent with this {what}")
    except InvalidSchedule as exc:
        raise InvalidJob(str(exc)) from None


#: the `key` of a new delayed job's subject (topology.delayed_subject): 16 hex digits, random.
_DELAYED_KEY = re.compile(r"[0-9a-f]{16}")
_RECORD_FIELDS = frozenset({"v", "job_id", "job_type", "queue", "subject", "body", "headers", "store_result",
                            "unique_for"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A job validated, encoded, size-checked, encrypted and signed, not yet published (`Client.prepare_job`);
    `Client.publish_prepared` publishes its bytes as they are, so what is sent is what was checked.

    Store it with `to_record()` (a JSON-serialisable dict) and read it back with `from_record()`. Built or read,
    it is validated (InvalidJob): the headers carry `job_id` as Bgjob-Id and Nats-Msg-Id (a publish repeated
    inside the queue's duplicate window is dropped) and `job_type` as Bgjob-Type, and `subject` is the job's
    subject or, for a delayed job, the subject of its `@at` schedule (due at the time fixed when it was
    prepared). Its repr shows neither `body` nor `headers` (they may hold personal data or secrets).
    """

    job_id: str
    job_type: str
    queue: str
    #: where it is published: `<prefix>.<queue>.job.<type>`, or `<prefix>.<queue>.at.<job_id>.<key>` when delayed.
    subject: str
    #: the message body as stored (encrypted when Settings.encryption_keys is set).
    body: bytes = field(repr=False)
    #: every header as sent (Nats-Msg-Id == job_id, the signature, the `@at` schedule of a delayed job).
    headers: dict[str, str] = field(repr=False, hash=False)
    #: whether a READY result record is written when it is stored (Client.result).
    store_result: bool = False
    #: seconds (>= 1) its id is reserved when published (bgjob.unique), or None.
    unique_for: int | None = None
    #: the max_payload (bytes) its whole size was checked against when it was built; None: not yet.
    _checked_for: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        jobmod.validate_job_id(self.job_id)
        jobmod.validate_type(self.job_type)
        jobmod.validate_queue(self.queue)
        if not isinstance(self.body, bytes):
            raise InvalidJob(f"a prepared job's body must be bytes, not {type(self.body).__name__}")
        if not isinstance(self.headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()):  # fmt: skip
            raise InvalidJob("a prepared job's headers must be a dict of str to str")
        for name, expected in ((MSG_ID, self.job_id), (jobmod.HEADER_ID, self.job_id),
                               (jobmod.HEADER_TYPE, self.job_type)):  # fmt: skip
            if self.headers.get(name) != expected:
                raise InvalidJob(f"prepared job {self.job_id!r}: its {name} header is not {expected!r}")
        if not isinstance(self.store_result, bool) or self.store_result != (self.headers.get(STORE_RESULT) == "1"):
            raise InvalidJob(f"prepared job {self.job_id!r}: store_result must be a bool that agrees with its "
                             f"{STORE_RESULT} header")  # fmt: skip
        if self.unique_for is not None and (isinstance(self.unique_for, bool) or not isinstance(self.unique_for, int)
                                            or self.unique_for < 1):  # fmt: skip
            raise InvalidJob(f"prepared job {self.job_id!r}: unique_for must be None or whole seconds >= 1")
        if not isinstance(self.subject, str) or self.subject != self._expected_subject():
            raise InvalidJob(f"prepared job {self.job_id!r}: subject {self.subject!r} is not where a "
                             f"{self.job_type!r} job of queue {self.queue!r} is published")  # fmt: skip

    @classmethod
    def _built(cls, job_id: str, job_type: str, queue: str, subject: str, body: bytes, headers: dict[str, str],
               store_result: bool, unique_for: int | None, checked_for: int | None) -> PreparedJob:  # fmt: skip
        """A PreparedJob that `prepared_job` has just built from validated parts: the checks of `__post_init__`
        would only repeat its own (they cost a sixth of a send_job)."""
        job = object.__new__(cls)
        for name, value in (("job_id", job_id), ("job_type", job_type), ("queue", queue), ("subject", subject),
                            ("body", body), ("headers", headers), ("store_result", store_result),
                            ("unique_for", unique_for), ("_checked_for", checked_for)):  # fmt: skip
            object.__setattr__(job, name, value)
        return job

    def size_checked_for(self, max_payload: int) -> bool:
        """Whether its whole size was checked against this max_payload (bytes) when it was built."""
        return self._checked_for == max_payload

    @property
    def reservation_token(self) -> str:
        """What names this prepared job's `unique_for` reservation: the same for every attempt to publish it
        (a relay that died between reserving and publishing is succeeded by one that finds the reservation to be
        its own), different for another preparation of the same job id (which an earlier send's reservation
        holds off)."""
        stamp = f"{self.job_id}|{self.subject}|{self.headers.get(jobmod.HEADER_ENQUEUED_AT, '')}"
        return hashlib.sha256(stamp.encode()).hexdigest()[:32]

    @property
    def prefix(self) -> str:
        """The subject prefix (Settings.prefix) it was prepared for."""
        return self.subject.split(".", 1)[0]

    @property
    def due(self) -> datetime | None:
        """When a delayed job becomes ready (fixed when it was prepared), None for a ready job."""
        schedule = self.headers.get(Header.SCHEDULE.value)
        return jobmod.parse_time(schedule[4:]) if schedule else None

    def _expected_subject(self) -> str | None:
        topology = _topology(self.prefix)
        target = topology.ready_subject(self.queue, self.job_type, self.headers)
        schedule = self.headers.get(Header.SCHEDULE.value)
        if schedule is None and Header.SCHEDULE_TARGET.value not in self.headers:
            return target
        key = self.subject.rsplit(".", 1)[-1]
        if (self.headers.get(Header.SCHEDULE_TARGET.value) != target or schedule is None
                or not schedule.startswith("@at ")
                or self.due is None or not _DELAYED_KEY.fullmatch(key)):  # fmt: skip
            return None
        return topology.delayed_subject(self.queue, self.job_id, key)

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict of str, int, bool and None (the body in base64), for a database row or a file;
        `from_record` reads it back. The body is as stored: encrypted when the client has encryption keys, else
        the arg in clear (treat the record as you would the job's arg)."""
        return {
            "v": 1,
            "job_id": self.job_id,
            "job_type": self.job_type,
            "queue": self.queue,
            "subject": self.subject,
            "body": base64.b64encode(self.body).decode("ascii"),
            "headers": dict(self.headers),
            "store_result": self.store_result,
            "unique_for": self.unique_for,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, prefix: str | None = None) -> PreparedJob:
        """The PreparedJob a `to_record()` dict (as read back from JSON) describes, validated as when built;
        `prefix` (a Settings.prefix) also requires its subject to be under that prefix. Raises InvalidJob for a
        malformed or altered record (a missing, unknown or mistyped field, a body that is not base64, headers
        whose job id or type disagree with the record's, a subject that is not the job's), naming the field but
        never quoting the body."""
        if not isinstance(record, Mapping):
            raise InvalidJob(f"a prepared job record must be a dict, not {type(record).__name__}")
        if set(record) != _RECORD_FIELDS:
            missing, unknown = sorted(_RECORD_FIELDS - set(record)), sorted(map(str, set(record) - _RECORD_FIELDS))
            raise InvalidJob(f"not a prepared job record (missing fields: {missing}, unknown fields: {unknown})")
        if record["v"] != 1:
            raise InvalidJob(f"prepared job record version {record['v']!r} is not one this bgjob reads (1)")
        body = record["body"]
        try:
            if not isinstance(body, str):
                raise TypeError
            raw = base64.b64decode(body.encode("ascii"), validate=True)
        except (TypeError, ValueError, binascii.Error, UnicodeEncodeError):
            raise InvalidJob("prepared job record: its body is not base64 text") from None
        headers = record["headers"]
        job = cls(
            job_id=record["job_id"],
            job_type=record["job_type"],
            queue=record["queue"],
            subject=record["subject"],
            body=raw,
            headers=dict(headers) if isinstance(headers, Mapping) else headers,
            store_result=record["store_result"],
            unique_for=record["unique_for"],
        )
        if prefix is not None:
            job.check_prefix(prefix)
        return job

    def check_prefix(self, prefix: str) -> None:
        """Raise InvalidJob unless the job was prepared for subject prefix `prefix` (a Settings.prefix)."""
        if self.prefix != prefix:
            raise InvalidJob(f"prepared job {self.job_id!r} was prepared for prefix {self.prefix!r}, "
                             f"not this client's {prefix!r}")  # fmt: skip


def prepared_job(settings: Settings, spec: JobSpec, *, queue: str, store_result: bool, max_payload: int | None,
                 unique_for: int | None) -> PreparedJob:  # fmt: skip
    """`spec` built into a PreparedJob for queue `queue` (spec.queue, when set, wins): validated, its arg encoded,
    its due time fixed (delay/at: an `@at` schedule), encrypted with Settings.encryption_keys (before it is
    signed: a signature covers the stored bytes), signed with Settings.signing_key, and size-checked against
    `max_payload` (bytes; None: JetStream's header limit only). `store_result` is decided and `unique_for`
    validated (whole seconds or None) by the caller. Raises InvalidJob, ConfigurationError for unusable keys."""
    if not isinstance(spec, JobSpec):
        raise InvalidJob(f"expected a bgjob.JobSpec, got a {type(spec).__name__}")
    topology = _topology(settings.prefix)
    job_type, queue = jobmod.validate_type(spec.type), jobmod.validate_queue(spec.queue or queue)
    job_id = jobmod.validate_job_id(spec.job_id) if spec.job_id is not None else jobmod.new_job_id()
    request_id = spec.request_id
    if request_id is None:
        request_id = current_request_id.get()
        if isinstance(request_id, str):  # the ambient one (a request's, a job's) as NATS would carry it anyway
            request_id = request_id.strip() or None
    if request_id is not None and (not isinstance(request_id, str) or not request_id.isprintable()
                                   or not _encodable(request_id) or request_id != request_id.strip()):  # fmt: skip
        raise InvalidJob(f"request_id must be a printable str without leading or trailing spaces (NATS headers "
                         f"drop them), got {request_id!r}")  # fmt: skip
    hdrs = jobmod.validate_headers(spec.headers)
    keys = jobmod.validate_sensitive(spec.sensitive)
    body, content_type = jobmod.encode_arg(spec.arg)
    now = datetime.now(timezone.utc)
    due = _due_time(now, spec.delay, spec.at)
    deadline = jobmod.validate_deadline(spec.deadline, now)
    if deadline is not None and due is not None and due >= deadline:
        raise InvalidJob(f"the job is due at {jobmod.format_time(due)}, not before its deadline "
                         f"{jobmod.format_time(deadline)}: it could never run")  # fmt: skip
    max_attempts = jobmod.validate_max_attempts(spec.max_attempts)
    hdrs.update({
        MSG_ID: job_id,
        jobmod.HEADER_ID: job_id,
        jobmod.HEADER_TYPE: job_type,
        jobmod.HEADER_ENQUEUED_AT: jobmod.format_time(now),
        jobmod.CONTENT_TYPE: content_type,
    })  # fmt: skip
    if request_id:
        hdrs[jobmod.HEADER_REQUEST_ID] = request_id
    if store_result:
        hdrs[STORE_RESULT] = "1"
    if keys:
        hdrs[SENSITIVE_KEYS] = ",".join(sorted(keys))
    if deadline is not None:
        hdrs[DEADLINE] = jobmod.format_time(deadline)
    if max_attempts is not None:
        hdrs[MAX_ATTEMPTS] = str(max_attempts)
    if spec.target is not None:
        hdrs[TARGET] = jobmod.validate_claim(spec.target)
    until = _target_until(spec, settings, due or now)
    if until is not None:
        hdrs[TARGET_UNTIL] = until
    if spec.partition_key is not None:
        if spec.target is not None:
            raise InvalidJob("a job cannot have both a target and a partition_key")
        hdrs[PARTITION_KEY] = jobmod.validate_partition_key(spec.partition_key)
    cipher = cipher_for(settings.encryption_keys)
    if cipher is not None:
        body = cipher.encrypt(body, hdrs)
    if settings.signing_key:
        signer_for(settings.signing_key).sign(queue, hdrs, body)
    subject = topology.ready_subject(queue, job_type, hdrs)
    if due is not None:
        hdrs[Header.SCHEDULE.value] = f"@at {jobmod.format_time(due)}"
        hdrs[Header.SCHEDULE_TARGET.value] = subject
        subject = topology.delayed_subject(queue, job_id, uuid.uuid4().hex[:16])
    check_size(max_payload, body, hdrs)
    return PreparedJob._built(job_id, job_type, queue, subject, body, hdrs, store_result, unique_for, max_payload)


def _target_until(spec: JobSpec, settings: Settings, ready: datetime) -> str | None:
    """The Bgjob-Target-Until of a placed job ready at `ready`: `ready` plus its target_timeout (Settings'
    when the spec has none), RFC 3339 UTC; None without a timeout. Raises InvalidJob for a bad timeout or one
    without a target."""
    timeout = jobmod.validate_target_timeout(spec.target_timeout)
    if timeout is not None and spec.target is None:
        raise InvalidJob("target_timeout needs a target: it is how long a job sent with target= waits for a "
                         "worker holding that claim")  # fmt: skip
    if spec.target is None or (timeout is None and settings.target_timeout is None):
        return None
    try:
        return jobmod.format_time(ready + timedelta(seconds=timeout or settings.target_timeout or 0))
    except OverflowError:
        raise InvalidJob(f"target_timeout {spec.target_timeout!r} reaches beyond the year 9999") from None


# -- deliveries ------------------------------------------------------------------------------------------------
def attempts_used(headers: dict[str, str]) -> int:
    """Attempts used before this message was stored (0 for a job's first message)."""
    text = headers.get(ATTEMPTS_USED)
    if not text or not (text.isascii() and text.isdigit()):  # "²" is a digit to str.isdigit, not to int()
        return 0
    return min(int(text), _MAX_CARRIED)


def carried_deadline(headers: Mapping[str, str]) -> datetime | None:
    """The deadline a message carries (its Bgjob-Deadline header), None when it has none; raises
    jobmod.DecodeError for one that is not an RFC 3339 time."""
    text = headers.get(DEADLINE)
    if text is None:
        return None
    moment = jobmod.parse_time(text) if len(text) <= 64 else None
    try:
        if moment is not None:
            jobmod.format_time(moment)  # 0001-01-01T00:00+05:00 parses, but is no time in UTC
    except OverflowError:
        moment = None
    if moment is None:
        raise jobmod.DecodeError(f"header {DEADLINE} is not an RFC 3339 time in the years 1 to 9999 UTC: "
                                 f"{text[:64]!r}")  # fmt: skip
    return moment


def carried_max_attempts(headers: Mapping[str, str]) -> int | None:
    """The job's own attempt limit (its Bgjob-Max-Attempts header), None when it has none; raises
    jobmod.DecodeError for one that is not an int from 1 to 1000000."""
    text = headers.get(MAX_ATTEMPTS)
    if text is None:
        return None
    if not (len(text) <= 7 and text.isascii() and text.isdigit() and 1 <= int(text) <= _MAX_CARRIED):
        raise jobmod.DecodeError(f"header {MAX_ATTEMPTS} is not an int from 1 to {_MAX_CARRIED}: {text[:64]!r}")
    return int(text)


def job_id_of(msg: Msg) -> str:
    """The job's id: its Bgjob-Id header, else (a periodic firing or a hand-published message) one made unique
    by the stream sequence."""
    headers = msg.headers or {}
    raw_id = headers.get(jobmod.HEADER_ID)
    if jobmod.is_valid_job_id(raw_id):
        return raw_id
    schedule = headers.get(SCHEDULE_NAME)
    return f"{schedule if jobmod.is_valid_job_id(schedule) else 'seq'}-{msg.metadata.sequence.stream}"


def decode_job(msg: Msg, queue: str, job_type: str, job_id: str, attempt: int, max_attempts: int | None,
               cipher: Cipher | None = None, deadline: datetime | None = None,
               heartbeat: Callable[[], None] | None = None) -> Job:  # fmt: skip
    """The Job a handler sees, with the effective `max_attempts` and the `deadline` (`carried_deadline`) the
    caller read, and `heartbeat` (what `job.heartbeat()` calls); raises jobmod.DecodeError for a body or header
    that does not decode, and its subclass bgjob.encryption.DecryptError for an encrypted body that `cipher`
    (the worker's keys, None when it has none) cannot decrypt."""
    headers = msg.headers or {}
    declared = headers.get(jobmod.HEADER_TYPE)
    if declared is not None and declared != job_type:
        raise jobmod.DecodeError(f"header {jobmod.HEADER_TYPE} {declared!r} disagrees with subject {msg.subject!r}")
    # Job(...) with every field given, built without its frozen __init__ (which sets each of them through
    # object.__setattr__): a pool thread does this for every job. tests/test_hot_path_equivalents checks it is
    # the Job that __init__ makes.
    job = _new(Job)
    job.__dict__.update(
        id=job_id,
        type=job_type,
        arg=jobmod.decode_arg(decrypt_body(msg.data or b"", headers, cipher), headers.get(jobmod.CONTENT_TYPE)),
        queue=queue,
        attempt=attempt,
        request_id=headers.get(jobmod.HEADER_REQUEST_ID),
        # Jobs fired by a periodic schedule were enqueued when the server stored them.
        enqueued_at=jobmod.parse_time(headers.get(jobmod.HEADER_ENQUEUED_AT)) or msg.metadata.timestamp,
        headers=jobmod.user_headers(headers),
        max_attempts=max_attempts,
        sensitive=jobmod.sensitive_of(headers),
        deadline=deadline,
        _heartbeat=heartbeat,
    )
    return job


_new = object.__new__


def next_run_message(
    msg: Msg,
    topology: Topology,
    *,
    kind: str,
    queue: str,
    job: Job,
    due: datetime,
    attempts: int,
    arg: Any = KEEP_ARG,
    cipher: Cipher | None = None,
) -> tuple[str, bytes, dict[str, str]]:
    """Subject, body and headers of the next run of delivered `job` as an `@at` schedule due at `due`.

    `kind` is "retry" (the attempt count carried forward: `attempts` used so far) or "next" (a Reschedule: a
    new run, attempts start again); `arg` replaces the body unless KEEP_ARG, encrypted with `cipher` (the
    worker's keys) when given (a kept body stays as it was stored). The subject is the delivery's own
    (`delivery_key`): redone after a crash it replaces its schedule, and two jobs that share an id never
    replace each other's. The caller signs and publishes. Raises InvalidJob when the new arg does not encode,
    InvalidSchedule when `due` is past what the server can schedule.
    """
    check_due(due)
    job_id = job.id
    headers = without_nats_headers(msg.headers)
    headers.pop(TARGET_UNTIL, None)  # a holder of its claim took it: its next run waits for one for ever
    _keep_id(headers, job_id)
    if arg is KEEP_ARG:
        body = msg.data or b""
    else:
        body, headers[jobmod.CONTENT_TYPE] = jobmod.encode_arg(arg)
    if attempts > 0:
        headers[ATTEMPTS_USED] = str(attempts)
    else:
        headers.pop(ATTEMPTS_USED, None)
    if kind == "next":  # a new run: its failures, if any, start afresh
        headers[jobmod.HEADER_ENQUEUED_AT] = jobmod.format_time(datetime.now(timezone.utc))
        headers.pop(CARRIED_FIRST_FAILURE, None)
    else:  # a retry: the time of the first failed attempt goes along, for the dead letter if it comes to that
        headers[CARRIED_FIRST_FAILURE] = carried_first_failure(headers) or jobmod.format_time(
            datetime.now(timezone.utc))  # fmt: skip
    if arg is not KEEP_ARG:
        headers.pop(ENCRYPTION, None)
        if cipher is not None:
            body = cipher.encrypt(body, headers)  # bound to the Bgjob-Id _keep_id kept, if any
    headers.update({
        Header.SCHEDULE.value: f"@at {jobmod.format_time(due)}",
        Header.SCHEDULE_TARGET.value: topology.ready_subject(queue, job.type, headers),
        MSG_ID: derived_msg_id(kind, job_id, msg),
    })  # fmt: skip
    key = delivery_key(msg)
    subject = topology.retry_subject(queue, job_id, key) if kind == "retry" else topology.delayed_subject(
        queue, job_id, key)  # fmt: skip
    return subject, body, headers


def carried_first_failure(headers: Mapping[str, str] | None) -> str | None:
    """The time of the job's first failed attempt, as carried by its message (Bgjob-First-Failure, RFC 3339),
    when it carries a valid one; else None."""
    text = (headers or {}).get(CARRIED_FIRST_FAILURE)
    return text if text and len(text) <= 64 and jobmod.parse_time(text) else None


def delivery_key(msg: Msg) -> str:
    """`<stream sequence>-<stored ns>`: names one stored message for ever, the same on each of its deliveries."""
    return f"{msg.metadata.sequence.stream}-{stored_timestamp_ns(msg)}"


def handed_back_message(msg: Msg, attempts: int) -> tuple[bytes, dict[str, str]]:
    """The same job again, to be stored afresh with `attempts` carried (a drain giving back an unrun job). A
    placed job's Bgjob-Target-Until is dropped: a holder of its claim took it."""
    headers = without_nats_headers(msg.headers)
    headers.pop(TARGET_UNTIL, None)
    if attempts > 0:
        headers[ATTEMPTS_USED] = str(attempts)
    else:
        headers.pop(ATTEMPTS_USED, None)
    job_id = job_id_of(msg)
    _keep_id(headers, job_id)
    headers[MSG_ID] = derived_msg_id("back", job_id, msg)
    return msg.data or b"", headers


def _keep_id(headers: dict[str, str], job_id: str) -> None:
    """Carry the job id (a periodic firing's comes from its sequence number, which the next message changes),
    unless that would break a signature made without it (the settle module re-signs when it has a key)."""
    if jobmod.HEADER_ID not in headers and SIGNATURE not in headers:
        headers[jobmod.HEADER_ID] = job_id


# -- periodic jobs and dead letters sent back --------------------------------------------------------------------
def periodic_message(
    settings: Settings, name: str, cron: str, job_type: str, arg: Any, queue: str, tz: str,
    headers: Mapping[str, str] | None,
) -> tuple[str, bytes, dict[str, str]]:  # fmt: skip
    """A periodic job's cron schedule message: (subject, body, headers). `name` is validated by the caller;
    raises InvalidSchedule (cron, time zone) or InvalidJob (type, queue, arg, headers). With encryption keys the
    arg is stored encrypted, not bound to a job id (each firing gets its own id)."""
    schedule = ByCron(cron, tz)
    jobmod.validate_type(job_type)
    jobmod.validate_queue(queue)
    topology = _topology(settings.prefix)
    hdrs = jobmod.validate_headers(headers)
    body, content_type = jobmod.encode_arg(arg)
    hdrs.update({
        jobmod.HEADER_TYPE: job_type,
        jobmod.CONTENT_TYPE: content_type,
        SCHEDULE_NAME: name,
        CRON: cron,
        Header.SCHEDULE.value: schedule.server_expr(),
        Header.SCHEDULE_TARGET.value: topology.job_subject(queue, job_type),
        Header.SCHEDULE_TIME_ZONE.value: tz,
    })  # fmt: skip
    cipher = cipher_for(settings.encryption_keys)
    if cipher is not None:
        body = cipher.encrypt(body, hdrs)
    if settings.signing_key:
        signer_for(settings.signing_key).sign(queue, hdrs, body)
    return topology.cron_subject(queue, name), body, hdrs


def requeue_message(
    topology: Topology, queue: str, job_type: str, job_id: str, headers: Mapping[str, str],
    first_failure_at: datetime | None,
) -> tuple[str, dict[str, str]]:  # fmt: skip
    """A dead letter sent back to its queue: (subject, headers); the body is the dead letter's. It keeps the
    time of its first failure (a second dead letter then says since when it fails) and gets a fresh
    `Nats-Msg-Id`: the original may still be inside the duplicate window. A job sent without a valid Bgjob-Id
    goes back under the id it was dead-lettered with (`job_id`), so it keeps that one id from then on. A deadline
    that has passed is dropped: a job retried from the DLQ by hand runs (its deadline still applies otherwise);
    so is a placed job's target time that has passed (Bgjob-Target-Until): it waits for its claim for ever."""
    hdrs = dict(headers)
    if not jobmod.is_valid_job_id(hdrs.get(jobmod.HEADER_ID)):
        hdrs[jobmod.HEADER_ID] = job_id
    deadline = jobmod.parse_time(hdrs.get(DEADLINE))
    if DEADLINE in hdrs and (deadline is None or deadline <= datetime.now(timezone.utc)):
        del hdrs[DEADLINE]  # retried by hand after its deadline: it runs (else it would be dead-lettered again)
    until = jobmod.parse_time(hdrs.get(TARGET_UNTIL))
    if TARGET_UNTIL in hdrs and (until is None or until <= datetime.now(timezone.utc)):
        del hdrs[TARGET_UNTIL]  # a no_target dead letter retried: it waits for a holder of its claim again
    hdrs[CARRIED_FIRST_FAILURE] = jobmod.format_time(first_failure_at or datetime.now(timezone.utc))
    hdrs[MSG_ID] = f"{job_id}:retry:{uuid.uuid4().hex[:12]}"
    return topology.ready_subject(queue, job_type, hdrs), hdrs
