"""Scenario: events. What lifecycle events (`Settings(events=True)`, bgjob.events) cost, in one run: `send_job`
from one thread and a worker process draining a queue, each with events off and on (ratios on/off), and the
latency of `Client.job_status` (two server requests sent together: the job's last event and its progress)."""

from __future__ import annotations

import time

from ..env import Context
from ..stats import Measurement, Row, combine
from ..systems import load_system
from .common import Plan, drain, log, send_from_threads

SCENARIO = "events"
CONCURRENCY = 16
STATUS_CALLS = 2000


def run(ctx: Context, plan: Plan) -> list[Row]:
    off, on = load_system("bgjob", ctx), load_system("bgjob+events", ctx)
    reps: dict[str, list[Measurement]] = {}
    sends = plan.enqueue_seq
    for rep in range(plan.reps):
        log(f"events: repetition {rep + 1}/{plan.reps}")
        for key, system in (("off", off), ("on", on)):  # alternated, so that drift hits both alike
            queue = ctx.queue("events")
            reps.setdefault(f"send-{key}", []).append(send_from_threads(system.producer(queue), sends, 1))
            system.cleanup(queue)
            queue = ctx.queue("events")
            m, _ = drain(ctx, system, queue, plan.process, CONCURRENCY, timeout=max(60.0, plan.process / 200))
            reps.setdefault(f"process-{key}", []).append(m)
            system.cleanup(queue)
        reps.setdefault("status", []).append(_job_status_latency(on, ctx.queue("events")))
    off.close()
    on.close()
    rows = []
    for what, case in (("send", "send_job, 1 thread"), ("process", f"Worker process, concurrency {CONCURRENCY}")):
        base, with_events = combine(reps[f"{what}-off"]), combine(reps[f"{what}-on"])
        rows.append(Row(SCENARIO, f"{case}, events off", "bgjob", base, note="baseline"))
        ratio = with_events.rate / base.rate
        rows.append(Row(SCENARIO, f"{case}, events on", "bgjob+events", with_events, f"{case}, events off", ratio,
                        f"{ratio:.2f}x the rate without events"))  # fmt: skip
    status = combine(reps["status"])
    rows.append(Row(SCENARIO, f"job_status(id), {STATUS_CALLS} calls over a stream of every event of this run",
                    "bgjob+events", status, note="two requests at once: last event, progress"))  # fmt: skip
    return rows


def _job_status_latency(system: object, queue: str) -> Measurement:
    """job_status of jobs with a few events each (sent, not run), called one after another from one thread."""
    client = system.client  # type: ignore[attr-defined]
    ids = [client.send_job("noop", {"i": i}, queue=queue) for i in range(200)]
    client.job_status(ids[0])  # connected, stream made
    latencies = []
    clock = time.perf_counter
    start = clock()
    for i in range(STATUS_CALLS):
        t = clock()
        status = client.job_status(ids[i % len(ids)])
        latencies.append(clock() - t)
        assert status.state.value == "ready", status
    measurement = Measurement.of_latencies(latencies, rate=STATUS_CALLS / (clock() - start))
    system.cleanup(queue)  # type: ignore[attr-defined]
    return measurement
