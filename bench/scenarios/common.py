"""What the scenarios share: the plan (job counts, repetitions), producers in threads, one drain of a queue."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..env import Context, WorkerProcess
from ..stats import Measurement
from ..systems import System


@dataclass
class Plan:
    """Job counts and repetitions of a full run; `quick()` scales them down to a ~2 minute smoke run."""

    quick: bool = False
    reps: int = 3
    enqueue_seq: int = 10_000  # sequential 1-thread sends (the latency figures)
    enqueue_threads: int = 40_000  # per case of 8 and 64 threads
    enqueue_bulk: int = 100_000  # send_jobs and pipelined publishes
    process: int = 50_000  # jobs drained per repetition at concurrency 16 and 64 (and by raw nats-py)
    process_c1: int = 10_000
    e2e_seconds: float = 5.0
    e2e_paced_rate: float = 1000.0
    delayed: int = 1000  # delayed jobs (1-3 s), and as many reschedule chains
    backlog_small: int = 10_000
    backlog_large: int = 1_000_000
    backlog_sample: int = 10_000  # jobs drained from each backlog
    memory_jobs: int = 100_000
    peer_enqueue_seq: int = 2000
    peer_enqueue_threads: int = 4000
    peer_process: int = 8000
    peer_paced_seconds: float = 3.0
    peer_concurrency: int = 16

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(
            quick=True,
            reps=1,
            enqueue_seq=2000,
            enqueue_threads=8000,
            enqueue_bulk=20_000,
            process=10_000,
            process_c1=2000,
            e2e_seconds=3.0,
            delayed=200,
            backlog_small=10_000,
            backlog_large=100_000,
            memory_jobs=20_000,
            peer_enqueue_seq=500,
            peer_enqueue_threads=2000,
            peer_process=2000,
            peer_paced_seconds=2.0,
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def send_from_threads(send: Callable[[dict[str, Any]], None], total: int, threads: int) -> Measurement:
    """`total` jobs sent by `threads` threads at once; the rate and the latency of each call."""
    per_thread = max(1, total // threads)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def run(out: list[float]) -> None:
        barrier.wait()
        clock = time.perf_counter
        try:
            for i in range(per_thread):
                start = clock()
                send({"i": i})
                out.append(clock() - start)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(out,), daemon=True) for out in latencies]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    flat = [x for out in latencies for x in out]
    return Measurement.of_latencies(flat, rate=len(flat) / elapsed)


def send_paced(send: Callable[[dict[str, Any]], None], rate: float, seconds: float) -> int:
    """Send at `rate` jobs/s for `seconds` from this thread (catching up if late); returns the count sent."""
    interval = 1.0 / rate
    start = time.perf_counter()
    sent = 0
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            return sent
        due = start + sent * interval
        if now < due:
            time.sleep(due - now)
        send({"i": sent, "t": time.time()})
        sent += 1


def drain(
    ctx: Context, system: System, queue: str, n: int, concurrency: int, *, timeout: float = 300
) -> tuple[Measurement, dict[str, Any]]:
    """Fill `queue` with n jobs, then time one worker process running them (first start to n-th start)."""
    system.fill(queue, n)
    with WorkerProcess(ctx, system.name, queue, concurrency=concurrency, expect=n, latency_cap=1) as worker:
        result = worker.result(timeout)
    extra = {"rss_mb": result["rss"] / 2**20, "cpu_us_per_job": result["cpu_us_per_job"]}
    if result.get("cpu_load"):
        extra["cpu_load"] = result["cpu_load"]
    return Measurement(rate=result["rate"], extra=extra), result


def windowed_rate(samples: list[list[float]], t0: float, t1: float) -> float | None:
    """Jobs/s started between wall-clock t0 and t1, from the worker's (time, count) samples."""
    inside = [(t, c) for t, c in samples if t0 <= t <= t1]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def latency_of(result: dict[str, Any]) -> Measurement:
    lat = result["latency"]
    return Measurement(p50=lat["p50"], p99=lat["p99"], max=lat["max"], extra={"samples": lat["n"]})
