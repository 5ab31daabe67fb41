"""Scenario 8: the cost of bgjob per request under real gunicorn (sync, gthread, gevent workers).

The same tiny app serves /plain (no job) and /send (one send_job per request); a loopback client with
16 threads drives each. The ratio /send over /plain is what enqueueing a job costs a request.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import pathlib
import signal
import subprocess
import sys
import time

from ..env import Context
from ..stats import Measurement, Row, combine
from .common import Plan, log

SCENARIO = "wsgi"
CLIENT_THREADS = 16
WORKERS = [
    ("sync", ["-w", "4"]),
    ("gthread", ["-w", "2", "--threads", "8"]),
    ("gevent", ["-w", "2", "--worker-connections", "100"]),
]


def _free_port() -> int:
    from bgjob.server import free_port

    return free_port()


def _drive(port: int, path: str, n: int) -> Measurement:
    """n GET requests from CLIENT_THREADS keep-alive connections; rate and per-request latency."""
    per_thread = n // CLIENT_THREADS

    def client() -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies = []
        for i in range(per_thread):
            start = time.perf_counter()
            conn.request("GET", f"{path}?n={i}")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: HTTP {response.status}")
            latencies.append(time.perf_counter() - start)
        conn.close()
        return latencies

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        results = list(pool.map(lambda _: client(), range(CLIENT_THREADS)))
    elapsed = time.perf_counter() - start
    latencies = [x for r in results for x in r]
    return Measurement.of_latencies(latencies, rate=len(latencies) / elapsed)


def _serve(ctx: Context, worker_class: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**ctx.to_env(), "BGJOB_URL": ctx.nats_url, "BGJOB_PREFIX": ctx.prefix,
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


def run(ctx: Context, plan: Plan) -> list[Row]:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        log("wsgi: skipped (gunicorn is not installed: pip install -e '.[dev]')")
        return []
    n = 2000 if plan.quick else 8000
    rows: list[Row] = []
    for worker_class, extra in WORKERS:
        if worker_class == "gevent":
            try:
                import gevent  # noqa: F401
            except ImportError:
                log("wsgi: gevent skipped (not installed)")
                continue
        plain, send = [], []
        proc, port = _serve(ctx, worker_class, extra)
        try:
            _drive(port, "/send", 200)  # warm up: each worker connects to NATS on first use
            for rep in range(plan.reps):
                log(f"wsgi: gunicorn -k {worker_class}, repetition {rep + 1}/{plan.reps}")
                plain.append(_drive(port, "/plain", n))
                send.append(_drive(port, "/send", n))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        p, s = combine(plain), combine(send)
        case = f"gunicorn -k {worker_class} {' '.join(extra)}, {CLIENT_THREADS} client threads"
        rows.append(Row(SCENARIO, case, "no job", p, note="baseline: the same endpoint without send_job"))
        ratio = s.rate / p.rate if s.rate and p.rate else None
        rows.append(Row(SCENARIO, case, "bgjob", s, baseline="the same endpoint without a job", ratio=ratio,
                        note="one send_job (PubAck awaited) per request"))  # fmt: skip
    return rows
