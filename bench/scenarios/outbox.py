"""Scenario 9: sending from Django inside a transaction — direct, on_commit and the transactional outbox.

One thread runs transactions that each insert one row of the application's own table and send one job with
`bgjob_django.send_job`: directly (`outbox=False, on_commit=False`, the baseline), at commit (`on_commit=True`)
or as an outbox row (`outbox=True`) that a `bgjob_django.relay.Relay` in a thread of the same process publishes.
Then ~300 jobs are sent one at a time to a `bgjob.Worker` in this process: the latency from the producer's
`time.monotonic()` right after the commit (a `transaction.on_commit` callback registered first, so it runs
before on_commit mode's publish) to the handler's start. A direct send is published before the commit, so its
handler may start before it: a negative latency.

Django is configured in this process (`settings.configure`, `bgjob_django` installed, migrations run) on the
database of DATABASE_URL (postgres://user@host:port/name or sqlite:////path: use a scratch database; the bench
migrates it and creates and drops its own table `bench_app_row`), else on a temporary SQLite file. Django can be
configured once per process, so one run measures one database: run it again with another DATABASE_URL.
With `--rev`, bgjob comes from the snapshot and bgjob_django from the working tree.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from ..env import Context
from ..stats import Measurement, Row, combine, percentile
from .common import Plan, log

SCENARIO = "outbox"
MODES = ("direct", "on_commit", "outbox")
KWARGS: dict[str, dict[str, bool]] = {
    "direct": {"outbox": False, "on_commit": False},
    "on_commit": {"outbox": False, "on_commit": True},
    "outbox": {"outbox": True, "on_commit": False},
}
TABLE = "bench_app_row"
DRAIN_TIMEOUT = 120.0
LATENCY_WARMUP = 20


def _configure(ctx: Context) -> str:
    """Configure Django in this process (once); returns a description of the database."""
    import django
    from django.conf import settings

    url = os.environ.get("DATABASE_URL", "")
    if url:
        database = _database(url)
    else:
        path = pathlib.Path(ctx.work_dir) / "outbox.sqlite3"
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path), "OPTIONS": {"timeout": 30}}
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            USE_TZ=True,
            SECRET_KEY="bench-not-secret",
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "bgjob_django"],
            DATABASES={"default": database},
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
            BGJOB={"URL": ctx.nats_url, "PREFIX": ctx.prefix},
            LOGGING_CONFIG=None,
        )
        django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    engine = database["ENGINE"].rsplit(".", 1)[-1]
    return f"{engine} {database['NAME'] if engine == 'sqlite3' else database.get('HOST', '') + '/' + database['NAME']}"


def _database(url: str) -> dict[str, Any]:
    """A DATABASES entry from postgres://user:password@host:port/name or sqlite:////path."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parts.path, "OPTIONS": {"timeout": 30}}
    if parts.scheme in ("postgres", "postgresql"):
        return {"ENGINE": "django.db.backends.postgresql", "NAME": parts.path.lstrip("/"),
                "USER": urllib.parse.unquote(parts.username or ""),
                "PASSWORD": urllib.parse.unquote(parts.password or ""), "HOST": parts.hostname or "",
                "PORT": str(parts.port or "")}  # fmt: skip
    raise ValueError(f"DATABASE_URL: scheme {parts.scheme!r} is not supported (postgres:// or sqlite:///)")


def _create_table() -> None:
    from django.db import connection

    key = "BIGSERIAL PRIMARY KEY" if connection.vendor == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(f"CREATE TABLE {TABLE} (id {key}, name VARCHAR(100) NOT NULL, created DOUBLE PRECISION)")


def _drop_table() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")


def _transaction(mode: str, queue: str, on_committed: Callable[[], None] | None = None) -> Callable[[int], str]:
    """One transaction: insert the application's row, send its job in `mode`; returns the job id.

    `on_committed` is registered with transaction.on_commit before anything else, so it runs right after the
    commit, before on_commit mode's publish."""
    from django.db import connection, transaction

    from bgjob_django import send_job

    kwargs = KWARGS[mode]
    sql = f"INSERT INTO {TABLE} (name, created) VALUES (%s, %s)"

    def one(i: int) -> str:
        with transaction.atomic():
            if on_committed is not None:
                transaction.on_commit(on_committed)
            with connection.cursor() as cursor:
                cursor.execute(sql, [f"order {i}", time.time()])
            return send_job("noop", {"i": i}, queue=queue, **kwargs)

    return one


def _no_job() -> Callable[[int], str]:
    """The same transaction without a job (what the row insert and the commit cost alone)."""
    from django.db import connection, transaction

    sql = f"INSERT INTO {TABLE} (name, created) VALUES (%s, %s)"

    def one(i: int) -> str:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [f"order {i}", time.time()])
        return ""

    return one


def _outbox_count() -> int:
    from bgjob_django.models import OutboxMessage

    return OutboxMessage.objects.count()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"outbox: {what} not within {timeout:.0f}s")
        time.sleep(0.002)


class _Relay:
    """A Relay of the project's client running in a thread (as `WorkerGroup` runs it)."""

    def __enter__(self) -> _Relay:
        from bgjob_django.conf import get_client
        from bgjob_django.relay import Relay

        self.stop = threading.Event()
        self.relay = Relay(get_client())
        self.thread = self.relay.start(self.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def _throughput(ctx: Context, n: int, rep: int) -> dict[str, Measurement]:
    """One repetition of every case (their order rotated by `rep`, so no case always runs first on a shared
    machine): jobs/s of the inserting thread (and end to end for the outbox)."""
    from bgjob_django.conf import get_client

    client = get_client()
    out: dict[str, Measurement] = {}
    cases = ["no job", *MODES]
    for case in cases[rep % len(cases) :] + cases[: rep % len(cases)]:
        queue = ctx.queue("obx")
        client.ensure_queue(queue)
        one = _no_job() if case == "no job" else _transaction(case, queue)
        one(-1)  # warm: the connection, the stream's first publish
        relay = _Relay() if case == "outbox" else None
        if relay is not None:
            relay.__enter__()
        try:
            if relay is not None:
                _wait(lambda: _outbox_count() == 0, DRAIN_TIMEOUT, "the warm-up job relayed")
            start = time.perf_counter()
            for i in range(n):
                one(i)
            inserted = time.perf_counter()
            extra: dict[str, float] = {}
            if relay is not None:
                _wait(lambda: _outbox_count() == 0, DRAIN_TIMEOUT, f"{n} outbox rows relayed")
                extra["e2e_rate"] = n / (time.perf_counter() - start)
                extra["drain_after_s"] = time.perf_counter() - inserted
            out[case] = Measurement(rate=n / (inserted - start), extra=extra)
        finally:
            if relay is not None:
                relay.__exit__()
        if case != "no job":
            stored = _stored(client, queue)
            if stored != n + 1:
                raise RuntimeError(f"outbox: {case}: {stored} jobs in the stream, expected {n + 1}")
        _cleanup(client, queue)
    return out


def _stored(client: Any, queue: str) -> int:
    """Messages in the queue's stream."""

    async def count(core: Any) -> int:
        return (await core.js.stream_info(core.topology.queue_stream(queue))).state.messages

    return client.run(count)


def _cleanup(client: Any, queue: str) -> None:
    async def delete(core: Any) -> None:
        await core.js.delete_stream(core.topology.queue_stream(queue))
        core._provisioned.discard(queue)

    client.run(delete)


def _latency(ctx: Context, mode: str, n: int) -> tuple[list[float], int]:
    """n jobs one at a time: seconds from just after the commit (the transaction's first on_commit callback) to
    the handler's start; and how many handlers started before the commit (a negative latency: direct sends)."""
    import bgjob
    from bgjob_django.conf import get_client

    client = get_client()
    queue = ctx.queue("obxlat")
    client.ensure_queue(queue)
    started: dict[str, float] = {}
    cond = threading.Condition()

    def noop(job: bgjob.Job) -> bgjob.Result:
        now = time.monotonic()
        with cond:
            started[job.id] = now
            cond.notify_all()
        return bgjob.Complete()

    mux = bgjob.Mux()
    mux.handle("noop", noop)
    worker = bgjob.Worker(client, mux, queue=queue, concurrency=4)
    worker_thread = worker.start()
    commits: list[float] = []
    one = _transaction(mode, queue, lambda: commits.append(time.monotonic()))
    latencies: list[float] = []
    early = 0
    try:
        with _Relay() if mode == "outbox" else _Nothing():
            for i in range(LATENCY_WARMUP + n):
                job_id = one(i)
                committed = commits[-1]
                with cond:
                    if not cond.wait_for(lambda job_id=job_id: job_id in started, timeout=30):
                        raise TimeoutError(f"outbox: {mode}: job {job_id} did not start within 30s")
                if i >= LATENCY_WARMUP:
                    latencies.append(started[job_id] - committed)
                    early += started[job_id] < committed
                time.sleep(0.013 * (i % 7))  # commits at varied points of the relay's poll cycle
    finally:
        worker.stop()
        worker_thread.join(30)
        _cleanup(client, queue)
    return latencies, early


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run(ctx: Context, plan: Plan) -> list[Row]:
    try:
        import django  # noqa: F401
    except ImportError:
        log("outbox: skipped (Django is not installed: pip install -e '.[django]')")
        return []
    where = _configure(ctx)
    log(f"outbox: database {where}")
    n = 500 if plan.quick else 2000
    n_latency = 100 if plan.quick else 300
    _create_table()
    from bgjob_django.conf import reset

    reps: dict[str, list[Measurement]] = {}
    try:
        for rep in range(plan.reps):
            log(f"outbox: throughput, repetition {rep + 1}/{plan.reps} ({n} transactions per case)")
            for case, m in _throughput(ctx, n, rep).items():
                reps.setdefault(case, []).append(m)
        latency: dict[str, tuple[list[float], int]] = {}
        for mode in MODES:
            log(f"outbox: latency commit -> handler start, {mode} ({n_latency} jobs one at a time)")
            latency[mode] = _latency(ctx, mode, n_latency)
    finally:
        _drop_table()
        reset()
    db = where.split(" ", 1)[0].replace("sqlite3", "SQLite").replace("postgresql", "PostgreSQL")
    m = {case: combine(ms) for case, ms in reps.items()}
    base = m["direct"]
    rows = [
        Row(SCENARIO, f"{db}: transaction with one row insert, no job", "no job", m["no job"],
            note="what the insert and the commit cost alone"),
        Row(SCENARIO, f"{db}: row insert + send_job, direct (outbox=False, on_commit=False)", "bgjob", base,
            note="baseline: published inside the transaction (PubAck awaited before the commit)"),
        Row(SCENARIO, f"{db}: row insert + send_job(on_commit=True)", "bgjob", m["on_commit"],
            baseline="direct", ratio=m["on_commit"].rate / base.rate, note="published at commit (PubAck awaited)"),
    ]  # fmt: skip
    ob = m["outbox"]
    e2e = ob.extra["e2e_rate"]
    rows.append(Row(SCENARIO, f"{db}: row insert + send_job(outbox=True), the inserting thread", "bgjob", ob,
                    baseline="direct", ratio=ob.rate / base.rate,
                    note=f"a Relay thread publishing meanwhile; end to end (until the relay drained all): "
                         f"{e2e:,.0f} jobs/s = {e2e / base.rate:.2f}x direct, drained "
                         f"{ob.extra['drain_after_s'] * 1000:.0f} ms after the last commit"))  # fmt: skip
    direct_p50 = statistics.median(latency["direct"][0])
    for mode in MODES:
        lat, early = latency[mode]
        p50, p95 = statistics.median(lat), percentile(lat, 95)
        ratio = p50 / direct_p50 if direct_p50 > 0 else None
        rows.append(Row(SCENARIO, f"{db}: latency commit -> handler start, {mode}, {len(lat)} jobs one at a time",
                        "bgjob", Measurement(p50=p50, p99=percentile(lat, 99), max=max(lat),
                                             extra={"p95": p95, "early": early}),
                        baseline="direct" if mode != "direct" else "", ratio=ratio,
                        note=f"p95 {p95 * 1000:.2f} ms; {early} handlers started before the commit"
                             + (" (baseline)" if mode == "direct" else "")))  # fmt: skip
    return rows
