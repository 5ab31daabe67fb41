"""Scenario: delegated. What a handler outside the worker process costs per job (issue 19, from choria asyncjobs),
in one run: the same no-op jobs drained from a backlog by one worker (concurrency 1, so elapsed/jobs is the time
one job takes end to end: fetch, handler, ack) with an in-process handler, and with a request-reply handler
(`mux.request_reply`) answered by a Python (nats-py) service in another process on the same server; the
external-process row (`mux.external_process`) goes in `_external_process`. Each row gives jobs/s, µs per job and
the ratio to the in-process rate."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import bgjob

from ..env import Context
from ..stats import Measurement, Row, combine
from .common import Plan, log

SCENARIO = "delegated"
JOB_TYPE = "bench.delegated"

#: A request-reply service in Python (nats-py): replies `null` to every request; prints "ready" once subscribed.
RESPONDER = """
import asyncio, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    async def reply(msg):
        await msg.respond(b"null")
    await nc.subscribe(sys.argv[2], cb=reply)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

#: A case's setup: registers JOB_TYPE's handler on the mux and returns what stops what it started (None: the case
#: is not available and its row is left out).
Setup = Callable[[Context, bgjob.Mux], "Callable[[], None] | None"]


def _in_process(ctx: Context, mux: bgjob.Mux) -> Callable[[], None]:
    mux.handle(JOB_TYPE, lambda job: bgjob.Complete())
    return lambda: None


def _request_reply(ctx: Context, mux: bgjob.Mux) -> Callable[[], None]:
    subject = f"bench.delegated.{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen([sys.executable, "-c", RESPONDER, ctx.nats_url, subject], stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError("the nats-py responder did not start")
    mux.request_reply(JOB_TYPE, subject=subject, timeout=30)

    def stop() -> None:
        process.terminate()
        process.wait(10)

    return stop


def _external_process(ctx: Context, mux: bgjob.Mux) -> Callable[[], None] | None:
    """The external-process row: JOB_TYPE run by `mux.external_process` as a no-op `/bin/sh` script (a `/bin/true`
    that reads its stdin: the job's JSON), so a job costs a fork/exec of sh, the stdin write, the output reads
    and the reaping; returns what removes the script."""
    import shutil
    import tempfile
    from pathlib import Path

    directory = Path(tempfile.mkdtemp(prefix="bgjob-bench-"))
    program = directory / "noop.sh"
    program.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    program.chmod(0o755)
    mux.external_process(JOB_TYPE, [str(program)], timeout=30)
    return lambda: shutil.rmtree(directory, ignore_errors=True)


#: (name, what the row's case says, setup), the first is the baseline.
CASES: list[tuple[str, str, Setup]] = [
    ("in-process", "in-process", _in_process),
    ("request-reply", "request-reply to a nats-py service", _request_reply),
    ("external process", "external process", _external_process),
]


def run(ctx: Context, plan: Plan) -> list[Row]:
    jobs = 300 if plan.quick else 2000
    reps: dict[str, list[Measurement]] = {name: [] for name, _, _ in CASES}
    for rep in range(plan.reps):
        log(f"delegated: repetition {rep + 1}/{plan.reps}")
        for name, _, setup in CASES:  # alternated, so that drift hits every case alike
            measured = _drain(ctx, jobs, name, setup)
            if measured is not None:
                reps[name].append(measured)
    base_name, base_case, _ = CASES[0]
    base = combine(reps[base_name])
    base_us = base.extra["us_per_job"]
    prefix = f"{jobs} no-op jobs, concurrency 1"
    base_label = f"{prefix}: {base_case}"
    rows = [Row(SCENARIO, base_label, "bgjob", base, note=f"baseline: {base_us:.0f} µs/job")]
    for name, case, _ in CASES[1:]:
        if not reps[name]:
            continue
        m = combine(reps[name])
        ratio = (m.rate or 0) / (base.rate or 1)
        us = m.extra["us_per_job"]
        note = f"{us:.0f} µs/job vs {base_us:.0f} in-process: +{us - base_us:.0f} µs a job ({us / base_us:.2f}x)"
        log(f"delegated: {name}: {note}")
        rows.append(Row(SCENARIO, f"{prefix}: {case}", "bgjob", m, base_label, ratio, note))
    return rows


def _drain(ctx: Context, jobs: int, name: str, setup: Setup) -> Measurement | None:
    """Send `jobs` jobs to a fresh queue, then time one worker (concurrency 1) draining them with the case's
    handler; None when the case is not available."""
    queue = ctx.queue(name.replace(" ", "-"))
    done = threading.Semaphore(0)

    def count(job: bgjob.Job, call_next: Callable[[bgjob.Job], bgjob.Result]) -> bgjob.Result:
        result = call_next(job)
        done.release()
        return result

    mux = bgjob.Mux()
    stop = setup(ctx, mux)
    if stop is None:
        return None
    settings = bgjob.Settings(url=ctx.nats_url, prefix=ctx.prefix)
    producer = bgjob.Client(settings).connect()
    worker_client = bgjob.Client(settings).connect()
    try:
        producer.send_jobs([bgjob.JobSpec(JOB_TYPE, {"n": n}, queue=queue) for n in range(jobs)])
        worker = bgjob.Worker(worker_client, mux, queue=queue, concurrency=1, fetch_timeout=0.5, middleware=[count])
        start = time.perf_counter()
        thread = worker.start()
        for _ in range(jobs):
            if not done.acquire(timeout=120):
                raise RuntimeError(f"delegated: {name}: a job did not finish within 120 s")
        elapsed = time.perf_counter() - start
        worker.stop()
        thread.join(30)
        stream = producer._ensure()[1].topology.queue_stream(queue)

        async def delete(core: object) -> None:
            await core.js.delete_stream(stream)  # type: ignore[attr-defined]

        producer.run(delete)
    finally:
        stop()
        for c in (producer, worker_client):
            c.close()
    return Measurement(rate=jobs / elapsed, extra={"us_per_job": elapsed / jobs * 1e6})
