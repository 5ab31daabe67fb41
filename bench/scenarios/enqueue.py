"""Scenario 1: enqueue. `send_job` from 1, 8 and 64 threads, `send_job` with `unique_for` and `send_jobs`, against
raw nats-py publishing (and `unique_for` against a plain `send_job` of the same run)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from ..env import Context
from ..stats import Measurement, Row, combine
from ..systems import load_system
from .common import Plan, log, send_from_threads

SCENARIO = "enqueue"
THREADS = (1, 8, 64)
UNIQUE_CASE = "send_job with unique_for, 1 thread"


def raw_publish(url: str, n_sequential: int, n_pipelined: int) -> tuple[Measurement, Measurement]:
    """Plain asyncio nats-py: `await js.publish` one after another, and `publish_async` pipelined."""

    async def run() -> tuple[Measurement, Measurement]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        name = "RAWPUB_" + uuid.uuid4().hex[:8].upper()
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[f"{name.lower()}.>"],
                storage=StorageType.FILE,
                retention=RetentionPolicy.WORK_QUEUE,
            )
        )
        subject = f"{name.lower()}.job"
        latencies = []
        clock = time.perf_counter
        start = clock()
        for i in range(n_sequential):
            t = clock()
            await js.publish(subject, json.dumps({"i": i}).encode())
            latencies.append(clock() - t)
        sequential = Measurement.of_latencies(latencies, rate=n_sequential / (clock() - start))
        start = clock()
        for i in range(n_pipelined):
            await js.publish_async(subject, json.dumps({"i": i}).encode())
        await js.publish_async_completed()
        pipelined = Measurement(rate=n_pipelined / (clock() - start))
        await js.delete_stream(name)
        await nc.close()
        return sequential, pipelined

    return asyncio.run(run())


def run(ctx: Context, plan: Plan) -> list[Row]:
    bg = load_system("bgjob", ctx)
    raw = load_system("nats-py", ctx)
    reps: dict[tuple[str, str], list[Measurement]] = {}

    def record(case: str, system: str, m: Measurement) -> None:
        reps.setdefault((case, system), []).append(m)

    for rep in range(plan.reps):
        log(f"enqueue: repetition {rep + 1}/{plan.reps}")
        sequential, pipelined = raw_publish(ctx.nats_url, plan.enqueue_seq, plan.enqueue_bulk)
        record("publish, sequential acked (asyncio)", "nats-py", sequential)
        record("publish, pipelined (asyncio publish_async)", "nats-py", pipelined)
        for threads in THREADS:
            n = plan.enqueue_seq if threads == 1 else plan.enqueue_threads
            for system, label in ((bg, "send_job"), (raw, "js.publish via run_coroutine_threadsafe")):
                queue = ctx.queue("enq")
                m = send_from_threads(system.producer(queue), n, threads)
                record(f"{label}, {threads} thread{'s' if threads > 1 else ''}", system.name, m)
                system.cleanup(queue)
        queue = ctx.queue("uniq")
        m = send_from_threads(bg.unique_producer(queue), plan.enqueue_seq, 1)
        record(UNIQUE_CASE, "bgjob", m)
        bg.cleanup(queue)
        bg.cleanup_unique()
        queue = ctx.queue("bulk")
        bg.producer(queue)  # the stream exists before the clock starts, as for the other cases
        args = [{"i": i} for i in range(plan.enqueue_bulk)]
        start = time.perf_counter()
        bg.bulk(queue, args)
        record("send_jobs, 1 thread", "bgjob", Measurement(rate=len(args) / (time.perf_counter() - start)))
        bg.cleanup(queue)
    bg.close()
    raw.close()

    m = {key: combine(ms) for key, ms in reps.items()}
    raw_seq = m[("publish, sequential acked (asyncio)", "nats-py")]
    raw_pipe = m[("publish, pipelined (asyncio publish_async)", "nats-py")]
    rows = [
        Row(SCENARIO, "publish, sequential acked (asyncio)", "nats-py", raw_seq, note="baseline"),
        Row(SCENARIO, "publish, pipelined (asyncio publish_async)", "nats-py", raw_pipe, note="baseline"),
    ]
    for threads in THREADS:
        suffix = f"{threads} thread{'s' if threads > 1 else ''}"
        mine, theirs = (
            m[(f"send_job, {suffix}", "bgjob")],
            m[(f"js.publish via run_coroutine_threadsafe, {suffix}", "nats-py")],
        )
        base, base_name = (raw_seq, "raw sequential") if threads == 1 else (raw_pipe, "raw pipelined")
        rows.append(
            Row(
                SCENARIO,
                f"js.publish via run_coroutine_threadsafe, {suffix}",
                "nats-py",
                theirs,
                note="baseline: raw nats-py called from threads",
            )
        )
        rows.append(
            Row(
                SCENARIO,
                f"send_job, {suffix}",
                "bgjob",
                mine,
                baseline=base_name,
                ratio=mine.rate / base.rate,
                note=f"{mine.rate / theirs.rate:.2f}x raw from {suffix}",
            )
        )
    plain, uniq = m[("send_job, 1 thread", "bgjob")], m[(UNIQUE_CASE, "bgjob")]
    rows.append(Row(SCENARIO, UNIQUE_CASE, "bgjob", uniq, baseline="send_job, 1 thread", ratio=uniq.rate / plain.rate,
                    note="a key-value create before each publish (the same run's plain send_job is the baseline)"))
    bulk = m[("send_jobs, 1 thread", "bgjob")]
    rows.append(
        Row(SCENARIO, "send_jobs, 1 thread", "bgjob", bulk, baseline="raw pipelined", ratio=bulk.rate / raw_pipe.rate)
    )
    return rows
