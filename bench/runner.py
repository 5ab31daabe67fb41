"""The worker side of every system: `python -m bench.runner SYSTEM QUEUE ...` (started by env.WorkerProcess).

Every system's no-op handler calls `Counter.hit(arg)`: it counts the job and, when the arg carries
`t` (the wall-clock time the job was sent, or was due), how late the handler started. The counter
lives in shared memory so that it also counts jobs run in forked children (RQ's default worker).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from .env import Context
from .stats import latency_summary
from .systems import load_system


class Counter:
    """Counts handler starts and their lateness; safe across threads and fork()."""

    def __init__(self, latency_cap: int) -> None:
        self._lock = multiprocessing.Lock()
        self._count = multiprocessing.RawValue("q", 0)
        self._first = multiprocessing.RawValue("d", 0.0)
        self._last = multiprocessing.RawValue("d", 0.0)
        self._cap = latency_cap
        self._late = multiprocessing.RawArray("d", max(1, latency_cap))
        self._n_late = multiprocessing.RawValue("q", 0)

    def hit(self, arg: Any) -> None:
        now = time.time()
        sent = arg.get("t") if isinstance(arg, dict) else None
        with self._lock:
            count = self._count.value + 1
            self._count.value = count
            if count == 1:
                self._first.value = now
            self._last.value = now
            if sent is not None and self._n_late.value < self._cap:
                self._late[self._n_late.value] = now - sent
                self._n_late.value += 1

    @property
    def count(self) -> int:
        return self._count.value

    def result(self) -> dict[str, Any]:
        with self._lock:
            count, first, last = self._count.value, self._first.value, self._last.value
            late = list(self._late[: self._n_late.value])
        elapsed = last - first
        return {
            "count": count,
            "first": first,
            "last": last,
            "rate": (count - 1) / elapsed if count > 1 and elapsed > 0 else None,
            "latency": latency_summary(late),
        }


def _watch(counter: Counter, expect: int, directory: pathlib.Path) -> None:
    """Write `result` once `expect` jobs have started; sample the count for windowed rates meanwhile."""
    samples: list[tuple[float, int]] = []
    next_sample = 0.0
    cpu_at_first: float | None = None
    while True:
        now = time.time()
        if cpu_at_first is None and counter.count:
            cpu_at_first = _cpu()
        if now >= next_sample:
            samples.append((now, counter.count))
            next_sample = now + 0.1
        if not expect and (directory / "expect").exists():
            expect = int((directory / "expect").read_text())
        if expect and counter.count >= expect:
            result = counter.result()
            result["samples"] = samples[-20000:]
            result["rss"] = _rss()
            cpu = _cpu() - (cpu_at_first or 0.0)
            elapsed = result["last"] - result["first"]
            result["cpu_us_per_job"] = 1e6 * cpu / max(1, result["count"])
            result["cpu_load"] = cpu / elapsed if elapsed > 0 else None
            tmp = directory / "result.tmp"
            tmp.write_text(json.dumps(result))
            tmp.replace(directory / "result")
            return
        time.sleep(0.002)


def _sum_over_tree(measure: Callable[[psutil.Process], float]) -> float:
    """`measure` summed over this process and its children; children that exit meanwhile count as 0."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += measure(proc)
    return total


def _cpu() -> float:
    """CPU seconds (user + system) used so far by this process and its children, live or exited and reaped
    (RQ's work horses)."""
    reaped = psutil.Process().cpu_times()
    return reaped.children_user + reaped.children_system + _sum_over_tree(lambda p: sum(p.cpu_times()[:2]))


def _rss() -> int:
    return int(_sum_over_tree(lambda p: p.memory_info().rss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("queue")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--expect", type=int, default=0, help="write the result after this many jobs (0: later)")
    parser.add_argument("--latency-cap", type=int, default=200_000)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    directory = pathlib.Path(args.dir)
    counter = Counter(args.latency_cap)
    ctx = Context.from_env()
    ctx.use_bgjob_snapshot()
    system = load_system(args.system, ctx)
    threading.Thread(target=_watch, args=(counter, args.expect, directory), daemon=True).start()

    def ready() -> None:
        tmp = directory / "ready.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "time": time.time()}))
        tmp.replace(directory / "ready")

    system.serve(args.queue, args.concurrency, counter.hit, ready)


if __name__ == "__main__":
    main()
