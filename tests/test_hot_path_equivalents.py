"""The worker's hot path uses faster equivalents of some general code; they must give the same results."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, MsgAlreadyAckdError, NotJSMessageError
from nats.js.api import ConsumerConfig

from bgjob.codec import decode_job
from bgjob.headers import parse_header_lines
from bgjob.hooks import HookSet, WorkerHooks, register_hooks, unregister_hooks
from bgjob.worker.dispatch import ack_metadata
from bgjob.worker.settle import ack_all


def test_parse_header_lines_gives_what_nats_py_gives_for_any_block() -> None:
    rnd = random.Random(21)
    pieces = [b"a", b"B", b":", b" ", b"\t", b"\r\n", b"\x1c", b"\xff", b"\xc3\xa9", b"-", b"\x0b", b"\n", b"\r"]
    blocks = [b"Nats-Msg-Id: 1\r\nBgjob-Type: noop\r\nContent-Type: application/json\r\n\r\n", b"", b"\r\n"]
    blocks += [b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 14))) for _ in range(20000)]
    for block in blocks:
        assert parse_header_lines(block) == NATS._parse_header_lines(block), block


class _Starts(WorkerHooks):
    def __init__(self) -> None:
        self.started: list[str] = []

    def on_job_start(self, job) -> None:  # type: ignore[no-untyped-def]
        self.started.append(job)


def test_hookset_calls_hooks_registered_or_unregistered_after_its_first_call() -> None:
    own, late = _Starts(), _Starts()
    hooks = HookSet([own, WorkerHooks()])
    hooks.call("on_job_start", "a")
    register_hooks(late)
    try:
        hooks.call("on_job_start", "b")
    finally:
        unregister_hooks(late)
    hooks.call("on_job_start", "c")
    hooks.call("on_job_end", "d", None)  # nobody overrides it: nothing is called, nothing fails
    assert own.started == ["a", "b", "c"] and late.started == ["b"]


def test_hookset_calls_a_hook_method_set_on_the_instance() -> None:
    seen: list[str] = []
    plain = WorkerHooks()
    plain.on_job_start = seen.append  # type: ignore[method-assign]
    HookSet([plain]).call("on_job_start", "x")
    assert seen == ["x"]


def test_ack_metadata_is_what_nats_py_reads_from_the_ack_subject() -> None:
    for reply in ("$JS.ACK.BGJOB_Q.bgjob.3.123456.99.1732970000123456789.5000",
                  "$JS.ACK.hub.ACCHASH.S.C.1.10.5.1732970000123456789.7.x",
                  "$JS.ACK.hub.ACCHASH.S.C.1.10.5.1732970000123456789.7"):  # fmt: skip
        mine, theirs = ack_metadata(reply), Msg.Metadata._from_reply(reply)
        assert mine == theirs and repr(mine) == repr(theirs) and hash(mine) == hash(theirs)
    with pytest.raises(NotJSMessageError):
        ack_metadata("_INBOX.abc")


def test_decode_job_makes_the_job_that_jobs_init_makes() -> None:
    headers = {"Bgjob-Id": "j1", "Bgjob-Type": "t", "Content-Type": "application/json",
               "Bgjob-Enqueued-At": "2026-11-30T15:04:31.123456Z", "X-Tenant": "7"}  # fmt: skip
    msg = Msg(_client=None, subject="bgjob.q.job.t", reply="$JS.ACK.S.C.1.10.5.1732970000123456789.7",  # type: ignore[arg-type]
              data=b'{"n": 1}', headers=headers)  # fmt: skip
    job = decode_job(msg, "q", "t", "j1", 2, 5, heartbeat=print)
    again = dataclasses.replace(job)  # through Job.__init__: fails on a field the fast path left out
    assert vars(job) == vars(again) and job == again and repr(job) == repr(again)
    assert job.arg == {"n": 1} and job.headers == {"X-Tenant": "7"} and job.attempt == 2 and job.max_attempts == 5


def test_ack_all_acks_every_message_as_msg_ack_does(nats_server) -> None:
    """The worker's batched ack (one buffer write for many deliveries) leaves the consumer as Msg.ack does: every
    message acked, none pending or redelivered; each one counts as acked in nats-py too."""

    async def check() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        stream = f"ACKALL{uuid.uuid4().hex[:8].upper()}"
        await js.add_stream(name=stream, subjects=[f"{stream}.jobs"])
        for i in range(7):
            await js.publish(f"{stream}.jobs", str(i).encode())
        sub = await js.pull_subscribe(f"{stream}.jobs", durable="w", config=ConsumerConfig(ack_wait=30))
        msgs = await sub.fetch(7, timeout=5)
        await ack_all(nc, msgs[:6])  # several at once: one write
        await ack_all(nc, msgs[6:])  # one: through Msg.ack
        await nc.flush()
        info = await js.consumer_info(stream, "w")
        assert (info.num_ack_pending, info.num_pending, info.ack_floor.stream_seq) == (0, 0, 7)
        with pytest.raises(MsgAlreadyAckdError):
            await msgs[0].ack()
        await js.publish(f"{stream}.jobs", b"late")
        late = await sub.fetch(2, timeout=5)
        await nc.close()
        with pytest.raises(ConnectionClosedError):  # nothing acked: redelivered after ack_wait, as with Msg.ack
            await ack_all(nc, late + late)
        assert [m.data for m in late] == [b"late"]  # nothing earlier came back

    asyncio.run(check())
