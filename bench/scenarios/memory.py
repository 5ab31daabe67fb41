"""Scenario 7: memory. RSS of an idle worker process, and after it has run many jobs."""

from __future__ import annotations

import time

from ..env import Context, WorkerProcess
from ..stats import Measurement, Row, combine
from ..systems import load_system
from .common import Plan, log

SCENARIO = "memory"


def _measure(ctx: Context, name: str, n: int) -> Measurement:
    system = load_system(name, ctx)
    queue = ctx.queue("mem")
    system.producer(queue)
    with WorkerProcess(ctx, name, queue, concurrency=16, expect=n, latency_cap=1) as worker:
        worker.wait_ready()
        time.sleep(1.0)
        idle = worker.rss()
        for offset in range(0, n, 10_000):
            system.bulk(queue, [{"i": i} for i in range(offset, min(n, offset + 10_000))])
        worker.result(timeout=60 + n / 500)
        time.sleep(0.5)
        after = worker.rss()
    system.cleanup(queue)
    system.close()
    return Measurement(extra={"idle_rss_mb": idle / 2**20, "rss_mb": after / 2**20})


def run(ctx: Context, plan: Plan) -> list[Row]:
    reps: dict[str, list[Measurement]] = {}
    for rep in range(plan.reps):
        log(f"memory: repetition {rep + 1}/{plan.reps}")
        for name in ("nats-py", "bgjob"):
            reps.setdefault(name, []).append(_measure(ctx, name, plan.memory_jobs))
    case = f"worker idle, then after {plan.memory_jobs} jobs (concurrency 16)"
    return [
        Row(SCENARIO, case, "nats-py", combine(reps["nats-py"]), note="baseline: raw fetch loop process"),
        Row(SCENARIO, case, "bgjob", combine(reps["bgjob"])),
    ]
