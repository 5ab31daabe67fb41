"""Reading the dead-letter queue: `DeadLetter` (raw and masked views), and the `DeadLetters` API that lists, gets,
retries, deletes, purges, finds and erases dead letters (`client.dlq`)."""

from __future__ import annotations

import base64
import builtins
import json
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RawStreamMsg

from . import job as jobmod
from . import redaction
from .arg_match import arg_matches, validate_match
from .codec import requeue_message
from .encryption import Cipher, DecryptError, cipher_for, decrypt_body
from .errors import DeadLetterNotFound, InvalidJob, InvalidMatch
from .headers import (
    CONTENT_TYPE,
    DLQ_ATTEMPTS,
    DLQ_ERROR,
    DLQ_FAILURE_HEADERS,
    DLQ_FIRST_FAILURE,
    DLQ_LAST_FAILURE,
    DLQ_TRACEBACK,
    HEADER_ENQUEUED_AT,
    HEADER_REQUEST_ID,
    without_nats_headers,
)
from .job import validate_reason
from .stats import count_dead_letters

T = TypeVar("T")

if TYPE_CHECKING:
    from .core import Core
    from .settings import Settings



@dataclass(frozen=True, repr=False)
class DeadLetter:
    """A failed job kept in the DLQ stream, with why and when it failed.

    `arg`, `headers`, `error` and `traceback` are as stored: they may hold personal data and secrets. Anything
    shown to a person uses the masked views instead (`masked_arg`, `masked_headers`, `masked_error`,
    `masked_traceback`): the values of the arg keys marked sensitive (`sensitive`), the values of headers whose
    names look secret, and any quote of those values in the texts, replaced by `bgjob.redaction.MASK`. The repr
    shows id, seq, queue, type and reason only.
    """

    id: str
    seq: int
    queue: str
    type: str
    reason: str
    error: str
    traceback: str | None
    attempts: int
    first_failure_at: datetime | None
    last_failure_at: datetime | None
    body: bytes
    #: the job's headers as its producer sent them (Bgjob-*, Content-Type and custom ones).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the reading client's Settings.sensitive_headers (extra header names/globs masked besides the built-in rule).
    sensitive_header_patterns: tuple[str, ...] = field(default=(), compare=False)
    #: the reading client's encryption keys (None: it has none): what `arg` decrypts an encrypted body with.
    cipher: Cipher | None = field(default=None, compare=False, repr=False)
    #: False for a message something else than bgjob published to the DLQ's subjects (its subject names no
    #: queue, reason, id and type): it is listed under id `dlq-seq-<seq>` and can be deleted, not retried.
    from_bgjob: bool = field(default=True, compare=False)

    def __repr__(self) -> str:
        return f"DeadLetter(id={self.id!r}, seq={self.seq}, queue={self.queue!r}, type={self.type!r}, " \
               f"reason={self.reason!r})"  # fmt: skip

    @property
    def arg(self) -> Any:
        """The decoded arg; the raw body when it does not decode. An encrypted body (bgjob.encryption) is
        decrypted with the reading client's keys; when that cannot be done the arg is a str placeholder,
        "<encrypted; this client has no key <key id>>" (or "... does not authenticate ..."): never raises."""
        arg, _ = self._read()
        return arg

    def _read(self) -> tuple[Any, str | None]:
        """(the arg as `arg` shows it, None) when the body decrypts and decodes; else (that placeholder or the
        raw body, why it could not be read: "encrypted with key k1 this client does not have", ...)."""
        try:
            body = decrypt_body(self.body, self.headers, self.cipher, who="client")
        except DecryptError as exc:
            if exc.key_id is None or self.cipher is None or exc.key_id not in self.cipher.key_ids:
                return (f"<encrypted; this client has no key {exc.key_id or '?'}>",
                        f"encrypted with key {exc.key_id or '?'} this client does not have")  # fmt: skip
            return (f"<encrypted with key {exc.key_id}; the body does not authenticate (tampered with)>",
                    f"encrypted with key {exc.key_id} but the body does not authenticate (tampered with)")  # fmt: skip
        try:
            arg = jobmod.decode_arg(body, self.headers.get(CONTENT_TYPE))
        except jobmod.DecodeError:
            return body, "the body is not JSON"
        return arg, ("the arg is raw bytes, not JSON" if isinstance(arg, bytes) else None)

    @property
    def sensitive(self) -> frozenset[str]:
        """The arg keys the job was marked sensitive by (its Bgjob-Sensitive header); empty when none."""
        return jobmod.sensitive_of(self.headers)

    @property
    def masked_arg(self) -> Any:
        """The arg with the value of every `sensitive` key (at any depth) replaced by MASK. An arg that does not
        decode (bytes) is shown as it is when no key is sensitive, and as MASK when some are (its keys cannot
        be found in it)."""
        arg = self.arg
        if isinstance(arg, bytes):
            return redaction.MASK if self.sensitive else arg
        return redaction.mask_arg(arg, self.sensitive)

    @property
    def masked_headers(self) -> dict[str, str]:
        """The headers with the values of sensitive ones (Authorization, Cookie, *token*, ... and the client's
        Settings.sensitive_headers) replaced by MASK."""
        return redaction.mask_headers(self.headers, self.sensitive_header_patterns)

    @property
    def masked_error(self) -> str:
        """The error text with every quote of a sensitive value (arg or header) replaced by MASK."""
        return redaction.scrub_text(self.error, self._secret_values()) or ""

    @property
    def masked_traceback(self) -> str | None:
        """The traceback with every quote of a sensitive value (arg or header) replaced by MASK; None if none."""
        return redaction.scrub_text(self.traceback, self._secret_values())

    def _secret_values(self) -> list[str]:
        """The texts a message could quote: the sensitive arg values and the sensitive headers' values."""
        return redaction.secret_texts(self.arg, self.sensitive, self.headers, self.sensitive_header_patterns)

    @property
    def request_id(self) -> str | None:
        return self.headers.get(HEADER_REQUEST_ID)

    @property
    def enqueued_at(self) -> datetime | None:
        return jobmod.parse_time(self.headers.get(HEADER_ENQUEUED_AT))


def stored_headers(raw: RawStreamMsg) -> dict[str, str]:
    """A stored message's headers as str, UTF-8 included (nats-py's get_msg parses them as e-mail headers,
    which turns non-ASCII values into email.header.Header objects)."""
    if not raw.hdrs:
        return {}
    block = base64.b64decode(raw.hdrs).decode("utf-8", errors="replace")
    headers: dict[str, str] = {}
    for line in block.split("\r\n")[1:]:  # the first line is "NATS/1.0"
        name, sep, value = line.partition(":")
        if sep and name:
            headers[name.strip()] = value.strip()
    return headers


def _seq(raw: RawStreamMsg) -> int:
    """The stream sequence of a message read from a stream (nats-py types it Optional: a stored one has it)."""
    assert raw.seq is not None
    return raw.seq


def _entry(core: Core, raw: RawStreamMsg) -> DeadLetter:
    headers = stored_headers(raw)
    try:
        queue, reason, job_id, job_type = core.topology.parse_dlq_subject(raw.subject or "")
        from_bgjob = _valid_parts(queue, reason, job_id, job_type)
    except ValueError:
        from_bgjob = False
    if not from_bgjob:  # published to the DLQ's subjects by something else than bgjob: shown, found by seq
        queue, reason, job_id, job_type = "unknown", "unknown", _by_seq(_seq(raw)), "unknown"

    def text(name: str) -> str | None:
        """A JSON-encoded text header (bgjob writes them so); a value written otherwise as it is."""
        value = headers.get(name)
        if not value:
            return None
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value

    # id, type, queue and reason come from the subject, where the worker put them validated (a job sent with
    # an invalid Bgjob-Id is stored under the id it ran with, `seq-<n>`): the one id every lookup finds it by.
    return DeadLetter(
        id=job_id,
        seq=_seq(raw),
        queue=queue,
        type=job_type,
        reason=reason,
        error=text(DLQ_ERROR) or "",
        traceback=text(DLQ_TRACEBACK),
        attempts=_count(headers.get(DLQ_ATTEMPTS)),
        first_failure_at=jobmod.parse_time(headers.get(DLQ_FIRST_FAILURE)),
        last_failure_at=jobmod.parse_time(headers.get(DLQ_LAST_FAILURE)),
        body=raw.data or b"",
        headers={k: v for k, v in without_nats_headers(headers).items() if k not in DLQ_FAILURE_HEADERS},
        sensitive_header_patterns=core.settings.sensitive_headers,
        cipher=cipher_for(core.settings.encryption_keys),
        from_bgjob=from_bgjob,
    )


def _valid_parts(queue: str, reason: str, job_id: str, job_type: str) -> bool:
    """Whether a dead letter's subject names what bgjob writes there: a valid queue, reason and job id (what it is
    found by). Its type is the message's subject as published, whatever it holds (`é`, HTML: shown escaped)."""
    try:
        jobmod.validate_queue(queue)
        validate_reason(reason)
    except InvalidJob:
        return False
    return jobmod.is_valid_job_id(job_id) and bool(job_type)


def _by_seq(seq: int) -> str:
    """The id of a dead letter whose subject names none: its DLQ sequence."""
    return f"dlq-seq-{seq}"


def _count(text: str | None) -> int:
    return int(text) if text and text.isascii() and text.isdigit() else 0


async def _get_next(core: Core, seq: int, subject: str) -> RawStreamMsg | None:
    try:
        return await core.js.get_msg(core.topology.dlq_stream, seq=max(seq, 1), next=True, subject=subject)
    except nats.js.errors.NotFoundError:
        return None


async def _list(core: Core, queue: str | None, job_type: str | None, reason: str | None, limit: int,
                before: int | None, after: int | None = None) -> list[DeadLetter]:  # fmt: skip
    """Newest first: scan windows of sequence numbers backwards, each window forwards. With `after`: the
    `limit` oldest ones stored after it (read forwards), newest first."""
    await core.ensure_dlq()
    subject = core.topology.dlq_filter(queue=queue, job_type=job_type, reason=reason)
    if after is not None:
        newer: list[DeadLetter] = []
        seq = after + 1
        while len(newer) < limit and (raw := await _get_next(core, seq, subject)) is not None:
            if before is not None and _seq(raw) >= before:
                break
            newer.append(_entry(core, raw))
            seq = _seq(raw) + 1
        return newer[::-1]
    info = await core.js.stream_info(core.topology.dlq_stream)
    first, last = info.state.first_seq, info.state.last_seq
    hi = min(last, before - 1) if before else last
    window = max(limit, 16)
    found: list[DeadLetter] = []
    while hi >= first and len(found) < limit and info.state.messages:
        lo = max(first, hi - window + 1)
        batch: list[DeadLetter] = []
        seq = lo
        while (raw := await _get_next(core, seq, subject)) is not None and _seq(raw) <= hi:
            batch.append(_entry(core, raw))
            seq = _seq(raw) + 1
        found.extend(reversed(batch))
        hi, window = lo - 1, min(window * 2, 4096)
    return found[:limit]


async def _find(core: Core, entry_id: str) -> DeadLetter:
    await core.ensure_dlq()
    if jobmod.is_valid_job_id(entry_id):
        seq = entry_id.removeprefix(_by_seq(0)[:-1])
        if seq != entry_id and seq.isascii() and seq.isdigit() and 0 < int(seq) <= MAX_SEQ:
            # a message bgjob did not store, by its sequence (checked first: a job may be named dlq-seq-<n> too)
            raw = await _get_next(core, int(seq), f"{core.topology.prefix}.dlq.>")
            if raw is not None and raw.seq == int(seq) and (entry := _entry(core, raw)).id == entry_id:
                return entry
        raw = await _get_next(core, 1, core.topology.dlq_filter(job_id=entry_id))
        if raw is not None and (entry := _entry(core, raw)).id == entry_id:
            return entry
    raise DeadLetterNotFound(f"no dead letter with id {entry_id!r}")


async def _retry(core: Core, entry_id: str) -> str:
    entry = await _find(core, entry_id)
    if not entry.from_bgjob:
        raise InvalidJob(f"dead letter {entry.id} was not stored by bgjob (its subject names no queue to send it "
                         "back to): it cannot be retried, only deleted")  # fmt: skip
    try:
        await core.js.stream_info(core.topology.queue_stream(entry.queue))
    except nats.js.errors.NotFoundError:
        raise InvalidJob(f"dead letter {entry.id} names queue {entry.queue!r}, which does not exist (no worker "
                         "would run it): it was not retried") from None  # fmt: skip
    subject, headers = requeue_message(core.topology, entry.queue, entry.type, entry.id, entry.headers,
                                       entry.first_failure_at)  # fmt: skip
    await core.publish(subject, entry.body, headers, queue=entry.queue)
    await core.delete_stored(core.topology.dlq_stream, entry.seq)  # False: another retry or delete came first
    return entry.id


async def _delete(core: Core, entry_id: str) -> None:
    entry = await _find(core, entry_id)
    if not await core.delete_stored(core.topology.dlq_stream, entry.seq):
        raise DeadLetterNotFound(f"dead letter {entry_id} was retried or deleted meanwhile")


async def _purge(core: Core, queue: str | None, job_type: str | None, reason: str | None,
                 up_to: int | None) -> int:  # fmt: skip
    """One server-side purge (filtered, and bounded by sequence `up_to` when given); returns what the server
    says it removed."""
    await core.ensure_dlq()
    request: dict[str, Any] = {}
    if queue is not None or job_type is not None or reason is not None:
        request["filter"] = core.topology.dlq_filter(queue=queue, job_type=job_type, reason=reason)
    if up_to is not None:
        request["seq"] = up_to + 1  # the server purges below this sequence
    reply = await core.nc.request(f"{core.js._prefix}.STREAM.PURGE.{core.topology.dlq_stream}",
                                  json.dumps(request).encode(), timeout=core.settings.request_timeout)  # fmt: skip
    data = json.loads(reply.data)
    if "error" in data:
        raise nats.js.errors.APIError(**{k: data["error"].get(k) for k in ("code", "err_code", "description")})
    return int(data.get("purged") or 0)


async def _present(core: Core, queue: str | None, scan_limit: int) -> tuple[list[str], list[str]]:
    """(job types, reasons) among the newest `scan_limit` dead letters (of a queue), sorted, read from their
    subjects by one ephemeral headers-only consumer: one fetch, however many there are."""
    await core.ensure_dlq()
    stream = core.topology.dlq_stream
    info = await core.js.stream_info(stream)
    if not info.state.messages:
        return [], []
    start = max(info.state.first_seq, info.state.last_seq - scan_limit + 1)
    sub = await core.js.pull_subscribe(
        core.topology.dlq_filter(queue=queue), stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                              ack_policy=AckPolicy.NONE, headers_only=True, mem_storage=True, num_replicas=1,
                              inactive_threshold=5.0),
    )  # fmt: skip
    types: set[str] = set()
    reasons: set[str] = set()
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            try:
                msgs = await sub.fetch(min(pending, scan_limit), timeout=core.settings.request_timeout)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                try:
                    _, reason, _, job_type = core.topology.parse_dlq_subject(msg.subject)
                except ValueError:  # not stored by bgjob
                    continue
                types.add(job_type)
                reasons.add(reason)
            pending -= len(msgs)
    finally:
        try:
            name = (await sub.consumer_info()).name
            await sub.unsubscribe()
            await core.js.delete_consumer(stream, name)
        except Exception:  # noqa: BLE001 - it expires after its inactive threshold
            pass
    return sorted(types), sorted(reasons)


@dataclass(frozen=True)
class DeadLetterScan:
    """What `DeadLetters.find` found (or `erase` erased) in one bounded scan of the DLQ, oldest first.

    `matches`: the dead letters whose arg matched (for `erase`: the ones deleted). `scanned`: how many dead
    letters were read. `complete`: whether the scan reached the end of the DLQ (of the filtered part); when
    False, scan on with `after=last_seq`. `last_seq`: the DLQ sequence of the last dead letter read (or the
    `after` given when none was).

    `unreadable`: how many of the scanned dead letters could not be checked, because their arg could not be
    read: encrypted with a key this client does not have (or tampered with), or not JSON (raw bytes, or a body
    that does not decode). They may hold the data looked for, and `erase` leaves them: when `unreadable` > 0
    the search is not conclusive (`warning` says why; run it again with the keys). `unreadable_ids`: the job ids
    of the first MAX_UNREADABLE_IDS of them. `unreadable_reasons`: why, e.g.
    {"encrypted with key 3f2a... this client does not have": 2}, as counts.
    """

    matches: list[DeadLetter]
    scanned: int
    complete: bool
    last_seq: int
    unreadable: int = 0
    unreadable_ids: list[str] = field(default_factory=list)
    unreadable_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def warning(self) -> str | None:
        """None when every scanned dead letter was checked; else one line for a person, e.g. "2 dead letters
        could not be checked: encrypted with key 3f2a... this client does not have; set BGJOB_ENCRYPTION_KEYS
        (Settings.encryption_keys) ...". The CLI and manage.py print it and exit with 1; the admin shows it."""
        if not self.unreadable:
            return None
        why = "; ".join(f"{reason}" + (f" ({n})" if len(self.unreadable_reasons) > 1 else "")
                        for reason, n in self.unreadable_reasons.items())  # fmt: skip
        ids = ", ".join(self.unreadable_ids) + (", ..." if self.unreadable > len(self.unreadable_ids) else "")
        fix = ("; set BGJOB_ENCRYPTION_KEYS (Settings.encryption_keys) to the key and run it again"
               if any("encrypted" in reason for reason in self.unreadable_reasons) else "")  # fmt: skip
        return f"{self.unreadable} dead letters could not be checked: {why}{fix} (job ids: {ids})"

    def __repr__(self) -> str:
        return (f"DeadLetterScan(matches={[e.id for e in self.matches]!r}, scanned={self.scanned}, "
                f"complete={self.complete}, last_seq={self.last_seq}, unreadable={self.unreadable})")  # fmt: skip


#: the most dead letters one find/erase reads unless told otherwise.
DEFAULT_SCAN_LIMIT = 10_000
#: the most unreadable dead letters a DeadLetterScan names by job id (its count is exact).
MAX_UNREADABLE_IDS = 100
#: the time a scan may take, per dead letter read, on top of the client's usual bound (seconds).
_SCAN_SECONDS_EACH = 0.01


async def _scan(core: Core, match: dict[tuple[str, ...], Any], queue: str | None, job_type: str | None,
                reason: str | None, scan_limit: int, after: int | None, erase: bool) -> DeadLetterScan:  # fmt: skip
    """Read dead letters oldest first from after `after`, one stream read each, at most `scan_limit`; keep (and
    with `erase`, delete by sequence) those whose arg matches. One more read says whether the end was reached."""
    await core.ensure_dlq()
    subject = core.topology.dlq_filter(queue=queue, job_type=job_type, reason=reason)
    last = after or 0
    matches: list[DeadLetter] = []
    scanned = 0
    unreadable_ids: list[str] = []
    reasons: dict[str, int] = {}

    def result(complete: bool) -> DeadLetterScan:
        return DeadLetterScan(matches, scanned, complete, last, sum(reasons.values()), unreadable_ids, reasons)

    while scanned < scan_limit:
        raw = await _get_next(core, last + 1, subject)
        if raw is None:
            return result(True)
        scanned, last = scanned + 1, _seq(raw)
        entry = _entry(core, raw)
        arg, unreadable = entry._read()
        if unreadable is not None:
            reasons[unreadable] = reasons.get(unreadable, 0) + 1
            if len(unreadable_ids) < MAX_UNREADABLE_IDS:
                unreadable_ids.append(entry.id)
            continue
        if not arg_matches(arg, match):
            continue
        if erase:
            if not await core.delete_stored(core.topology.dlq_stream, entry.seq):  # the server erases its bytes too
                continue  # retried or deleted by someone else meanwhile
        matches.append(entry)
    return result(await _get_next(core, last + 1, subject) is None)


class Runner(Protocol):
    """What DeadLetters needs of a client: run `await coro_fn(core, *args)` on its loop and block for the result."""

    def run(self, coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float | None = None,
            idempotent: bool = False) -> T: ...  # fmt: skip


class DeadLetters:
    """Blocking access to the DLQ of one client (`client.dlq`)."""

    def __init__(self, client: Runner) -> None:
        self._client = client

    def list(
        self,
        queue: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        before: int | None = None,
        reason: str | None = None,
        after: int | None = None,
    ) -> list[DeadLetter]:
        """Dead letters, newest first, at most `limit`: the newest ones stored before DLQ sequence `before`
        (None: the newest of all); pass the last entry's `seq` as `before` for the next (older) page. With
        `after` (a DLQ sequence): the `limit` dead letters stored next after it, still newest first: pass the
        first entry's `seq` as `after` for the previous (newer) page. Raises InvalidJob for a bad filter,
        ValueError for a bad `before` or `after`."""
        _validate_filter(queue, job_type, reason)
        _validate_seq("before", before)
        _validate_seq("after", after)
        if limit < 1:
            return []
        return self._client.run(_list, queue, job_type, reason, limit, before, after, idempotent=True)

    def get(self, entry_id: str) -> DeadLetter:
        """The dead letter of job `entry_id`; raises DeadLetterNotFound."""
        return self._client.run(_find, entry_id, idempotent=True)

    def retry(self, entry_id: str) -> str:
        """Send the job back to its queue (with a fresh dedup id) and remove it from the DLQ; returns its id.
        Raises DeadLetterNotFound, InvalidJob for a message bgjob did not store (`from_bgjob` False)."""
        return self._client.run(_retry, entry_id)

    def delete(self, entry_id: str) -> None:
        self._client.run(_delete, entry_id)

    def purge(self, queue: str | None = None, job_type: str | None = None, reason: str | None = None, *,
              up_to: int | None = None) -> int:  # fmt: skip
        """Remove the dead letters (all, or of a queue / job type / reason) in one server-side purge; returns
        how many were removed. `up_to` (a DLQ sequence, e.g. `last_seq()` read when the purge was confirmed)
        bounds it: dead letters stored after it stay. Raises InvalidJob for a bad filter, ValueError for a bad
        `up_to`, ConnectionError."""
        _validate_filter(queue, job_type, reason)
        _validate_seq("up_to", up_to)
        return self._client.run(_purge, queue, job_type, reason, up_to)

    def count(self, queue: str | None = None, job_type: str | None = None, reason: str | None = None, *,
              after: int | None = None) -> int:  # fmt: skip
        """How many dead letters there are (of a queue / job type / reason; only those stored after DLQ
        sequence `after` when given), counted by the server. Raises InvalidJob for a bad filter."""
        _validate_filter(queue, job_type, reason)
        _validate_seq("after", after)
        return self._client.run(count_dead_letters, queue, job_type, reason, after, idempotent=True)

    def last_seq(self) -> int:
        """The DLQ sequence of the newest dead letter stored so far (0 when none was): what a confirmed purge
        passes as `up_to`."""
        return self._client.run(_last_seq, idempotent=True)

    def job_types(self, queue: str | None = None, *, scan_limit: int = 1000) -> builtins.list[str]:
        """The job types present among the newest `scan_limit` dead letters (of a queue), sorted: what failed,
        including types no handler here knows. One server read however many. Raises InvalidJob for a bad
        queue, ValueError for a bad `scan_limit`."""
        return self._present(queue, scan_limit)[0]

    def reasons(self, queue: str | None = None, *, scan_limit: int = 1000) -> builtins.list[str]:
        """The DLQ reasons present among the newest `scan_limit` dead letters (of a queue), sorted: bgjob's
        (`bgjob.dlq.REASONS`) and the handlers' own (`MoveToDlq(reason=...)`). Same cost and errors as
        `job_types`."""
        return self._present(queue, scan_limit)[1]

    def _present(self, queue: str | None, scan_limit: int) -> tuple[builtins.list[str], builtins.list[str]]:
        _validate_filter(queue, None, None)
        if isinstance(scan_limit, bool) or not isinstance(scan_limit, int) or scan_limit < 1:
            raise ValueError(f"scan_limit must be a positive int, not {scan_limit!r}")
        return self._client.run(_present, queue, scan_limit, idempotent=True)

    def find(
        self,
        match: Mapping[str, Any],
        *,
        queue: str | None = None,
        job_type: str | None = None,
        reason: str | None = None,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
        after: int | None = None,
    ) -> DeadLetterScan:
        """The dead letters whose arg matches `match`, e.g. `{"customer_id": 7}` or `{"customer.id": 7}`.

        `match` maps dotted JSON paths into the arg (dict keys, or list indexes as digits) to values; a dead
        letter matches when every path holds its value (a number also matches its text, see `arg_matches`).
        `queue`/`job_type`/`reason` narrow the scan server-side. Dead letters are read oldest first, after DLQ
        sequence `after` (None: from the start), at most `scan_limit` of them.

        Cost: one stream read (a request to the server) per dead letter scanned, plus one; a scan of 10,000
        takes seconds. The result says whether the end was reached (`complete`) and where to go on
        (`last_seq`). Dead letters whose arg this client cannot read (encrypted with a key it lacks, not JSON)
        are counted in `unreadable`, not matched: check it (or `warning`) before concluding nothing is there.
        Raises InvalidMatch (bad match or scan_limit), InvalidJob (bad filter), ConnectionError.
        """
        parsed = self._validated(match, queue, job_type, reason, scan_limit, after)
        return self._client.run(_scan, parsed, queue, job_type, reason, scan_limit, after, False, idempotent=True,
                                timeout=self._scan_timeout(scan_limit))  # fmt: skip

    def erase(
        self,
        match: Mapping[str, Any],
        *,
        queue: str | None = None,
        job_type: str | None = None,
        reason: str | None = None,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
        after: int | None = None,
    ) -> DeadLetterScan:
        """Delete every dead letter `find` would find with these arguments (for a data-subject request:
        `client.dlq.erase({"customer_id": 7})`); returns the scan, whose `matches` are the deleted ones.

        Each is deleted by its DLQ sequence, so nothing else is touched, and the server overwrites its stored
        bytes (JetStream's secure delete). Until `complete` is True, call again with `after=last_seq`. Dead
        letters it cannot read (`unreadable` > 0: encrypted with a key this client lacks, ...) are left: erase
        again from a client with the keys. Same cost, bounds and errors as `find`; after a ConnectionError part
        may be deleted: calling again is safe.
        """
        parsed = self._validated(match, queue, job_type, reason, scan_limit, after)
        return self._client.run(_scan, parsed, queue, job_type, reason, scan_limit, after, True,
                                timeout=self._scan_timeout(scan_limit))  # fmt: skip

    @staticmethod
    def _validated(match: Any, queue: str | None, job_type: str | None, reason: str | None, scan_limit: Any,
                   after: Any) -> dict[tuple[str, ...], Any]:  # fmt: skip
        parsed = validate_match(match)
        _validate_filter(queue, job_type, reason)
        if isinstance(scan_limit, bool) or not isinstance(scan_limit, int) or scan_limit < 1:
            raise InvalidMatch(f"scan_limit must be a positive int (dead letters to read), not {scan_limit!r}")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
            raise InvalidMatch(f"after must be a DLQ sequence (an int >= 0) or None, not {after!r}")
        return parsed

    def _scan_timeout(self, scan_limit: int) -> float | None:
        settings: Settings | None = getattr(self._client, "settings", None)
        if settings is None:
            return None
        return settings.retry_for + settings.request_timeout + 1.0 + scan_limit * _SCAN_SECONDS_EACH


async def _last_seq(core: Core) -> int:
    await core.ensure_dlq()
    return (await core.js.stream_info(core.topology.dlq_stream)).state.last_seq


#: the largest stream sequence JetStream has (an unsigned 64-bit number), less one: `up_to + 1` must fit.
MAX_SEQ = 2**64 - 2


def _validate_seq(name: str, seq: Any) -> None:
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ):
        raise ValueError(f"{name} must be a DLQ sequence (an int from 0 to 2**64 - 2) or None, not {seq!r}")


def _validate_filter(queue: str | None, job_type: str | None, reason: str | None) -> None:
    if queue is not None:
        jobmod.validate_queue(queue)
    if job_type is not None:
        jobmod.validate_type(job_type)
    if reason is not None:
        validate_reason(reason)
