"""Scenario 2: process. One worker process drains a pre-filled queue, against a raw nats-py fetch+ack loop."""

from __future__ import annotations

from ..env import Context
from ..stats import Measurement, Row, combine
from ..systems import load_system
from .common import Plan, drain, log

SCENARIO = "process"
CONCURRENCY = (1, 16, 64)


def run(ctx: Context, plan: Plan) -> list[Row]:
    bg = load_system("bgjob", ctx)
    raw = load_system("nats-py", ctx)
    raw_headers = load_system("nats-py+headers", ctx)
    reps: dict[str, list[Measurement]] = {}
    for rep in range(plan.reps):
        log(f"process: repetition {rep + 1}/{plan.reps}")
        cases = [("raw", raw, 1, plan.process), ("raw+headers", raw_headers, 1, plan.process)] + [
            (f"c{c}", bg, c, plan.process_c1 if c == 1 else plan.process) for c in CONCURRENCY
        ]
        for key, system, concurrency, n in cases:
            queue = ctx.queue("proc")
            m, _ = drain(ctx, system, queue, n, concurrency, timeout=max(60.0, n / 200))
            reps.setdefault(key, []).append(m)
            system.cleanup(queue)
    bg.close()
    raw.close()
    raw_headers.close()
    base, with_headers = combine(reps["raw"]), combine(reps["raw+headers"])
    rows = [
        Row(SCENARIO, "pull fetch(256) + ack loop", "nats-py", base, note="baseline"),
        Row(
            SCENARIO,
            "pull fetch(256) + ack loop, bgjob's 5 headers on each message",
            "nats-py+headers",
            with_headers,
            baseline="raw fetch+ack",
            ratio=with_headers.rate / base.rate,
            note="what the message format alone costs",
        ),
    ]
    for c in CONCURRENCY:
        m = combine(reps[f"c{c}"])
        note = f"{m.rate / with_headers.rate:.2f}x raw with the same headers"
        rows.append(Row(SCENARIO, f"Worker, concurrency {c}", "bgjob", m, "raw fetch+ack", m.rate / base.rate, note))
    return rows
