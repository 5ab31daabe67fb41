"""Dead letters always fit what JetStream accepts, and their ids never collide (issue 11, faults 4 and 6).

Every header bgjob writes is bounded in bytes as sent: JetStream refuses a header block of 64 KiB or more
(err 10097) and a message over max_payload. A long error or traceback is cut with a visible marker; a dead
letter the server still refuses is replaced by a minimal one, so a failed job always reaches the DLQ. A dead
letter's Nats-Msg-Id is derived from the stored message (job id, stream, sequence and store time in ns): the
same for a redelivery, never the same for another message, even after its stream was re-created.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import nats.errors
import nats.js.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

import bgjob
from bgjob import headers as hdr
from bgjob.codec import DLQ_HEADROOM
from bgjob.dlq import MAX_ERROR_BYTES, MAX_TRACEBACK_BYTES, MINIMAL_ERROR_BYTES, move_to_dlq
from bgjob.errors import DeadLetterRefused

from .conftest import wait_until

ONCE = bgjob.RetryPolicy(max_attempts=1, base_delay=0.05, jitter=0)


def utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def kept_start(cut: str, original: str) -> str:
    """The part of `original` a value cut with keep="start" kept; checks the marker counts what was left out."""
    kept, marker, rest = cut.rpartition("…[cut ")
    assert marker, f"no cut marker in {cut[-80:]!r}"
    assert original.startswith(kept) and rest == f"{utf8(original) - utf8(kept)} bytes]"
    return kept


def kept_end(cut: str, original: str) -> str:
    """The part of `original` a value cut with keep="end" kept; checks the marker counts what was left out."""
    assert cut.startswith("[cut "), f"no cut marker in {cut[:80]!r}"
    count, _, kept = cut[len("[cut ") :].partition(" bytes]…")
    assert original.endswith(kept) and int(count) == utf8(original) - utf8(kept)
    return kept


def settled(client: bgjob.Client) -> bool:
    """Nothing left in the default queue: every job was acked or termed, none waits for redelivery."""
    stats = client.queue_stats()
    return stats.pending == 0 and stats.in_flight == 0


def counted(mux: bgjob.Mux, job_type: str, outcome: Callable[[bgjob.Job], bgjob.Result]) -> list[int]:
    """Register `outcome` for `job_type`; the returned list gets the attempt of every run."""
    runs: list[int] = []

    def handler(job: bgjob.Job) -> bgjob.Result:
        runs.append(job.attempt)
        return outcome(job)

    mux.handle(job_type, handler)
    return runs


async def _max_payload(core) -> int:
    return core.max_payload


# -- the quoted input, end to end ------------------------------------------------------------------------------


def test_a_40k_error_with_max_attempts_1_is_dead_lettered_once_with_its_error_cut(client, start_worker) -> None:
    def fail(job: bgjob.Job) -> bgjob.Result:
        raise ValueError("x" * 40_000)

    mux = bgjob.Mux()
    runs = counted(mux, "fail", fail)
    start_worker(client, mux, retry_policy=ONCE)
    job_id = client.send_job("fail", None)
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    wait_until(lambda: settled(client), message="the job termed")
    assert runs == [1]
    entry = client.dlq.get(job_id)
    assert entry.reason == "max_attempts" and entry.attempts == 1
    assert kept_start(entry.error, "ValueError: " + "x" * 40_000).startswith("ValueError: xxx")
    assert len(json.dumps(entry.error)) <= MAX_ERROR_BYTES
    assert entry.traceback is not None and entry.traceback.startswith("[cut ") and "x" * 1000 in entry.traceback
    assert len(json.dumps(entry.traceback)) <= MAX_TRACEBACK_BYTES


# -- the kind: every text bgjob writes into headers ------------------------------------------------------------

ERRORS = {
    "1 MB of ASCII": "e" * 1_000_000,
    "non-ASCII, 12 bytes a character in JSON": "é😀" * 60_000,
    "quotes and backslashes, doubled in JSON": '"\\' * 40_000,
    "control characters and CRLF": "\r\n\t\x00\x1b" * 20_000,
    "lone surrogates": "\ud800" * 30_000,
}


@pytest.mark.parametrize("error", ERRORS.values(), ids=ERRORS.keys())
def test_a_huge_move_to_dlq_error_is_cut_to_its_start(client, start_worker, error: str) -> None:
    mux = bgjob.Mux()
    runs = counted(mux, "fail", lambda job: bgjob.MoveToDlq(error))
    start_worker(client, mux)
    job_id = client.send_job("fail", None)
    entry = wait_until(lambda: client.dlq.list(), message="the dead letter")[0]
    assert entry.id == job_id and entry.reason == "handler"
    kept = kept_start(entry.error, error)
    assert len(json.dumps(entry.error)) <= MAX_ERROR_BYTES and len(kept) > 100
    wait_until(lambda: settled(client), message="the job termed")
    assert runs == [1]


def test_a_short_error_with_newlines_and_non_ascii_is_kept_exactly(client, start_worker) -> None:
    error = 'line 1\r\nline 2: "quoted" \\ é 😀 \x00'
    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq(error, traceback="Traceback\r\n  😀\n"))
    start_worker(client, mux)
    job_id = client.send_job("fail", None)
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    entry = client.dlq.get(job_id)
    assert entry.error == error and entry.traceback == "Traceback\r\n  😀\n"


def test_a_huge_traceback_with_non_bmp_characters_is_cut_to_its_end(client, start_worker) -> None:
    trace = "Traceback (most recent call last):\n" + "  😀 frame\n" * 100_000 + "ValueError: the last line\n"
    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq("boom", traceback=trace))
    start_worker(client, mux)
    job_id = client.send_job("fail", None)
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    entry = client.dlq.get(job_id)
    assert entry.error == "boom"
    assert entry.traceback is not None and kept_end(entry.traceback, trace).endswith("ValueError: the last line\n")
    assert len(json.dumps(entry.traceback)) <= MAX_TRACEBACK_BYTES


def largest_accepted(send: Callable[[int], str], start: int, step: int) -> tuple[int, str]:
    """The largest size (start, start - step, ...) that `send(size)` accepts, and the job id it returned."""
    size = start
    while True:
        try:
            return size, send(size)
        except bgjob.InvalidJob:
            size -= step
            assert size > 0


def test_a_job_with_custom_headers_at_the_limit_is_dead_lettered_with_them(client, start_worker) -> None:
    def send(size: int) -> str:
        return client.send_job("fail", None, headers={"X-Big": "h" * size, "X-Small": "kept"})

    size, job_id = largest_accepted(send, hdr.MAX_HEADER_BYTES - DLQ_HEADROOM, 16)
    assert size > hdr.MAX_HEADER_BYTES - DLQ_HEADROOM - 512

    def fail(job: bgjob.Job) -> bgjob.Result:
        raise ValueError("y" * 40_000)

    mux = bgjob.Mux()
    runs = counted(mux, "fail", fail)
    start_worker(client, mux, retry_policy=ONCE)
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    entry = client.dlq.get(job_id)
    assert entry.headers["X-Big"] == "h" * size and entry.headers["X-Small"] == "kept"
    assert kept_start(entry.error, "ValueError: " + "y" * 40_000).startswith("ValueError: yyy")
    wait_until(lambda: settled(client), message="the job termed")
    assert runs == [1]


CUSTOM_HEADERS = {
    "one ASCII value over 64 KiB": {"X-Big": "a" * (64 * 1024)},
    "one non-ASCII value, 30k characters but 60 KiB as UTF-8": {"X-Big": "é" * 30_000},
    "a hundred values of 600 bytes": {f"X-H{i}": "b" * 600 for i in range(100)},
}


@pytest.mark.parametrize("headers", CUSTOM_HEADERS.values(), ids=CUSTOM_HEADERS.keys())
def test_custom_headers_over_the_limit_are_refused_at_send(client, headers: dict[str, str]) -> None:
    with pytest.raises(bgjob.InvalidJob, match=r"job headers are \d+ bytes as sent"):
        client.send_job("report", None, headers=headers)
    with pytest.raises(bgjob.InvalidJob, match=r"job headers are \d+ bytes as sent"):
        client.send_jobs([bgjob.JobSpec("report", None, headers=headers)])
    assert client.queue_stats().pending == 0


def test_a_body_near_max_payload_is_dead_lettered_whole_with_its_error_cut(client, start_worker) -> None:
    max_payload = client.run(_max_payload)
    size, job_id = largest_accepted(lambda n: client.send_job("fail", b"\x00" * n), max_payload - DLQ_HEADROOM, 64)
    assert size > max_payload - DLQ_HEADROOM - 1024

    def fail(job: bgjob.Job) -> bgjob.Result:
        raise ValueError("z" * 40_000)

    mux = bgjob.Mux()
    runs = counted(mux, "fail", fail)
    start_worker(client, mux, retry_policy=ONCE)
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    entry = client.dlq.get(job_id)
    assert entry.body == b"\x00" * size and entry.reason == "max_attempts"
    assert kept_start(entry.error, "ValueError: " + "z" * 40_000).startswith("ValueError: zzz")
    wait_until(lambda: settled(client), message="the job termed")
    assert runs == [1]


# -- the minimal dead letter -----------------------------------------------------------------------------------


async def _publish_by_hand(core, job_type: str, body: bytes, headers: dict[str, str]) -> None:
    """Publish a job past send_job's checks, as another program (or an older bgjob) might have."""
    await core.ensure_queue("default")
    await core.js.publish(core.topology.job_subject("default", job_type), body, headers=headers)


def test_a_job_whose_own_headers_fill_the_limit_is_dead_lettered_minimal(client, start_worker) -> None:
    headers = {hdr.HEADER_ID: "by-hand", hdr.HEADER_TYPE: "fail", hdr.CONTENT_TYPE: "application/json", "X-Huge": ""}
    headers["X-Huge"] = "q" * (hdr.MAX_HEADER_BYTES - 100 - hdr.header_block_size(headers))  # no room for the error
    client.run(_publish_by_hand, "fail", b'{"n": 1}', headers)
    mux = bgjob.Mux()
    runs = counted(mux, "fail", lambda job: bgjob.MoveToDlq("e" * 5000))
    start_worker(client, mux)
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    entry = client.dlq.get("by-hand")
    assert entry.type == "fail" and entry.reason == "handler" and entry.arg == {"n": 1}
    assert "X-Huge" not in entry.headers and entry.headers[hdr.CONTENT_TYPE] == "application/json"
    assert "minimal dead letter: its body" in entry.error and "leave no room for the error" in entry.error
    assert entry.error.startswith("eee") and len(json.dumps(entry.error)) <= MINIMAL_ERROR_BYTES
    wait_until(lambda: settled(client), message="the job termed")
    assert runs == [1]


async def _limit_dlq_messages(core, max_msg_size: int) -> None:
    """Make the DLQ stream refuse messages over `max_msg_size` bytes (as an operator's limit would)."""
    await core.ensure_dlq()
    info = await core.js.stream_info(core.topology.dlq_stream)
    config: StreamConfig = info.config
    config.max_msg_size = max_msg_size
    await core.js.update_stream(config)


def test_a_dead_letter_the_server_refuses_is_replaced_by_a_minimal_one(client, start_worker) -> None:
    client.run(_limit_dlq_messages, 4096)
    mux = bgjob.Mux()
    runs = counted(mux, "fail", lambda job: bgjob.MoveToDlq("r" * 20_000, traceback="t" * 20_000))
    start_worker(client, mux)
    job_id = client.send_job("fail", {"keep": "me"}, headers={"X-Custom": "c" * 3000})
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    entry = client.dlq.get(job_id)
    assert entry.arg == {"keep": "me"} and entry.reason == "handler" and entry.traceback is None
    assert entry.error.startswith("rrr") and "minimal dead letter: the server refused the full one" in entry.error
    assert "err_code" in entry.error and entry.enqueued_at is not None
    wait_until(lambda: settled(client), message="the job termed")
    assert runs == [1]


async def _fetch_one(core, queue: str = "default") -> Msg:
    """The next delivery of the queue's stream to a consumer of this test's own (no worker runs here)."""
    stream = core.topology.queue_stream(queue)
    config = ConsumerConfig(durable_name="by-hand", filter_subject=core.topology.job_filter(queue),
                            ack_policy=AckPolicy.EXPLICIT)  # fmt: skip
    await core.js.add_consumer(stream, config)  # the same config again: accepted as it is
    sub = await core.js.pull_subscribe_bind(consumer="by-hand", stream=stream)
    [msg] = await sub.fetch(1, timeout=5)
    return msg


def test_move_to_dlq_raises_dead_letter_refused_when_even_the_minimal_one_is_refused(client) -> None:
    job_id = client.send_job("fail", "x" * 200)
    client.run(_limit_dlq_messages, 256)

    async def move(core) -> None:
        msg = await _fetch_one(core)
        try:
            await move_to_dlq(core, msg, queue="default", job_id=job_id, job_type="fail", reason="handler",
                              error="boom", traceback=None, attempts=1)  # fmt: skip
        finally:
            await msg.nak()

    with pytest.raises(DeadLetterRefused, match=r"minimal dead letter of job .*\(err_code \d+\)") as refused:
        client.run(move)
    assert refused.value.err_code and refused.value.description
    assert isinstance(refused.value, bgjob.BgjobError)
    assert client.dlq.count() == 0


# -- fault 6: dead-letter ids never collide ---------------------------------------------------------------------


async def _delete_queue_stream(core, queue: str = "default") -> None:
    await core.js.delete_stream(core.topology.queue_stream(queue))


def test_a_job_dead_lettered_after_its_stream_was_recreated_is_not_dropped_as_a_duplicate(
    client, make_client, start_worker
) -> None:
    mux = bgjob.Mux()
    runs = counted(mux, "fail", lambda job: bgjob.MoveToDlq(f"failed {job.arg}"))
    first = bgjob.Worker(client, mux, fetch_timeout=0.5)
    thread: threading.Thread = first.start()
    client.send_job("fail", 1, job_id="report-42")
    wait_until(lambda: client.dlq.count() == 1, message="the first dead letter")
    first.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()

    client.run(_delete_queue_stream)  # within the duplicate window: the new stream starts again at sequence 1
    again = make_client()
    start_worker(again, mux)
    again.send_job("fail", 2, job_id="report-42")
    wait_until(lambda: client.dlq.count() == 2, message="the second dead letter")
    assert sorted(entry.arg for entry in client.dlq.list()) == [1, 2]
    assert runs == [1, 1]


def test_moving_one_stored_message_twice_stores_one_dead_letter(client) -> None:
    job_id = client.send_job("fail", "once")

    async def crash_between_publish_and_term(core) -> tuple[str, str]:
        msg = await _fetch_one(core)
        await move_to_dlq(core, msg, queue="default", job_id=job_id, job_type="fail", reason="handler",
                          error="boom", traceback=None, attempts=1)  # fmt: skip
        await msg.nak()  # the worker died before its term: JetStream delivers the job again
        redelivered = await _fetch_one(core)
        assert redelivered.metadata.num_delivered == 2
        await move_to_dlq(core, redelivered, queue="default", job_id=job_id, job_type="fail", reason="handler",
                          error="boom again", traceback=None, attempts=2)  # fmt: skip
        await redelivered.term()
        return hdr.derived_msg_id("dlq", job_id, msg), hdr.derived_msg_id("dlq", job_id, redelivered)

    first_id, second_id = client.run(crash_between_publish_and_term)
    assert first_id == second_id
    assert client.dlq.count() == 1 and client.dlq.get(job_id).error == "boom"


# -- the helpers, without a server -----------------------------------------------------------------------------


def delivery(reply: str) -> Msg:
    return Msg(_client=None, subject="bgjob.default.job.fail", reply=reply)  # type: ignore[arg-type]


def test_derived_msg_id_is_the_same_for_a_redelivery_and_differs_for_another_stored_message() -> None:
    first = delivery("$JS.ACK.BGJOB_DEFAULT.workers.1.1.1.1795990488294830755.0")
    redelivered = delivery("$JS.ACK.BGJOB_DEFAULT.workers.2.1.7.1795990488294830755.3")
    recreated = delivery("$JS.ACK.BGJOB_DEFAULT.workers.1.1.1.1795990499000000001.0")
    with_domain = delivery("$JS.ACK.hub.ACC.BGJOB_DEFAULT.workers.1.1.1.1795990488294830755.0.r4nd0m")
    ids = [hdr.derived_msg_id("dlq", "job-1", m) for m in (first, redelivered, recreated, with_domain)]
    assert ids[0] == ids[1] == ids[3] == "dlq:job-1:BGJOB_DEFAULT:1:1795990488294830755"
    assert ids[2] != ids[0]
    assert hdr.derived_msg_id("retry", "job-1", first) != ids[0]
    assert hdr.derived_msg_id("dlq", "job-2", first) != ids[0]
    assert hdr.stored_timestamp_ns(first) == 1795990488294830755


def test_derived_msg_id_refuses_a_message_not_delivered_by_jetstream() -> None:
    with pytest.raises(nats.errors.NotJSMessageError):
        hdr.derived_msg_id("dlq", "job-1", delivery("_INBOX.abc"))
    with pytest.raises(ValueError, match="kind"):
        hdr.derived_msg_id("", "job-1", delivery("$JS.ACK.S.c.1.1.1.1.0"))


#: any text, lone surrogates included, and text dense in what JSON escapes or UTF-8 widens.
TEXT = st.text(st.characters(exclude_categories=()), max_size=300) | st.text(
    st.sampled_from('x"\\\r\n\x00é😀\ud800 '), max_size=300
)


@given(text=TEXT, max_bytes=st.integers(min_value=2, max_value=400), keep=st.sampled_from(["start", "end"]),
       as_json=st.booleans())  # fmt: skip
def test_cut_text_never_exceeds_its_bound_and_keeps_one_end(text: str, max_bytes: int, keep: str,
                                                              as_json: bool) -> None:  # fmt: skip
    value = hdr.cut_text(text, max_bytes, keep=keep, as_json=as_json)  # type: ignore[arg-type]
    assert hdr.entry_size("X", value) - len("X: \r\n") <= max_bytes
    assert "\r" not in value and "\n" not in value and value == value.strip()
    if as_json:
        assert value.isascii()
        value = json.loads(value)
        original = text
    else:
        value.encode()  # sendable: no lone surrogates
        original = hdr.one_line(text)
    if value == original:
        return
    if value:  # empty only when not even the marker fits
        (kept_start if keep == "start" else kept_end)(value, original)


@given(text=TEXT, as_json=st.booleans())
def test_a_text_that_fits_is_unchanged(text: str, as_json: bool) -> None:
    whole = json.dumps(text) if as_json else hdr.one_line(text)
    size = len(whole.encode("utf-8", "surrogatepass"))
    assert hdr.cut_text(text, max(size, 2), as_json=as_json) == whole


def test_cut_text_counts_json_escapes_and_utf8_bytes() -> None:
    assert hdr.cut_text('"\\', 6, as_json=True) == r'"\"\\"'
    assert hdr.cut_text("é", 8, as_json=True) == r'"\u00e9"' and hdr.cut_text("é", 2) == "é"
    assert hdr.cut_text("😀" * 10, 30) == "😀" * 3 + "…[cut 28 bytes]"  # 4 bytes each in UTF-8
    emoji = r"\ud83d\ude00"  # 12 bytes in JSON
    assert hdr.cut_text("😀" * 10, 60, keep="end", as_json=True) == '"[cut 28 bytes]\\u2026' + emoji * 3 + '"'
    assert hdr.cut_text("abc", 2) == ""  # not even the marker fits
    with pytest.raises(ValueError, match="max_bytes"):
        hdr.cut_text("abc", 1, as_json=True)


def test_header_block_size_is_what_the_server_counts(client) -> None:
    """A block of MAX_HEADER_BYTES - 1 bytes (as header_block_size counts it) is stored, one more is refused."""

    async def publish(core, size: int) -> object:
        headers = {"X-Id": "fill", "X-Pad": ""}
        pad = size - hdr.header_block_size(headers)
        headers["X-Pad"] = "é" * (pad // 2) + "p" * (pad % 2)  # é: 2 bytes in UTF-8
        assert hdr.header_block_size(headers) == size
        await core.ensure_queue("default")
        return await core.js.publish(core.topology.job_subject("default", "fill"), b"", headers=headers)

    assert client.run(publish, hdr.MAX_HEADER_BYTES - 1).seq
    with pytest.raises(bgjob.ServerRefused) as refused:  # client.run turns nats-py's BadRequestError into it
        client.run(publish, hdr.MAX_HEADER_BYTES)
    assert refused.value.err_code == 10097
    assert hdr.header_room({"X-Fill": "x"}) == hdr.MAX_HEADER_BYTES - 1 - hdr.header_block_size({"X-Fill": "x"})
