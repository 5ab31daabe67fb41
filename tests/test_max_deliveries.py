"""`max_deliveries` never strands a job (real nats-server, real processes): the server's last delivery of a message
is never nak'ed when its dead letter fails (kept and tried again), and one whose worker was SIGKILLed holding it
is dead-lettered from the stream by another worker (the MAX_DELIVERIES advisory, or the sweep at start)."""

from __future__ import annotations

import queue
import signal
from pathlib import Path

import bgjob

from .conftest import python_process, stream_ids, wait_until


class Fates(bgjob.WorkerHooks):
    def __init__(self) -> None:
        self.fates: queue.Queue = queue.Queue()
        self.internal_errors: list[object] = []

    def on_settled(self, job, outcome, fate) -> None:
        self.fates.put((job.id, fate.kind.value, fate.reason))

    def on_internal_error(self, error) -> None:
        self.internal_errors.append(error)


def set_dlq_max_msg_size(client: bgjob.Client, size: int) -> None:
    async def update(core) -> None:
        info = await core.js.stream_info(core.topology.dlq_stream)
        config = info.config
        config.max_msg_size = size
        await core.js.update_stream(config)

    client.run(update)


def test_a_last_delivery_whose_dead_letter_fails_is_kept_and_dead_lettered_once_the_dlq_works(
    client, start_worker
) -> None:
    client.ensure_queue("default")
    client.configure_queue("default", max_deliveries=2)
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    def fails(job: bgjob.Job) -> bgjob.Result:
        ran.put(job.attempt)
        raise RuntimeError("boom")

    mux.handle("f", fails)
    hooks = Fates()
    policy = bgjob.RetryPolicy(max_attempts=10, base_delay=0.3, jitter=0)
    start_worker(client, mux, retry_policy=policy, hooks=[hooks])
    set_dlq_max_msg_size(client, 16)  # the DLQ refuses every dead letter for now
    client.send_job("f", None, job_id="strand-me")
    # attempt 1 (retry schedule), attempt 2 = the new message's 1st delivery (nak), then its 2nd: the last one
    wait_until(lambda: len(hooks.internal_errors) >= 2, timeout=30, message="the last delivery's dead letter refused")
    set_dlq_max_msg_size(client, -1)
    wait_until(lambda: client.dlq.count() == 1, timeout=30, message="the job dead-lettered once the DLQ works")
    letter = client.dlq.list()[0]
    assert (letter.id, letter.reason) == ("strand-me", "max_deliveries")
    assert stream_ids(client) == [], "nothing left in the stream"
    fates = []
    while not hooks.fates.empty():
        fates.append(hooks.fates.get())
    assert ("strand-me", "handed_back", "settle_failed") not in fates, "the last delivery was never handed back"
    assert fates[-1][1:] == ("dead_lettered", "max_deliveries")
    runs = []
    while not ran.empty():
        runs.append(ran.get())
    assert runs == [1, 2], "the last delivery never ran"


HANGING_WORKER = r"""
import asyncio, sys
import bgjob
from bgjob.worker import Worker, settle

url, prefix, marker = sys.argv[1:4]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=1.0))
mux = bgjob.Mux()
mux.handle("complete", lambda job: open(marker + ".ran", "w").close() or bgjob.Complete())

async def hang(*args, **kwargs):  # holding the last delivery, dead-lettering it, when the SIGKILL comes
    open(marker, "w").close()
    await asyncio.Event().wait()

settle.move_to_dlq = hang
Worker(client, mux, fetch_timeout=0.5).run()
"""


def take_first_delivery(client: bgjob.Client) -> None:
    """Delivery 1 of the queue's next message, never acked (a worker that died with it)."""

    async def take(core) -> None:
        await core.ensure_consumer("default")
        sub = await core.js.pull_subscribe_bind(core.topology.consumer("default"),
                                                core.topology.queue_stream("default"))  # fmt: skip
        messages = await sub.fetch(1, timeout=5)
        assert messages[0].metadata.num_delivered == 1
        await sub.unsubscribe()

    client.run(take)


def test_a_worker_sigkilled_holding_a_last_delivery_strands_nothing(make_client, prefix, nats_server, tmp_path,
                                                                    start_worker) -> None:  # fmt: skip
    client = make_client(ack_wait=1.0)
    client.ensure_queue("default")
    client.run(lambda core: core.ensure_consumer("default"))
    client.configure_queue("default", max_deliveries=2)
    client.send_job("complete", None, job_id="k1")
    take_first_delivery(client)
    marker = tmp_path / "holding"
    proc = python_process(HANGING_WORKER, nats_server.url, prefix, str(marker))
    try:
        wait_until(marker.exists, timeout=30, message="the worker holding the last delivery")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("complete", lambda job: ran.put(job.id) or bgjob.Complete())
    start_worker(client, mux)
    wait_until(lambda: client.dlq.count() == 1, timeout=30, message="the stranded job dead-lettered")
    letter = client.dlq.list()[0]
    assert (letter.id, letter.reason) == ("k1", "max_deliveries")
    assert stream_ids(client) == []
    assert ran.empty() and not Path(str(marker) + ".ran").exists(), "its last delivery was not run"
