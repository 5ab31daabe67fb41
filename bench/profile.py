"""`python -m bench --profile`: py-spy profiles of send_job (1 and 8 threads) and of a worker draining a queue, and
where the end-to-end latency goes at a steady rate (`bench.breakdown`).

Writes py-spy's collapsed stacks (`*.txt`, open them with speedscope or flamegraph.pl) and a summary of
the functions that use the most CPU into bench/out/profile/.
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
import signal
import subprocess
import time

from . import breakdown
from .env import OUT_DIR, Context, WorkerProcess
from .scenarios.common import Plan, log, send_from_threads
from .systems import load_system

PROFILE_DIR = OUT_DIR / "profile"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    """`function (path/to/file.py)` without the line number and with a short path."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarize(path: pathlib.Path, top: int = 25) -> str:
    """The top functions by own samples and by inclusive samples, from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if "<module>" in stack or "importlib._bootstrap" in stack:
            continue  # start-up (imports), not the steady state we are after
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return f"{path.name}: no samples\n"
    out = [f"### {path.stem} ({total} samples)", "", "own time:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    out += ["", "inclusive (bgjob, nats and the runtime loop):"]
    picks = [(k, n) for k, n in inclusive.most_common() if any(s in k for s in ("bgjob/", "nats/", "asyncio/"))]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in picks[:top]]
    return "\n".join(out) + "\n"


class _SelfProfile:
    """py-spy attached to this process for the duration of a `with` block."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __enter__(self) -> _SelfProfile:
        argv = ["py-spy", "record", "--pid", str(os.getpid()), "--format", "raw", "--rate", "250", "--gil",
                "--nonblocking", "--output", str(self.path)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)


def run(ctx: Context, plan: Plan) -> None:
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    bg = load_system("bgjob", ctx)
    outputs = []
    for threads, n in ((1, plan.enqueue_seq * 2), (8, plan.enqueue_threads)):
        queue = ctx.queue("prof")
        send = bg.producer(queue)
        path = PROFILE_DIR / f"send_job-{threads}-threads.txt"
        log(f"profile: send_job from {threads} thread(s), {n} jobs")
        with _SelfProfile(path):
            m = send_from_threads(send, n, threads)
        log(f"profile: {m.rate:,.0f} jobs/s under the profiler")
        bg.cleanup(queue)
        outputs.append(path)
    jobs = plan.process * 3
    for concurrency in (1, 16, 64):
        queue = ctx.queue("prof")
        bg.fill(queue, jobs // 5 if concurrency == 1 else jobs)
        path = PROFILE_DIR / f"worker-concurrency-{concurrency}.txt"
        n = jobs // 5 if concurrency == 1 else jobs
        log(f"profile: a worker at concurrency {concurrency} draining {n} jobs")
        worker = WorkerProcess(ctx, "bgjob", queue, concurrency=concurrency, expect=n, latency_cap=1,
                               profile=path)  # fmt: skip
        try:
            result = worker.result(timeout=300)
            log(f"profile: {result['rate']:,.0f} jobs/s under the profiler")
        finally:
            worker.stop()
        bg.cleanup(queue)
        outputs.append(path)
    bg.close()
    log(f"profile: end-to-end latency breakdown at {breakdown.RATE:.0f} jobs/s")
    timings = breakdown.measure(ctx)
    (PROFILE_DIR / "e2e-breakdown.txt").write_text(timings)
    summary = "\n".join(summarize(p) for p in outputs if p.exists()) + "\n" + timings
    (PROFILE_DIR / "summary.txt").write_text(summary)
    print(summary)
    log(f"profiles in {PROFILE_DIR}")
