"""Scenario: partitions. What per-key ordering costs (bgjob.placement, from dagnats), in one run: the same jobs
(a handler that works 1 ms) drained by 4 workers (concurrency 4 each, one client each) from a backlog, sent
without a partition key (any order, up to 16 at once) and with one of 10 keys (`partitioned=True`: one at a time
per key, in send order; keys in parallel, at most one per partition); the rate in jobs/s and the ratio
partitioned/unpartitioned."""

from __future__ import annotations

import threading
import time

import bgjob
from bgjob.topology import partition_of

from ..env import Context
from ..stats import Measurement, Row, combine
from .common import Plan, log

SCENARIO = "partitions"
KEYS = 10
WORKERS = 4
CONCURRENCY = 4
WORK_SECONDS = 0.001


def run(ctx: Context, plan: Plan) -> list[Row]:
    jobs = 500 if plan.quick else 3000
    reps: dict[str, list[Measurement]] = {"plain": [], "partitioned": []}
    for rep in range(plan.reps):
        log(f"partitions: repetition {rep + 1}/{plan.reps}")
        for case in ("plain", "partitioned"):  # alternated, so that drift hits both alike
            reps[case].append(_drain(ctx, jobs, partitioned=case == "partitioned"))
    plain, partitioned = combine(reps["plain"]), combine(reps["partitioned"])
    used = len({partition_of(f"key-{k}") for k in range(KEYS)})
    base = f"{jobs} jobs of 1 ms, {WORKERS} workers x concurrency {CONCURRENCY}, no partition key"
    ratio = (partitioned.rate or 0) / (plain.rate or 1)
    case = f"{jobs} jobs of 1 ms over {KEYS} partition keys ({used} partitions), same workers"
    note = f"{ratio:.2f}x the unpartitioned rate; per-key order kept"
    return [Row(SCENARIO, base, "bgjob", plain, note="baseline"),
            Row(SCENARIO, case, "bgjob", partitioned, base, ratio, note)]  # fmt: skip


def _drain(ctx: Context, jobs: int, *, partitioned: bool) -> Measurement:
    """Send `jobs` jobs to a fresh queue, then time `WORKERS` workers draining them (jobs/s)."""
    queue = ctx.queue("part" if partitioned else "plain")
    done = threading.Semaphore(0)
    order: dict[int, list[int]] = {}  # key -> the n of each job run for it, in run order
    order_lock = threading.Lock()

    def work(job: bgjob.Job) -> bgjob.Result:
        time.sleep(WORK_SECONDS)
        n = job.arg["n"]
        with order_lock:
            order.setdefault(n % KEYS, []).append(n)
        done.release()
        return bgjob.Complete()

    mux = bgjob.Mux()
    mux.handle("bench.ordered", work, partitioned=partitioned)
    settings = bgjob.Settings(url=ctx.nats_url, prefix=ctx.prefix)
    producer = bgjob.Client(settings).connect()
    producer.send_jobs([bgjob.JobSpec("bench.ordered", {"n": n}, queue=queue,
                                      partition_key=f"key-{n % KEYS}" if partitioned else None)
                        for n in range(jobs)])  # fmt: skip
    clients = [bgjob.Client(settings).connect() for _ in range(WORKERS)]
    workers = [bgjob.Worker(c, mux, queue=queue, concurrency=CONCURRENCY, fetch_timeout=0.5) for c in clients]
    start = time.perf_counter()
    threads = [w.start() for w in workers]
    deadline = time.monotonic() + 120
    for ran in range(jobs):
        if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"partitions: only {ran} of {jobs} jobs ran within 120 s")
    elapsed = time.perf_counter() - start
    for w in workers:
        w.stop()
    for t in threads:
        t.join(30)
    stream = producer._ensure()[1].topology.queue_stream(queue)

    async def delete(core: object) -> None:
        await core.js.delete_stream(stream)  # type: ignore[attr-defined]

    producer.run(delete)
    for c in [producer, *clients]:
        c.close()
    if partitioned:  # the rate only counts if the order it pays for was kept
        for key, ran_order in order.items():
            if ran_order != sorted(ran_order):
                raise RuntimeError(f"partitions: key-{key} ran out of send order")
    return Measurement(rate=jobs / elapsed)
