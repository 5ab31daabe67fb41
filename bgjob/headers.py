"""The header names bgjob writes, and keeping every header block within what JetStream accepts.

Header names are defined here and nowhere else; NATS's own names come from nats-py's `nats.js.api.Header`.
JetStream refuses a message whose header block (as nats-py encodes it: `NATS/1.0\\r\\n`, then
`Name: value\\r\\n` per header, then `\\r\\n`) is 64 KiB or more (err 10097), and any message whose header
block plus body exceeds the server's max_payload. Texts that come from outside (errors, tracebacks) are cut to
a byte budget with `cut_text` before they are written, and message ids bgjob derives from a delivery come from
`derived_msg_id`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Literal

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import Header

# -- a job, as the producer sends it --------------------------------------------------------------------------
HEADER_ID = "Bgjob-Id"
HEADER_TYPE = "Bgjob-Type"
HEADER_REQUEST_ID = "Bgjob-Request-Id"
HEADER_ENQUEUED_AT = "Bgjob-Enqueued-At"
CONTENT_TYPE = "Content-Type"
#: present (value "1") on a job sent with store_result=True.
STORE_RESULT = "Bgjob-Store-Result"
#: the ed25519 signature of a signed job (base64).
SIGNATURE = "Bgjob-Signature"
#: the name of the periodic schedule that fired the job.
SCHEDULE_NAME = "Bgjob-Schedule"
#: the arg keys the producer marked sensitive (`send_job(..., sensitive=[...])`), comma-separated: their values
#: are masked wherever the job is shown (see bgjob.redaction).
SENSITIVE_KEYS = "Bgjob-Sensitive"
#: an encrypted body's scheme and key id, `aes256gcm;<key id>[;id]` (see bgjob.encryption).
ENCRYPTION = "Bgjob-Encryption"
#: attempts a job used in earlier messages (a retry through a server-side schedule carries them forward).
ATTEMPTS_USED = "Bgjob-Attempts-Used"
#: the job's deadline (`send_job(..., deadline=)`), RFC 3339 in UTC: delivered later, it is dead-lettered unrun
#: (reason `deadline`), and never retried past it.
DEADLINE = "Bgjob-Deadline"
#: the job's own attempt limit (`send_job(..., max_attempts=)`), decimal: it wins over its handler's and worker's.
MAX_ATTEMPTS = "Bgjob-Max-Attempts"
#: the claim a placed job is for (`send_job(..., target=)`): only workers holding it run the job (bgjob.placement).
TARGET = "Bgjob-Target"
#: when a placed job must have been taken by a holder of its claim (`send_job(..., target_timeout=)`), RFC 3339 in
#: UTC: a worker of the queue dead-letters it (reason `no_target`) once it has passed with no live holder.
TARGET_UNTIL = "Bgjob-Target-Until"
#: the key of a partitioned job (`send_job(..., partition_key=)`): jobs of one key run one at a time, in order.
PARTITION_KEY = "Bgjob-Partition-Key"

# -- a request-reply handler's request and its reply (bgjob.request_reply; docs/delegated.md) ---
#: the request's attempt number (1 on the first delivery), decimal; the request also carries HEADER_ID,
#: HEADER_TYPE, HEADER_REQUEST_ID, CONTENT_TYPE and DEADLINE (there: when the worker stops waiting for the reply).
ATTEMPT = "Bgjob-Attempt"
#: the job's queue, on a request.
QUEUE = "Bgjob-Queue"
#: on a reply: run the job again after this many seconds (a decimal >= 0): `Retry(delay)`.
RETRY_AFTER = "Bgjob-Retry-After"
#: on a reply: NATS micro services' error description and code (nats.go/micro, nats.py's `nats.micro`).
SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"

# -- a dead letter: the job's own headers plus these --------------------------------------------------------
DLQ_REASON = "Bgjob-Dlq-Reason"
#: JSON-encoded str (ASCII only, one line), cut to a byte budget.
DLQ_ERROR = "Bgjob-Dlq-Error"
#: JSON-encoded str (ASCII only, one line), its end kept when cut.
DLQ_TRACEBACK = "Bgjob-Dlq-Traceback"
DLQ_ATTEMPTS = "Bgjob-Dlq-Attempts"
DLQ_FIRST_FAILURE = "Bgjob-Dlq-First-Failure"
DLQ_LAST_FAILURE = "Bgjob-Dlq-Last-Failure"
DLQ_ORIGINAL_SUBJECT = "Bgjob-Dlq-Subject"
#: carried by a job retried from the DLQ, so a second failure keeps the first failure's time.
CARRIED_FIRST_FAILURE = "Bgjob-First-Failure"
#: a workflow step's job: "<run id>/<step name>" (bgjob.workflows). Not a Bgjob-* name: those are reserved to
#: bgjob's codec and stripped from `Job.headers`, and the worker's workflow hooks read it there.
WORKFLOW_STEP = "X-Bgjob-Workflow"
DLQ_FAILURE_HEADERS = (DLQ_REASON, DLQ_ERROR, DLQ_TRACEBACK, DLQ_ATTEMPTS, DLQ_FIRST_FAILURE, DLQ_LAST_FAILURE,
                       DLQ_ORIGINAL_SUBJECT)  # fmt: skip

# -- NATS's own ------------------------------------------------------------------------------------------------
MSG_ID = Header.MSG_ID.value
#: the prefix of the headers NATS owns; bgjob never copies them from one message to another.
NATS_PREFIX = "Nats-"
#: a pull request's status (nats-py's `Header.STATUS`; the codes are `StatusCode`) and its description.
STATUS = Header.STATUS.value
DESCRIPTION = Header.DESCRIPTION.value
#: how many of a pull request's messages the server did not deliver (on a 408/409 status).
PENDING_MESSAGES = "Nats-Pending-Messages"
#: a periodic job's cron expression as the user wrote it (the server's Nats-Schedule holds the 6-field form).
CRON = "Bgjob-Cron"

# -- sizes -----------------------------------------------------------------------------------------------------
#: JetStream refuses a header block of this many bytes or more (err 10097, "header size exceeds maximum").
MAX_HEADER_BYTES = 64 * 1024

_STATUS_LINE = len(b"NATS/1.0\r\n")
_END = len(b"\r\n")
# What nats-py does to a value before sending it (nats.aio.client._HEADER_VALUE_NEWLINES).
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_SURROGATE = re.compile("[\ud800-\udfff]")
#: header names nats-py accepts (nats.aio.client._HEADER_KEY_RE).
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def without_nats_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """A copy without the headers NATS owns (Nats-Msg-Id, schedules, ...), to carry into a new message."""
    return {k: v for k, v in (headers or {}).items() if not k.startswith(NATS_PREFIX)}


def entry_size(name: str, value: str) -> int:
    """Bytes one header takes in the block as nats-py encodes it: `Name: value\\r\\n`."""
    return len(name.strip().encode()) + 2 + len(value.strip().translate(_NEWLINES).encode("utf-8", "surrogatepass")) + 2


def header_block_size(headers: Mapping[str, str] | None) -> int:
    """The size in bytes of the header block nats-py sends for `headers` (0 for None: no block at all).

    Counts the `NATS/1.0` status line, every `Name: value` line as UTF-8 and the closing blank line, after the
    stripping and newline replacement nats-py applies; names that strip to nothing are skipped, as nats-py does.
    """
    if headers is None:
        return 0
    return _STATUS_LINE + sum(entry_size(k, v) for k, v in headers.items() if k.strip()) + _END


def header_room(headers: Mapping[str, str] | None, *, body_size: int = 0, max_payload: int | None = None) -> int:
    """How many more bytes the header block of `headers` can grow by before the server refuses the message.

    Arguments: `body_size` the message body in bytes; `max_payload` the server's limit on header block plus body
    in bytes (None: only the 64 KiB header limit counts). Returns a byte count, negative when the message is
    already too large.
    """
    size = header_block_size(headers or {})
    room = MAX_HEADER_BYTES - 1 - size
    if max_payload is not None:
        room = min(room, max_payload - body_size - size)
    return room


def one_line(text: str) -> str:
    """`text` as a header value is sent: CR and LF as spaces, stripped, and lone surrogates (which UTF-8
    cannot encode) as U+FFFD."""
    return _SURROGATE.sub("\ufffd", text.translate(_NEWLINES)).strip()


def cut_marker(cut_bytes: int, keep: Literal["start", "end"] = "start") -> str:
    """The marker that replaces the cut part of a text, naming the UTF-8 size of what was cut: `…[cut 12345
    bytes]` after a kept start, `[cut 12345 bytes]…` before a kept end."""
    return f"…[cut {cut_bytes} bytes]" if keep == "start" else f"[cut {cut_bytes} bytes]…"


def cut_text(text: str, max_bytes: int, *, keep: Literal["start", "end"] = "start", as_json: bool = False) -> str:
    """A header value holding `text` that takes at most `max_bytes` bytes as sent.

    Arguments: `text` any str (newlines, quotes, non-ASCII and lone surrogates included); `max_bytes` the
    budget for the value in bytes, UTF-8 as sent; `keep` which end of a text too long to keep: its "start"
    (the marker `…[cut N bytes]` replaces the end) or its "end" (`[cut N bytes]…` replaces the start; for
    tracebacks, whose last lines matter most); `as_json` whether the value is `json.dumps(text)` (ASCII only:
    non-ASCII text, `"`, `\\` and control characters take their escaped size) rather than the text itself made
    one line (see `one_line`).

    Returns the value unchanged (`json.dumps(text)`, or `one_line(text)`) when it fits; otherwise as much of
    the kept end as fits with the marker, where N counts the UTF-8 bytes of the text that were left out. When
    not even the marker fits, the empty text. Raises ValueError when `max_bytes` is below what an empty value
    takes (2 bytes for JSON's quotes, 0 otherwise) or `keep` is neither "start" nor "end".
    """
    if keep not in ("start", "end"):
        raise ValueError(f"keep must be 'start' or 'end', got {keep!r}")
    if not as_json:
        text = one_line(text)
    encode = json.dumps if as_json else (lambda s: s)

    def size(piece: str) -> int:
        return len(encode(piece).encode("utf-8", "surrogatepass"))

    if max_bytes < size(""):
        raise ValueError(f"max_bytes must be at least {size('')}, got {max_bytes}")
    if len(text) <= max_bytes and size(text) <= max_bytes:  # every character takes at least one byte
        return encode(text)
    total = _utf8_size(text)

    def piece(kept: int) -> str:
        if keep == "start":
            head = text[:kept]
            return head + cut_marker(total - _utf8_size(head), keep)
        tail = text[len(text) - kept :]
        return cut_marker(total - _utf8_size(tail), keep) + tail

    lo, hi = 0, min(len(text), max_bytes)  # every character takes at least one byte
    if size(piece(0)) > max_bytes:
        return encode("")
    while lo < hi:  # invariant: piece(lo) fits
        mid = (lo + hi + 1) // 2
        if size(piece(mid)) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return encode(piece(lo))


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def stored_timestamp_ns(msg: Msg) -> int:
    """When the server stored a delivered JetStream message, in nanoseconds since the epoch, read exactly from
    the token of its `$JS.ACK...` reply subject (`msg.metadata.timestamp` is a float and loses nanoseconds).
    Raises nats.errors.NotJSMessageError when `msg` was not delivered by a JetStream consumer."""
    msg.metadata  # noqa: B018 - validates the reply subject (raises NotJSMessageError)
    tokens = (msg.reply or "").split(".")
    return int(tokens[7] if len(tokens) == 9 else tokens[Msg.Ack.Timestamp])


def derived_msg_id(kind: str, job_id: str, msg: Msg) -> str:
    """The `Nats-Msg-Id` for a message bgjob publishes because of delivery `msg` (a dead letter, a retry, a
    reschedule): `<kind>:<job id>:<stream>:<stream sequence>:<stored time in ns>`.

    It is the same for every redelivery of one stored message (so a crash between the publish and the ack or
    term does not publish twice within the duplicate window) and never repeats for another stored message,
    even after the stream is deleted and re-created (its sequences restart, its store times do not). `kind`
    is a short word naming what is published ("dlq", "retry", ...). Raises nats.errors.NotJSMessageError
    when `msg` was not delivered by a JetStream consumer, ValueError for an empty `kind`.
    """
    if not kind or ":" in kind:
        raise ValueError(f"kind must be a non-empty word without ':', got {kind!r}")
    meta = msg.metadata
    return f"{kind}:{job_id}:{meta.stream}:{meta.sequence.stream}:{stored_timestamp_ns(msg)}"


# -- reading a received header block --------------------------------------------------------------------------
#: what bytes.strip() strips (str.strip() strips \x1c-\x1f too).
_ASCII_SPACE = " \t\n\r\x0b\x0c"


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's `Client._parse_header_lines`, the same dict for every input, ~3x faster on an ASCII block (every
    block bgjob writes): the whole block decoded at once, not line by line. Core.connect puts it on its
    connection: the worker's event loop parses every delivery's headers, and that was a tenth of its time."""
    if not raw.isascii():  # nats-py's own parse (the class's: Core.connect replaces only its connection's)
        return NATS._parse_header_lines(raw)
    out: dict[str, str] = {}
    for line in raw.decode("ascii").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip(_ASCII_SPACE)
            if key and key.split() != [key]:  # whitespace inside a name: skipped, as nats-py does
                continue
            out[key] = value.strip(_ASCII_SPACE)
    return out
