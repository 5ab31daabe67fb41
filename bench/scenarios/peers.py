"""Scenario 6: peers. bgjob and other job queues, same machine, same no-op job, same procedure."""

from __future__ import annotations

import time
import traceback

from ..env import Context, Unavailable
from ..stats import Measurement, Row, combine
from ..systems import SYSTEMS, System, load_system
from .common import Plan, drain, log, send_from_threads
from .e2e import paced

SCENARIO = "peers"
PEERS = [name for name in SYSTEMS if not name.startswith("nats-py") and name != "bgjob+events"]  # events: own scenario

ENQ1, ENQ8, BULK, PROCESS, PACED = (
    "enqueue, 1 thread",
    "enqueue, 8 threads",
    "bulk enqueue, 1 thread",
    "process, 1 worker process",
    "end to end, paced",
)


def _one_rep(ctx: Context, system: System, plan: Plan) -> dict[str, Measurement]:
    out: dict[str, Measurement] = {}
    scale = system.scale
    for case, n, threads in ((ENQ1, plan.peer_enqueue_seq, 1), (ENQ8, plan.peer_enqueue_threads, 8)):
        queue = ctx.queue("peer")
        out[case] = send_from_threads(system.producer(queue), max(threads, int(n * scale)), threads)
        system.cleanup(queue)
    if system.has_bulk:
        queue = ctx.queue("peer")
        system.producer(queue)
        args = [{"i": i} for i in range(max(100, int(plan.peer_process * 2 * scale)))]
        start = time.perf_counter()
        system.bulk(queue, args)
        out[BULK] = Measurement(rate=len(args) / (time.perf_counter() - start))
        system.cleanup(queue)
    queue = ctx.queue("peer")
    n = max(100, int(plan.peer_process * scale))
    out[PROCESS], _ = drain(ctx, system, queue, n, plan.peer_concurrency, timeout=60 + n / 50)
    system.cleanup(queue)
    out[PACED], rss = paced(ctx, system, system.paced_rate, plan.peer_paced_seconds, plan.peer_concurrency)
    out[PACED].extra.update(rss)
    return out


def run(ctx: Context, plan: Plan, only: list[str] | None = None) -> list[Row]:
    results: dict[str, dict[str, Measurement]] = {}
    skipped: dict[str, str] = {}
    for name in only or PEERS:
        system = load_system(name, ctx)
        try:
            system.check()
        except Unavailable as exc:
            log(f"peers: skipping {name}: {exc}")
            skipped[name] = str(exc)
            continue
        reps: dict[str, list[Measurement]] = {}
        try:
            for rep in range(plan.reps):
                log(f"peers: {name}, repetition {rep + 1}/{plan.reps}")
                for case, m in _one_rep(ctx, system, plan).items():
                    reps.setdefault(case, []).append(m)
        except Exception as exc:  # noqa: BLE001 - one broken peer must not end the run
            log(f"peers: {name} failed: {exc!r}; skipping it")
            traceback.print_exc()
            skipped[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        finally:
            system.close()
        results[name] = {case: combine(ms) for case, ms in reps.items()}

    rows = []
    mine = results.get("bgjob", {})
    for name, cases in results.items():
        for case, m in cases.items():
            row = Row(SCENARIO, case, name, m)
            if name != "bgjob" and case != PACED and case in mine and m.rate and mine[case].rate:
                row.baseline, row.ratio = name, mine[case].rate / m.rate  # bgjob/peer, on the peer's row
            rows.append(row)
    for name, why in skipped.items():
        rows.append(Row(SCENARIO, "skipped", name, Measurement(), note=why))
    return rows
