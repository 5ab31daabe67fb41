"""Scenario 3: end to end. Producers and one worker process at once: sustained jobs/s, enqueue-to-start latency."""

from __future__ import annotations

import threading
import time

from ..env import Context, WorkerProcess
from ..stats import Measurement, Row, combine
from ..systems import System, load_system
from .common import Plan, latency_of, log, send_paced, windowed_rate

SCENARIO = "end to end"
PRODUCERS = 8
CONCURRENCY = 64


def saturate(ctx: Context, system: System, seconds: float, concurrency: int) -> Measurement:
    """PRODUCERS threads send as fast as they can for `seconds` while one worker runs the jobs."""
    queue = ctx.queue("e2e")
    send = system.producer(queue)
    with WorkerProcess(ctx, system.name, queue, concurrency=concurrency) as worker:
        worker.wait_ready()
        counts = [0] * PRODUCERS
        stop = threading.Event()

        def produce(index: int) -> None:
            while not stop.is_set():
                send({"i": counts[index], "t": time.time()})
                counts[index] += 1

        threads = [threading.Thread(target=produce, args=(i,), daemon=True) for i in range(PRODUCERS)]
        t0 = time.time()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        t1 = time.time()
        sent = sum(counts)
        worker.set_expect(sent)
        result = worker.result(timeout=60 + sent / 500)
    system.cleanup(queue)
    m = latency_of(result)
    # Skip the first second: the worker's thread pool and the producers' connections warm up.
    m.rate = windowed_rate(result["samples"], t0 + 1.0, t1)
    m.extra["produced_per_s"] = sent / (t1 - t0)
    return m


def paced(ctx: Context, system: System, rate: float, seconds: float, concurrency: int) -> tuple[Measurement, dict]:
    """One producer thread at a steady `rate`, far below capacity: the latency of an unloaded system."""
    queue = ctx.queue("paced")
    send = system.producer(queue)
    with WorkerProcess(ctx, system.name, queue, concurrency=concurrency) as worker:
        worker.wait_ready()
        time.sleep(0.5)
        idle_rss = worker.rss()
        sent = send_paced(send, rate, seconds)
        worker.set_expect(sent)
        result = worker.result(timeout=60 + sent / 50)
        busy_rss = worker.rss()
    system.cleanup(queue)
    m = latency_of(result)
    m.rate = sent / seconds
    return m, {"idle_rss_mb": idle_rss / 2**20, "rss_mb": busy_rss / 2**20}


def run(ctx: Context, plan: Plan) -> list[Row]:
    systems = {"bgjob": load_system("bgjob", ctx), "nats-py": load_system("nats-py", ctx)}
    reps: dict[tuple[str, str], list[Measurement]] = {}
    for rep in range(plan.reps):
        log(f"end to end: repetition {rep + 1}/{plan.reps}")
        for name, system in systems.items():
            reps.setdefault(("saturated", name), []).append(saturate(ctx, system, plan.e2e_seconds, CONCURRENCY))
            m, _ = paced(ctx, system, plan.e2e_paced_rate, plan.e2e_seconds, 16)
            reps.setdefault(("paced", name), []).append(m)
    for system in systems.values():
        system.close()
    m = {key: combine(ms) for key, ms in reps.items()}
    sat_case = f"{PRODUCERS} producer threads flat out, worker concurrency {CONCURRENCY}"
    paced_case = f"1 producer at {plan.e2e_paced_rate:.0f} jobs/s, worker concurrency 16"
    rows = []
    for kind, case in (("saturated", sat_case), ("paced", paced_case)):
        base, mine = m[(kind, "nats-py")], m[(kind, "bgjob")]
        rows.append(Row(SCENARIO, case, "nats-py", base, note="baseline: raw publish from threads + fetch loop"))
        ratio = mine.rate / base.rate if kind == "saturated" and mine.rate and base.rate else None
        rows.append(Row(SCENARIO, case, "bgjob", mine, baseline="raw nats-py" if ratio else "", ratio=ratio))
    return rows
