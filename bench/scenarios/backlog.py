"""Scenario 5: backlog scale. The process rate with a huge backlog queued, against a small one."""

from __future__ import annotations

import shutil
import time

from ..env import Context, WorkerProcess
from ..stats import Measurement, Row, combine
from ..systems import load_system
from .common import Plan, log

SCENARIO = "backlog"
CONCURRENCY = 64
BYTES_PER_JOB = 1024  # generous: message, headers, index and the dedup table


def _sample(ctx: Context, queue: str, n: int) -> Measurement:
    with WorkerProcess(ctx, "bgjob", queue, concurrency=CONCURRENCY, expect=n, latency_cap=1) as worker:
        result = worker.result(timeout=120)
    return Measurement(rate=result["rate"])


def run(ctx: Context, plan: Plan) -> list[Row]:
    bg = load_system("bgjob", ctx)
    free = shutil.disk_usage(ctx.work_dir).free
    large = plan.backlog_large
    if free < 3 * large * BYTES_PER_JOB:
        large = max(plan.backlog_small * 10, free // (3 * BYTES_PER_JOB))
        log(f"backlog: only {free / 2**30:.1f} GiB free; using a backlog of {large} jobs")
    small_reps, large_reps = [], []
    for rep in range(plan.reps):
        log(f"backlog: small backlog, repetition {rep + 1}/{plan.reps}")
        queue = ctx.queue("small")
        bg.fill(queue, plan.backlog_small)
        small_reps.append(_sample(ctx, queue, min(plan.backlog_sample, plan.backlog_small)))
        bg.cleanup(queue)
    log(f"backlog: filling {large} jobs with send_jobs")
    queue = ctx.queue("large")
    bg.producer(queue)
    start = time.perf_counter()
    for offset in range(0, large, 50_000):
        bg.bulk(queue, [{"i": i} for i in range(offset, min(large, offset + 50_000))])
    fill = Measurement(rate=large / (time.perf_counter() - start))
    try:
        for rep in range(plan.reps):
            log(f"backlog: {large} queued, repetition {rep + 1}/{plan.reps}")
            large_reps.append(_sample(ctx, queue, plan.backlog_sample))
    finally:
        bg.cleanup(queue)
        bg.close()
    small, big = combine(small_reps), combine(large_reps)
    sample = f"first {plan.backlog_sample} jobs, concurrency {CONCURRENCY}"
    return [
        Row(SCENARIO, f"{plan.backlog_small} queued, {sample}", "bgjob", small, note="baseline: small backlog"),
        Row(SCENARIO, f"{large} queued, {sample}", "bgjob", big, baseline="small backlog", ratio=big.rate / small.rate),
        Row(SCENARIO, f"filling {large} jobs with send_jobs (50k per call)", "bgjob", fill),
    ]
