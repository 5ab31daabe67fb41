"""Where the end-to-end latency goes (issue 21, goal 4): one producer thread sends at a steady rate and each job is
timed at four points: before `send_job`, when `send_job` returned (PubAck), when its delivery reached the worker's
event loop (`FetchLoop._on_message`, wrapped here), and when its handler started in a pool thread.

Part of `python -m bench --profile`; on its own: `python -m bench.breakdown` (private nats-server, bgjob as in the
working tree). The worker is a separate process, as in every scenario.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
import time

from .env import BENCH_DIR, Context
from .stats import percentile

RATE, SECONDS, CONCURRENCY = 500.0, 6.0, 16

_WORKER = r"""
import json, os, sys, time
from bench.env import Context
ctx = Context.from_env()
ctx.use_bgjob_snapshot()
import bgjob
from bgjob.worker import loop

queue, expect, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
arrived = {}
on_message = loop.FetchLoop._on_message

def stamped(self, pull, msg):
    if msg.reply:
        arrived[(msg.headers or {}).get("Bgjob-Id")] = time.time()
    on_message(self, pull, msg)

loop.FetchLoop._on_message = stamped
client = bgjob.Client(bgjob.Settings(url=ctx.nats_url, prefix=ctx.prefix)).connect()
mux = bgjob.Mux()
rows = []

@mux.handler("timed")
def timed(job):
    rows.append((job.id, job.arg["t"], arrived.get(job.id, 0.0), time.time()))
    if len(rows) == expect:
        with open(out + ".part", "w") as f:
            json.dump(rows, f)
        os.replace(out + ".part", out)  # whole or absent: the driver reads it once it exists
    return bgjob.Complete()

print("ready", flush=True)
bgjob.Worker(client, mux, queue=queue, concurrency=int(sys.argv[4])).run()
"""


def _percentiles(values: list[float]) -> str:
    p50, p90, p99 = (percentile(values, pct) for pct in (50, 90, 99))
    return f"p50 {p50:6.3f}  p90 {p90:6.3f}  p99 {p99:6.3f}  max {max(values):7.2f} ms"


def measure(ctx: Context, rate: float = RATE, seconds: float = SECONDS, concurrency: int = CONCURRENCY) -> str:
    """Send `rate` jobs/s for `seconds` to a worker process at `concurrency`; returns the report (text)."""
    import bgjob

    queue = ctx.queue("breakdown")
    n = int(rate * seconds)
    client = bgjob.Client(bgjob.Settings(url=ctx.nats_url, prefix=ctx.prefix)).connect()
    out = pathlib.Path(tempfile.mkdtemp()) / "rows.json"
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, queue, str(n), str(out), str(concurrency)],
                              env=ctx.to_env(), cwd=BENCH_DIR.parent, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # its pull requests are waiting
        returned: dict[str, float] = {}
        interval, start = 1.0 / rate, time.perf_counter()
        for i in range(n):
            due = start + i * interval
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            job_id = client.send_job("timed", {"i": i, "t": time.time()}, queue=queue)
            returned[job_id] = time.time()
        deadline = time.monotonic() + 60
        while not out.exists():
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the breakdown worker did not run every job")
            time.sleep(0.1)
        rows = json.loads(out.read_text())
    finally:
        worker.kill()
        worker.wait()
        client.close()
    ms = 1e3
    stages = {
        "send -> handler start": [(s - t) * ms for _, t, _, s in rows],
        "send -> send_job returned": [(returned[i] - t) * ms for i, t, _, _ in rows if i in returned],
        "send -> worker's loop": [(a - t) * ms for _, t, a, _ in rows if a],
        "worker's loop -> handler start": [(s - a) * ms for _, _, a, s in rows if a],
    }
    lines = [f"### e2e-breakdown: 1 producer thread at {rate:.0f} jobs/s for {seconds:.0f} s, worker concurrency "
             f"{concurrency} ({len(rows)} jobs)", ""]  # fmt: skip
    lines += [f"  {name:32} {_percentiles(values)}" for name, values in stages.items() if values]
    return "\n".join(lines) + "\n"


def main() -> None:
    from .env import nats_server

    with tempfile.TemporaryDirectory() as work, nats_server(pathlib.Path(work)) as url:
        print(measure(Context(nats_url=url, work_dir=work)))


if __name__ == "__main__":
    main()
