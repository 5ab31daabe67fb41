"""Opt-in job results in the BGJOB_RESULTS key-value bucket: status, return value, errors, attempts.

Every record is bounded so that it always fits in one message of the server (its `max_payload`):

- at most `MAX_ERRORS` (10) errors are kept, the most recent ones; `errors_dropped` counts the others;
- an error text keeps its first `MAX_ERROR_BYTES` (4 KiB) and a traceback its last `MAX_TRACEBACK_BYTES`
  (16 KiB) of UTF-8, with a marker saying how many bytes were cut;
- at most `MAX_WORKER_IDS` (20) worker ids are kept, the most recent ones;
- a return value (JSON, or the repr() of a value that is not JSON) that does not fit next to the rest of
  the record is refused: the result is FAILED with `ResultTooLarge: return value too large (N bytes; the
  limit is M)`, where M is the server's max_payload less the record's other fields.

`encode_record` does that bounding; bgjob_django's task results use it too.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js.api import StorageType
from nats.js.kv import KeyValue

from . import job as jobmod
from .errors import ResultTooLarge  # also importable from here, where it was first defined
from .headers import STORE_RESULT

if TYPE_CHECKING:
    from .core import Core

HEADER_STORE_RESULT = STORE_RESULT
_PLAIN_KEY = re.compile(r"[-_=a-zA-Z0-9]+")
#: JetStream's "message delete not permitted" (a stream with deny_delete: a results bucket of an older bgjob).
_DELETE_DENIED = 10057

#: errors kept per record: the last MAX_ERRORS attempts' (a job retried for ever stays bounded).
MAX_ERRORS = 10
#: bytes of an error text kept (its start).
MAX_ERROR_BYTES = 4 * 1024
#: bytes of a traceback kept (its end, where the exception is).
MAX_TRACEBACK_BYTES = 16 * 1024
#: worker ids kept per record (the most recent ones).
MAX_WORKER_IDS = 20
#: bytes of max_payload left for the key-value message's subject and headers.
RECORD_RESERVE = 512
#: what is left of the last error's texts when nothing else can be dropped.
_MIN_TEXT_BYTES = 256
#: text fields of an error entry: (name, bytes kept, keep the end).
_TEXT_FIELDS = (("error", MAX_ERROR_BYTES, False), ("traceback", MAX_TRACEBACK_BYTES, True))


class ResultStatus(enum.StrEnum):
    """Where a job with a stored result is in its life."""

    READY = "READY"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    SUCCESSFUL = "SUCCESSFUL"

    @property
    def finished(self) -> bool:
        return self in (ResultStatus.FAILED, ResultStatus.SUCCESSFUL)


@dataclass(frozen=True)
class JobError:
    """One failed attempt."""

    attempt: int
    error: str
    traceback: str | None
    at: datetime | None


@dataclass(frozen=True)
class JobResult:
    """The stored result of a job (send_job(..., store_result=True)).

    `errors` are the last MAX_ERRORS (10) failed attempts, oldest first; `errors_dropped` counts the
    earlier ones that were not kept. `progress` is the job's latest `job.report_progress` value (a JSON value or
    bytes; None when it reported none, or longer ago than Settings.progress_ttl) and `progress_at` when it was
    stored (aware UTC): read by `Client.result` from the progress bucket, never part of the stored record.
    """

    id: str
    status: ResultStatus
    job_type: str
    queue: str
    value: Any
    errors: tuple[JobError, ...]
    attempts: int
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker_ids: tuple[str, ...]
    errors_dropped: int = 0
    progress: Any = None
    progress_at: datetime | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> JobResult:
        return cls(
            id=record["id"],
            status=ResultStatus(record["status"]),
            job_type=record.get("type", ""),
            queue=record.get("queue", ""),
            value=record.get("value"),
            errors=tuple(
                JobError(e["attempt"], e["error"], e.get("traceback"), jobmod.parse_time(e.get("at")))
                for e in record.get("errors", [])
            ),
            attempts=record.get("attempts", 0),
            enqueued_at=jobmod.parse_time(record.get("enqueued_at")),
            started_at=jobmod.parse_time(record.get("started_at")),
            finished_at=jobmod.parse_time(record.get("finished_at")),
            worker_ids=tuple(record.get("worker_ids", [])),
            errors_dropped=record.get("errors_dropped", 0),
        )


# -- bounding records ----------------------------------------------------------------------------------
def cut_text(text: str, max_bytes: int, *, keep_end: bool = False) -> str:
    """`text` if its UTF-8 encoding has at most `max_bytes` bytes; else its start (or, with `keep_end`,
    its end) with a marker `[... N bytes cut ...]`, at most `max_bytes` bytes in all."""
    data = text.encode("utf-8", errors="surrogatepass")
    if len(data) <= max_bytes:
        return text
    room = max(0, max_bytes - 40)  # the marker takes at most 40 bytes
    marker = f"[... {len(data) - room} bytes cut ...]"
    if keep_end:
        return marker + data[len(data) - room :].decode("utf-8", errors="ignore")
    return data[:room].decode("utf-8", errors="ignore") + marker


def encoded_size(value: Any) -> int:
    """Bytes of `value` as a record stores it (compact UTF-8 JSON)."""
    return len(_dumps(value))


def bound_errors(record: dict[str, Any], keep: int = MAX_ERRORS) -> None:
    """Keep the last `keep` entries of `record["errors"]` (counting the others in `errors_dropped`) and
    cut their `error` and `traceback` texts (see the module's docstring). Changes `record` in place."""
    errors = record.get("errors")
    if not isinstance(errors, list):
        return
    if len(errors) > keep:
        record["errors_dropped"] = record.get("errors_dropped", 0) + len(errors) - keep
        del errors[: len(errors) - keep]
    for entry in errors:
        if isinstance(entry, dict):
            for name, limit, keep_end in _TEXT_FIELDS:
                if isinstance(entry.get(name), str):
                    entry[name] = cut_text(entry[name], limit, keep_end=keep_end)


def encode_record(record: dict[str, Any], max_payload: int, *, value_key: str = "value") -> bytes:
    """`record` as compact UTF-8 JSON that fits in one message of a server with `max_payload` (bytes).

    Errors are bounded first (`bound_errors`); if the record is still too large, older errors are
    dropped, then the last one's texts cut to a few hundred bytes. `record` is changed in place to
    what was encoded. Raises ResultTooLarge when even that does not fit: `what` is "return value"
    when `record[value_key]` is what does not fit (the record is then left with its value), else
    "result record".
    """
    budget = max_payload - RECORD_RESERVE
    bound_errors(record)
    data = _dumps(record)
    if len(data) <= budget:
        return data
    value = record.get(value_key)
    minimal = {**record, value_key: None}
    errors = minimal.get("errors")
    if isinstance(errors, list) and errors:
        minimal["errors"] = [_cut_entry(errors[-1], _MIN_TEXT_BYTES)]
        minimal["errors_dropped"] = record.get("errors_dropped", 0) + len(errors) - 1
    rest = len(_dumps(minimal)) - len(b"null")
    if rest > budget:
        raise ResultTooLarge("result record", rest + encoded_size(value), budget)
    if value is not None:
        value_size = encoded_size(value)
        if value_size > budget - rest:
            raise ResultTooLarge("return value", value_size, budget - rest)
    # It fits once older diagnostics go: drop them oldest first.
    errors = record.get("errors")
    while isinstance(errors, list) and len(errors) > 1 and len(data) > budget:
        del errors[0]
        record["errors_dropped"] = record.get("errors_dropped", 0) + 1
        data = _dumps(record)
    if len(data) > budget and isinstance(errors, list) and errors:
        errors[-1] = _cut_entry(errors[-1], _MIN_TEXT_BYTES)
        data = _dumps(record)
    return data


def _cut_entry(entry: Any, max_bytes: int) -> Any:
    if not isinstance(entry, dict):
        return entry
    cut = dict(entry)
    for name, _, keep_end in _TEXT_FIELDS:
        if isinstance(cut.get(name), str):
            cut[name] = cut_text(cut[name], max_bytes, keep_end=keep_end)
    return cut


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escaped, they are valid JSON
        return json.dumps(value, separators=(",", ":"), default=str).encode("ascii")


def storable_value(value: Any) -> Any:
    """`value` if it is JSON, else its repr() (what a result record stores)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not lose the outcome
        return f"<{type(value).__name__} object: repr() failed: {type(exc).__name__}>"


# -- the bucket ----------------------------------------------------------------------------------------
def result_key(job_id: str) -> str:
    """The bucket key of a job id (ids with ':' or '+' are hex-encoded; plain ids never contain '.')."""
    return job_id if _PLAIN_KEY.fullmatch(job_id) else "x." + job_id.encode().hex()


async def bucket(core: Core, create: bool = True) -> KeyValue | None:
    """The results bucket; created on first write, so jobs without results never cost one. It keeps two
    revisions per key: a writer stores the new one, then erases the old one itself (`_erase_older`); with
    one, the server would drop the old revision by its limit, which leaves its bytes in the block file.
    Its stream allows deletes by sequence (`erasable`), which a KV's stream denies by default."""
    return await core.bucket("RESULTS", ttl=core.settings.result_ttl, storage=StorageType.FILE,
                             description="bgjob job results", create=create, history=2, erasable=True)  # fmt: skip


async def _bucket(core: Core) -> KeyValue:
    kv = await bucket(core)
    assert kv is not None
    return kv


def _now() -> str:
    return jobmod.format_time(datetime.now(timezone.utc))


async def record_ready(core: Core, job_id: str, job_type: str, queue: str) -> None:
    """READY, unless a worker has already written a later state (create fails then)."""
    record = {"id": job_id, "status": "READY", "type": job_type, "queue": queue, "enqueued_at": _now(),
              "attempts": 0, "errors": [], "worker_ids": []}  # fmt: skip

    async def create() -> None:
        try:
            await (await _bucket(core)).create(result_key(job_id), encode_record(record, core.max_payload))
        except nats.js.errors.KeyWrongLastSequenceError:
            pass

    await core.retry(create)


async def _read(core: Core, job_id: str) -> dict[str, Any] | None:
    kv = await bucket(core, create=False)
    if kv is None:
        return None
    try:
        entry = await kv.get(result_key(job_id))
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    return json.loads(entry.value) if entry.value else None


async def read_record(core: Core, job_id: str) -> dict[str, Any] | None:
    """The stored record of `job_id`, or None; transient errors are retried for Settings.retry_for."""
    result: dict[str, Any] | None = await core.retry(_read, core, job_id)
    return result


async def delete_record(core: Core, job_id: str) -> bool:
    """Securely erase the stored result of `job_id` and every revision of it the stream still holds, then
    purge the key (a rollup marker, so no later read finds it). Returns whether a result was stored.

    Each revision is deleted by stream sequence with JetStream's STREAM.MSG.DELETE without `no_erase` (what
    nats-py's `delete_msg` sends), which overwrites the message's bytes in the block file; a KV purge or
    delete alone only drops it from the index and leaves its bytes on disk until the block is compacted.
    Earlier revisions (READY, RUNNING, READY again after a retry: they carry the earlier attempts' error
    texts) are erased by the writers as soon as a newer revision is stored (`_erase_older`), so the stream
    holds at most the current one, or two after a writer was interrupted; both are found here. Nothing is
    written when the bucket or the key never existed. Transient errors are retried for Settings.retry_for
    (erasing is idempotent); then bgjob.ConnectionError says why.

    Limits: a results bucket created by a bgjob older than this (`history=1`) dropped earlier revisions by
    its per-key limit, which does not overwrite them; the job message itself (its arg) stays in its queue
    stream's files after it was acked until JetStream compacts or removes that block. Encryption at rest
    (`Settings.encryption_keys`, the server's own `encryption` setting) protects those bytes.
    """

    async def erase() -> bool:
        kv = await bucket(core, create=False)
        if kv is None:
            return False
        key = result_key(job_id)
        stored, found = await _erase_revisions(core, key, below=None)
        if found:
            await kv.purge(key)
        return stored

    result: bool = await core.retry(erase)
    return result


def _stream_and_subject(core: Core, key: str) -> tuple[str, str]:
    name = core.topology.stream_prefix + "RESULTS"
    return "KV_" + name, f"$KV.{name}.{key}"


async def _erase_revisions(core: Core, key: str, *, below: int | None) -> tuple[bool, bool]:
    """Securely erase the stream messages of `key`, oldest first (those with a sequence below `below` only,
    when given). Returns (whether the last one erased held a record, whether any message was erased)."""
    stream, subject = _stream_and_subject(core, key)
    stored = found = False
    seq = 1
    while below is None or seq < below:
        try:
            msg = await core.js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        if msg.seq is None or (below is not None and msg.seq >= below):
            break
        found = True
        stored = bool(msg.data) and not (msg.headers or {}).get("KV-Operation")
        try:
            await core.js.delete_msg(stream, msg.seq)  # no `no_erase`: the server overwrites the bytes
        except nats.js.errors.NotFoundError:
            pass  # erased by a concurrent writer or delete
        except nats.js.errors.APIError as exc:
            if exc.err_code != _DELETE_DENIED:
                raise
            # A bucket created by an older bgjob denies deletes: the caller's purge is all that can be done.
            last = await _last_revision(core, stream, subject)
            stored = last is not None and bool(last.data) and not (last.headers or {}).get("KV-Operation")
            break
        seq = msg.seq + 1
    return stored, found


async def _last_revision(core: Core, stream: str, subject: str) -> Any:
    try:
        return await core.js.get_msg(stream, subject=subject)
    except nats.js.errors.NotFoundError:
        return None


async def _erase_older(core: Core, key: str, seq: int) -> None:
    """Securely erase the revisions of `key` older than `seq` (the one just written): they may hold error
    texts of earlier attempts, and a revision replaced by a KV limit keeps its bytes in the block file."""
    await core.retry(_erase_revisions, core, key, below=seq)


async def record_running(
    core: Core, job_id: str, job_type: str, queue: str, attempt: int, enqueued_at: str | None, worker_id: str
) -> dict[str, Any]:
    """RUNNING, keeping what earlier attempts recorded; returns the record for record_outcome.

    Transient errors are retried for Settings.retry_for; then bgjob.ConnectionError says why. Other
    errors are the server's own (nats-py's; its `str()` has the description, its `repr()` does not).
    """

    async def write() -> dict[str, Any]:
        record = await _read(core, job_id) or {
            "id": job_id, "type": job_type, "queue": queue, "errors": [], "worker_ids": [], "enqueued_at": enqueued_at,
        }  # fmt: skip
        record.update(status="RUNNING", attempts=attempt, started_at=_now(), finished_at=None)
        workers = [w for w in record.get("worker_ids", []) if w != worker_id] + [worker_id]
        record["worker_ids"] = workers[-MAX_WORKER_IDS:]
        seq = await (await _bucket(core)).put(result_key(job_id), encode_record(record, core.max_payload))
        await _erase_older(core, result_key(job_id), seq)
        return record

    result: dict[str, Any] = await core.retry(write)
    return result


async def record_outcome(
    core: Core,
    record: dict[str, Any],
    status: ResultStatus,
    *,
    value: Any = None,
    error: str | None = None,
    traceback: str | None = None,
) -> None:
    """Store the outcome of an attempt: SUCCESSFUL with a value, FAILED, or READY again (a retry).

    `record` is what record_running returned (changed in place); `value` is the return value (stored
    as is if it is JSON, else its repr()); `error` and `traceback` the attempt's failure, if any. The
    record is bounded (see the module's docstring); a return value that does not fit makes the result
    FAILED with `ResultTooLarge: return value too large (N bytes; the limit is M)` instead, so every job
    ends in a final recorded state. Transient errors are retried for Settings.retry_for; then
    bgjob.ConnectionError says why. Other errors are the server's own (nats-py's; its `str()` has the
    description, its `repr()` does not), or ResultTooLarge when even a minimal record does not fit.
    """
    if error is not None:
        record["errors"].append({"attempt": record.get("attempts", 0), "error": error, "traceback": traceback,
                                 "at": _now()})  # fmt: skip
    record["status"] = status.value
    if status.finished:
        record["finished_at"] = _now()
    if status is ResultStatus.SUCCESSFUL:
        record["value"] = storable_value(value)
    try:
        data = encode_record(record, core.max_payload)
    except ResultTooLarge as exc:
        if exc.what != "return value":
            raise
        _refuse_value(record, exc)
        data = encode_record(record, core.max_payload)
    kv = await core.retry(_bucket, core)
    seq = await core.retry(kv.put, result_key(record["id"]), data)
    await _erase_older(core, result_key(record["id"]), seq)


def _refuse_value(record: dict[str, Any], refused: ResultTooLarge) -> None:
    """Make `record` FAILED, without its value, with the ResultTooLarge error of that attempt."""
    record["value"] = None
    record["status"] = ResultStatus.FAILED.value
    record["finished_at"] = record.get("finished_at") or _now()
    record["errors"].append({"attempt": record.get("attempts", 0), "error": f"ResultTooLarge: {refused}",
                             "traceback": None, "at": _now()})  # fmt: skip
