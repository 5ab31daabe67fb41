"""Scenario 8: what enqueueing one job costs a web request under real gunicorn (sync, gthread, gevent workers),
for bgjob and the peers side by side.

The same tiny app (bench/wsgi/app.py) serves /plain (no job) and /send/<system> (one job per request with that
system's producer from bench/systems); a loopback client with 16 threads drives each for a fixed time. Each
gunicorn configuration is one launch serving every system, so the no-job baseline and every system are measured
in the same processes; within a repetition the endpoints take turns in an order that rotates from one repetition
to the next, so drift hits all alike. The ratio /send/<system> over /plain is what enqueueing costs a request.
A system that cannot run (its broker is down, or its send fails under one worker class) is reported as skipped
in that configuration, with the reason; it never ends the run.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

from ..env import Context, Unavailable, ensure_rabbitmq, ensure_redis, flush_redis_db
from ..stats import Measurement, Row, combine
from ..systems import System, load_system
from .common import Plan, log

SCENARIO = "wsgi"
CLIENT_THREADS = 16
WORKERS = [
    ("sync", ["-w", "4"]),
    ("gthread", ["-w", "2", "--threads", "8"]),
    ("gevent", ["-w", "2", "--worker-connections", "100"]),
]
#: the systems measured, in this order in the tables; each row's note says what its one send per request does.
SYSTEMS = {
    "bgjob": "one send_job per request, PubAck awaited (JetStream file storage)",
    "celery-redis": "one send_task per request (Redis LPUSH)",
    "celery-rabbitmq": "one send_task per request, persistent message, publisher confirm awaited",
    "rq-simple": "one Queue.enqueue per request (Redis), result_ttl=0; the worker type does not matter here",
    "dramatiq-redis": "one broker.enqueue per request (Redis)",
    "huey-redis": "one task call per request (Redis LPUSH)",
    "taskiq-nats": "one task.kiq() per request, PubAck awaited, run on a private asyncio loop thread per gunicorn "
    "worker (taskiq's API is async only)",
}
BASELINE = "the same endpoint without a job"
#: seconds of driving per measurement, and of warming up each system in each launch.
SECONDS, QUICK_SECONDS, WARM_SECONDS = 2.5, 1.5, 1.0
#: a request that takes longer is a hung send: that system is skipped.
REQUEST_TIMEOUT = 20.0


def _free_port() -> int:
    from bgjob.server import free_port

    return free_port()


def _drive(port: int, path: str, seconds: float) -> Measurement:
    """GET requests for `seconds` from CLIENT_THREADS keep-alive connections; rate and per-request latency.

    Raises RuntimeError with the server's answer on a response other than 200 (the app answers 500 with the
    exception when a send fails)."""
    latencies: list[list[float]] = [[] for _ in range(CLIENT_THREADS)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLIENT_THREADS + 1)
    deadline = [0.0]

    def client(out: list[float]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        clock = time.perf_counter
        barrier.wait()
        try:
            i = 0
            while clock() < deadline[0]:
                start = clock()
                conn.request("GET", f"{path}?n={i}")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {body.decode(errors='replace')[:300]}")
                out.append(clock() - start)
                i += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(out,), daemon=True) for out in latencies]
    for t in threads:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    flat = [x for out in latencies for x in out]
    return Measurement.of_latencies(flat, rate=len(flat) / elapsed)


def _serve(
    ctx: Context, worker_class: str, extra: list[str], queues: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**ctx.to_env(), "BENCH_WSGI_QUEUES": json.dumps(queues),
           "PYTHONPATH": os.pathsep.join(filter(None, [ctx.bgjob_path, str(root)]))}  # fmt: skip
    proc = subprocess.Popen([gunicorn, "-k", worker_class, *extra, "--bind", f"127.0.0.1:{port}", "--log-level",
                             "warning", "bench.wsgi.app:application"], cwd=root, env=env)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/plain")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gunicorn -k {worker_class} did not start")


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, (Unavailable, RuntimeError)) else f"{type(exc).__name__}: {text}"


def _brokers(ctx: Context) -> str | None:
    """Make sure the peers' Redis and RabbitMQ are up (the run's services start them only for the peers
    scenario); returns the Redis URL to empty at the end when this scenario picked the database."""
    mine = None
    if not ctx.redis_url:
        found = ensure_redis()
        if found is not None:
            ctx.redis_url = mine = found[0]
    if not ctx.amqp_url:
        ctx.amqp_url = ensure_rabbitmq() or ""
    return mine


def _one_launch(ctx: Context, plan: Plan, worker_class: str, extra: list[str]) -> list[Row]:
    case = f"gunicorn -k {worker_class} {' '.join(extra)}, {CLIENT_THREADS} client threads"
    seconds = QUICK_SECONDS if plan.quick else SECONDS
    skipped: dict[str, str] = {}
    systems: dict[str, System] = {}
    queues: dict[str, str] = {}
    for name in SYSTEMS:
        system = load_system(name, ctx)
        queue = ctx.queue(f"wsgi-{worker_class}")
        try:
            system.check()
            system.producer(queue)  # the queue exists before the workers' first send (and cleanup knows it)
        except Exception as exc:  # noqa: BLE001 - Unavailable, or a broker that refuses: skip this system
            skipped[name] = _reason(exc)
            log(f"wsgi: -k {worker_class}: skipping {name}: {skipped[name]}")
            _close(system, queue)
            continue
        systems[name], queues[name] = system, queue
    measured: dict[str, list[Measurement]] = {"no job": [], **{name: [] for name in systems}}
    began = time.monotonic()
    try:
        proc, port = _serve(ctx, worker_class, extra, queues)
    except BaseException:
        for name, system in systems.items():
            _close(system, queues[name])
        raise
    try:
        _drive(port, "/plain", WARM_SECONDS)
        for name in systems:  # each worker process connects on its first send; then a warm-up
            try:
                _drive(port, f"/send/{name}", WARM_SECONDS)
            except Exception as exc:  # noqa: BLE001 - this system cannot run under this worker class
                skipped[name] = _reason(exc)
                log(f"wsgi: -k {worker_class}: skipping {name}: {skipped[name]}")
                measured.pop(name)
        log(f"wsgi: gunicorn -k {worker_class} up, {len(measured) - 1} systems warm ({time.monotonic() - began:.0f}s)")
        for rep in range(plan.reps):
            log(f"wsgi: gunicorn -k {worker_class}, repetition {rep + 1}/{plan.reps}")
            order = list(measured)
            shift = rep % len(order)
            for name in order[shift:] + order[:shift]:
                if name not in measured:
                    continue
                try:
                    measured[name].append(_drive(port, "/plain" if name == "no job" else f"/send/{name}", seconds))
                except Exception as exc:  # skip this system, go on with the others
                    if name == "no job":
                        raise
                    skipped[name] = _reason(exc)
                    log(f"wsgi: -k {worker_class}: {name} failed, skipping it: {skipped[name]}")
                    measured.pop(name)
    finally:
        proc.send_signal(signal.SIGQUIT)  # measured: no need to wait for the workers to finish gracefully
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log(f"wsgi: gunicorn -k {worker_class} stopped ({time.monotonic() - began:.0f}s after its launch)")
        for name, system in systems.items():
            _close(system, queues[name])

    plain = combine(measured.pop("no job"))
    rows = [Row(SCENARIO, case, "no job", plain, note="baseline: the same endpoint without a job")]
    for name in SYSTEMS:
        if name in measured:
            m = combine(measured[name])
            ratio = m.rate / plain.rate if m.rate and plain.rate else None
            rows.append(Row(SCENARIO, case, name, m, baseline=BASELINE, ratio=ratio, note=SYSTEMS[name]))
        elif name in skipped:
            rows.append(Row(SCENARIO, case, name, Measurement(), note=f"skipped: {skipped[name]}"))
    return rows


def _close(system: System, queue: str) -> None:
    """Remove the queue and release the driver's connections; a failure is logged, not raised."""
    try:
        system.cleanup(queue)
    except Exception as exc:  # noqa: BLE001 - cleaning up must not end the run
        log(f"wsgi: cleaning up {system.name} ({queue}): {exc!r}")
    try:
        system.close()
    except Exception as exc:  # noqa: BLE001 - as above
        log(f"wsgi: closing {system.name}: {exc!r}")


def run(ctx: Context, plan: Plan) -> list[Row]:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        log("wsgi: skipped (gunicorn is not installed: pip install -e '.[dev]')")
        return []
    redis_url = _brokers(ctx)
    rows: list[Row] = []
    try:
        for worker_class, extra in WORKERS:
            if worker_class == "gevent":
                try:
                    import gevent  # noqa: F401
                except ImportError:
                    log("wsgi: gevent skipped (not installed)")
                    continue
            try:
                rows += _one_launch(ctx, plan, worker_class, extra)
            except Exception as exc:  # noqa: BLE001 - go on with the other worker classes
                log(f"wsgi: gunicorn -k {worker_class} failed: {exc!r}")
    finally:
        if redis_url:
            flush_redis_db(redis_url)
    return rows
