"""The worker directory: live workers are listed, withdrawn on stop, and expire when killed."""

from __future__ import annotations

import os
import signal

import bgjob

from .conftest import python_process, wait_until

WORKER = r"""
import sys, bgjob
url, prefix = sys.argv[1:3]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, worker_ttl=2.0))
mux = bgjob.Mux()
mux.handle("noop", lambda job: bgjob.Complete())
bgjob.Worker(client, mux, queue="mail", concurrency=3).run()
"""


def test_a_running_worker_is_listed_and_withdrawn_when_it_stops(make_client, start_worker) -> None:
    client = make_client(worker_ttl=3.0)
    assert client.workers() == []
    mux = bgjob.Mux()
    mux.handle("noop", lambda job: bgjob.Complete())
    worker = start_worker(client, mux, concurrency=5)
    [info] = wait_until(client.workers, message="worker listed")
    assert (info.id, info.pid, info.queues, info.concurrency, info.version) == (
        worker.id, os.getpid(), ("default",), 5, bgjob.__version__
    )  # fmt: skip
    assert info.started_at <= info.last_beat
    for i in range(10):
        client.send_job("noop", i)
    # A loaded machine may miss a beat or two (TTL 3 s): an empty listing then is "not yet", not a failure.
    wait_until(lambda: [w.processed for w in client.workers()] == [10], timeout=10,
               message="processed count in a heartbeat")  # fmt: skip
    worker.stop()
    wait_until(lambda: client.workers() == [], timeout=10, message="worker withdrawn")


def test_a_killed_worker_disappears_within_the_ttl(nats_server, prefix, make_client) -> None:
    client = make_client()
    proc = python_process(WORKER, nats_server.url, prefix)
    try:
        [info] = wait_until(client.workers, timeout=20, message="worker listed")
        assert (info.pid, info.queues, info.concurrency) == (proc.pid, ("mail",), 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: client.workers() == [], timeout=8, message="entry expired after the 2s TTL")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_worker_is_listed_again_after_the_server_restarts(own_server, prefix) -> None:
    """Found by a new user: the directory is a memory-stored bucket, gone when the server restarts; the worker's
    cached handle then failed every heartbeat and it never showed again while it went on working."""
    client = bgjob.Client(bgjob.Settings(url=own_server.url, prefix=prefix, worker_ttl=3.0, retry_for=10.0))
    worker = bgjob.Worker(client, bgjob.Mux(), fetch_timeout=0.5)
    thread = worker.start()
    try:
        wait_until(lambda: [w.id for w in client.workers()] == [worker.id], message="the worker listed")
        own_server.restart()
        wait_until(lambda: [w.id for w in client.workers()] == [worker.id], timeout=30,
                   message="the worker listed again after the restart")  # fmt: skip
    finally:
        worker.stop()
        thread.join(timeout=30)
        client.close()


def test_workers_list_their_claims_and_groups_and_bgjob_status_shows_them(make_client, start_worker) -> None:
    from bgjob.cli import status_lines

    client = make_client()
    mux = bgjob.Mux()
    mux.handle("noop", lambda job: bgjob.Complete())
    mux.handle("report", lambda job: bgjob.Complete(), group="reports")
    plain = start_worker(make_client(), mux)
    holder = start_worker(make_client(), mux, claims=["primary", "region/eu"])
    grouped = start_worker(make_client(), mux, groups=["reports"])
    listed = wait_until(lambda: len(w := client.workers()) == 3 and w, message="three workers listed")
    assert {w.id: (w.claims, w.groups) for w in listed} == {
        plain.id: ((), ()), holder.id: (("primary", "region/eu"), ()), grouped.id: ((), ("reports",))
    }  # fmt: skip
    lines = status_lines(client)
    assert next(line for line in lines if line.startswith("WORKER")).endswith("  PLACEMENT")
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in (plain.id, holder.id,
                                                                                          grouped.id)}  # fmt: skip
    assert rows[holder.id].endswith("  claims primary,region/eu") and rows[grouped.id].endswith("  groups reports")
    assert rows[plain.id].endswith("  -")
