"""`bgjob demo`: an embedded nats-server, a worker and one job per kind of Result, outcomes printed."""

from __future__ import annotations

import queue
import time
from datetime import timedelta

import bgjob


def main() -> int:
    events: queue.Queue[str] = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("report")
    def report(job: bgjob.Job) -> bgjob.Result:
        events.put(f"report for user {job.arg['user']}: done -> Complete()")
        return bgjob.Complete()

    @mux.handler("flaky")
    def flaky(job: bgjob.Job) -> bgjob.Result:
        if job.attempt < 3:
            events.put(f"flaky attempt {job.attempt}: failed -> Retry(200ms)")
            return bgjob.Retry(timedelta(milliseconds=200))
        events.put(f"flaky attempt {job.attempt}: worked -> Complete()")
        return bgjob.Complete()

    @mux.handler("countdown")
    def countdown(job: bgjob.Job) -> bgjob.Result:
        n = job.arg["n"]
        if n == 0:
            events.put("countdown 0: liftoff -> Complete()")
            return bgjob.Complete()
        events.put(f"countdown {n} -> Reschedule(ByAfterTime(300ms), arg={{'n': {n - 1}}})")
        return bgjob.Reschedule(bgjob.ByAfterTime(timedelta(milliseconds=300)), arg={"n": n - 1})

    @mux.handler("charge")
    def charge(job: bgjob.Job) -> bgjob.Result:
        events.put(f"charge {job.arg}: card declined -> MoveToDlq(...)")
        return bgjob.MoveToDlq(ValueError("card declined"))

    print("starting (or reusing) the embedded nats-server ...")
    client = bgjob.Client(bgjob.Settings.from_env(prefix="bgjobdemo")).connect()
    print(f"connected to {client.url}")
    client.dlq.purge()
    worker = bgjob.Worker(client, mux, concurrency=4, grace_period=5)
    thread = worker.start()
    started = time.monotonic()
    ids = [
        client.send_job("report", {"user": 7}),
        client.send_job("flaky", None),
        client.send_job("countdown", {"n": 2}),
        client.send_job("charge", {"amount": 42}),
        client.send_job("report", {"user": 8}, delay=timedelta(seconds=1)),
    ]
    print(f"sent {len(ids)} jobs (one delayed by 1s)")
    for _ in range(9):  # one line per handler call the jobs above make
        try:
            event = events.get(timeout=15)
            print(f"  {time.monotonic() - started:5.2f}s  {event}")
        except queue.Empty:
            print("  (timed out waiting for the worker)")
            break
    for entry in client.dlq.list():
        print(f"dead letter: {entry.type} {entry.arg} reason={entry.reason} error={entry.error!r}")
    stats = client.queue_stats()
    print(f"queue 'default': pending={stats.pending} in-flight={stats.in_flight} dlq={stats.dlq}")
    worker.stop()
    thread.join()
    client.close()
    print("the embedded nats-server keeps running for your next run; `bgjob server --stop` stops it")
    return 0
