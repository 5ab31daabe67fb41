"""Scenario 4: delay accuracy. How late delayed and rescheduled jobs start, against the server's own @at timer."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from datetime import datetime, timezone

import nats
import nats.errors
from nats.js.api import Header, RetentionPolicy, StorageType, StreamConfig

from bgjob.job import format_time

from ..env import Context, WorkerProcess
from ..stats import Measurement, Row, combine
from ..systems import load_system
from .common import Plan, latency_of, log

SCENARIO = "delay"


def delayed(ctx: Context, n: int, spread: tuple[float, float]) -> Measurement:
    """n jobs sent with `delay` spread over `spread` seconds; lateness = handler start - due time."""
    bg = load_system("bgjob", ctx)
    queue = ctx.queue("delay")
    bg.producer(queue)
    with WorkerProcess(ctx, "bgjob", queue, concurrency=16, expect=n) as worker:
        worker.wait_ready()
        for i in range(n):
            delay = random.uniform(*spread)
            bg.client.send_job("noop", {"i": i, "t": time.time() + delay}, queue=queue, delay=delay)
        result = worker.result(timeout=spread[1] + 60)
    bg.cleanup(queue)
    bg.close()
    return latency_of(result)


def rescheduled(ctx: Context, n: int, spread: tuple[float, float]) -> Measurement:
    """n jobs that return Reschedule(ByAfterTime(d)) once, d spread over `spread`; lateness of the second run."""
    bg = load_system("bgjob", ctx)
    queue = ctx.queue("resched")
    bg.producer(queue)
    with WorkerProcess(ctx, "bgjob", queue, concurrency=16, expect=n) as worker:
        worker.wait_ready()
        jobs = [("resched", {"n": 0, "d": random.uniform(*spread)}) for _ in range(n)]
        bg.client.send_jobs(jobs, queue=queue)
        result = worker.result(timeout=spread[1] + 60)
    bg.cleanup(queue)
    bg.close()
    return latency_of(result)


def server_timer(url: str, n: int, spread: tuple[float, float]) -> Measurement:
    """Raw nats-py: n `Nats-Schedule: @at` messages, consumed by a fetch loop; the floor for any delayed job."""

    async def run() -> Measurement:
        nc = await nats.connect(url)
        js = nc.jetstream()
        name = "RAWAT_" + uuid.uuid4().hex[:8].upper()
        root = name.lower()
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[f"{root}.>"],
                storage=StorageType.FILE,
                retention=RetentionPolicy.WORK_QUEUE,
                allow_msg_schedules=True,
            )
        )
        sub = await js.pull_subscribe(f"{root}.fire", durable="c", stream=name)
        for i in range(n):
            due = time.time() + random.uniform(*spread)
            headers = {
                Header.SCHEDULE.value: f"@at {format_time(datetime.fromtimestamp(due, timezone.utc))}",
                Header.SCHEDULE_TARGET.value: f"{root}.fire",
            }
            await js.publish(f"{root}.at.{i}", json.dumps({"t": due}).encode(), headers=headers)
        late = []
        deadline = time.monotonic() + spread[1] + 30
        while len(late) < n and time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(256, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                late.append(time.time() - json.loads(msg.data)["t"])
                await msg.ack()
        await js.delete_stream(name)
        await nc.close()
        return Measurement.of_latencies(late)

    return asyncio.run(run())


def run(ctx: Context, plan: Plan) -> list[Row]:
    spread = (1.0, 3.0) if not plan.quick else (1.0, 2.0)
    reps: dict[str, list[Measurement]] = {}
    for rep in range(plan.reps):
        log(f"delay: repetition {rep + 1}/{plan.reps}")
        reps.setdefault("server", []).append(server_timer(ctx.nats_url, plan.delayed, spread))
        reps.setdefault("delayed", []).append(delayed(ctx, plan.delayed, spread))
        reps.setdefault("resched", []).append(rescheduled(ctx, plan.delayed, spread))
    span = f"{spread[0]:g}-{spread[1]:g} s"
    return [
        Row(
            SCENARIO,
            f"{plan.delayed} messages with Nats-Schedule @at in {span}, fetch loop",
            "nats-py",
            combine(reps["server"]),
            note="baseline: the server's scheduler (ms precision)",
        ),
        Row(SCENARIO, f"{plan.delayed} jobs send_job(delay=...) in {span}", "bgjob", combine(reps["delayed"])),
        Row(
            SCENARIO, f"{plan.delayed} jobs Reschedule(ByAfterTime(d)), d in {span}", "bgjob", combine(reps["resched"])
        ),
    ]
