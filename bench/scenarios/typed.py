"""Scenario: typed. What a typed function job's argument checking costs per send (bgjob.typed), in one run:
`send_job` of the same wire-format payload against the typed `fn.send(...)` (both from one thread, both with
store_result, which typed sends always use; ratio typed/plain), for a call of plain values and one with a
dataclass and a datetime; and the check-and-encode step alone (`fn.encode`, no I/O) in microseconds per call."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import bgjob

from ..env import Context
from ..stats import Measurement, Row, combine
from ..systems import load_system
from .common import Plan, log

SCENARIO = "typed"
ENCODE_CALLS = 20_000


@dataclass(frozen=True)
class Size:
    width: int
    height: int


_mux = bgjob.Mux()


@_mux.job(name="bench.resize")
def resize(path: str, width: int = 100, size: Size | None = None, taken: datetime | None = None) -> str:
    return path


#: (case, args, kwargs): the same call, sent both ways.
CASES = [
    ("str + int", ("a.png",), {"width": 50}),
    ("str + dataclass + datetime", ("a.png",), {"size": Size(640, 480), "taken": datetime(2025, 1, 1, tzinfo=UTC)}),
]


def run(ctx: Context, plan: Plan) -> list[Row]:
    system = load_system("bgjob", ctx)
    client = system.client  # type: ignore[attr-defined]
    sends = max(500, plan.enqueue_seq // 2)
    reps: dict[str, list[Measurement]] = {}
    for rep in range(plan.reps):
        log(f"typed: repetition {rep + 1}/{plan.reps}")
        for case, args, kwargs in CASES:
            wire = resize.encode(*args, **kwargs)
            queue = ctx.queue("typed")
            client.ensure_queue(queue)
            typed = resize.options(client=client, queue=queue)
            typed.send(*args, **kwargs)  # the results bucket exists before the clock starts
            for key, send in (  # alternated, so that drift hits both alike
                ("plain", lambda q=queue, w=wire: client.send_job("bench.resize", w, queue=q, store_result=True)),
                ("typed", lambda t=typed, a=args, k=kwargs: t.send(*a, **k)),
            ):
                reps.setdefault(f"{case}-{key}", []).append(_sequential(send, sends))
            system.cleanup(queue)
            reps.setdefault(f"{case}-encode", []).append(_encode_only(args, kwargs))
    system.close()
    rows = []
    for case, _, _ in CASES:
        plain, typed = combine(reps[f"{case}-plain"]), combine(reps[f"{case}-typed"])
        encode = combine(reps[f"{case}-encode"])
        base = f"send_job(store_result=True) of the wire arg, {case}, 1 thread"
        rows.append(Row(SCENARIO, base, "bgjob", plain, note="baseline"))
        ratio = typed.rate / plain.rate
        extra_us = (1 / typed.rate - 1 / plain.rate) * 1e6
        rows.append(Row(SCENARIO, f"typed fn.send(...), {case}, 1 thread", "bgjob", typed, base, ratio,
                        f"{ratio:.2f}x the rate of send_job; {extra_us:+.0f} µs per send"))  # fmt: skip
        rows.append(Row(SCENARIO, f"fn.encode(...) alone (check + encode, no I/O), {case}", "bgjob", encode,
                        note=f"{encode.p50 * 1e6:.1f} µs per call (p50)"))  # fmt: skip
    return rows


def _sequential(send: object, count: int) -> Measurement:
    latencies = []
    clock = time.perf_counter
    start = clock()
    for _ in range(count):
        t = clock()
        send()  # type: ignore[operator]
        latencies.append(clock() - t)
    return Measurement.of_latencies(latencies, rate=count / (clock() - start))


def _encode_only(args: tuple[object, ...], kwargs: dict[str, object]) -> Measurement:
    """`fn.encode` ENCODE_CALLS times: the argument check and JSON encoding a typed send adds, without I/O."""
    encode = resize.encode
    clock = time.perf_counter
    latencies = []
    start = clock()
    for _ in range(ENCODE_CALLS):
        t = clock()
        encode(*args, **kwargs)
        latencies.append(clock() - t)
    return Measurement.of_latencies(latencies, rate=ENCODE_CALLS / (clock() - start))
