"""Helpers shared by the reliability scenarios: record files, loss/duplicate tallies, the summary table,
raw NATS access (for what bgjob's API deliberately does not offer: raw publishes, consumer counters)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

#: BGJOB_RELIABILITY_FULL=1 runs the long version (the issue's numbers); the default fits in CI.
FULL = os.environ.get("BGJOB_RELIABILITY_FULL", "") not in ("", "0")


def scale(default: int, full: int) -> int:
    return full if FULL else default


# -- record files ---------------------------------------------------------------------------------------
def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a worker's record file (a line cut short by SIGKILL is ignored)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def done_ids(path: Path) -> list[str]:
    return [r["id"] for r in read_records(path) if r["ev"] == "done"]


@dataclass
class Tally:
    sent: int
    lost: list[str]
    #: completions beyond the first, summed over all jobs.
    duplicated: int

    def lost_message(self) -> str:
        return f"{len(self.lost)} of {self.sent} jobs never completed: {self.lost[:20]}"


def tally(sent: Iterable[str], completed: Iterable[str]) -> Tally:
    sent = list(sent)
    counts = collections.Counter(completed)
    lost = [job_id for job_id in sent if counts[job_id] == 0]
    duplicated = sum(n - 1 for job_id, n in counts.items() if n > 1)
    return Tally(sent=len(sent), lost=lost, duplicated=duplicated)


def wait_for_completion(path: Path, ids: Iterable[str], timeout: float) -> Tally:
    """Wait until every id has a 'done' record or `timeout` passes; the tally says what is missing."""
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        result = tally(ids, done_ids(path))
        if not result.lost or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


# -- the summary table ----------------------------------------------------------------------------------
@dataclass
class Row:
    scenario: str
    sent: int
    lost: int
    duplicated: int
    seconds: float
    note: str = ""


ROWS: list[Row] = []


@dataclass
class Scenario:
    """Times one scenario and adds its row to the table printed at the end of the run."""

    name: str
    started: float = field(default_factory=time.monotonic)

    def report(self, result: Tally, note: str = "") -> None:
        ROWS.append(Row(self.name, result.sent, len(result.lost), result.duplicated,
                        time.monotonic() - self.started, note))  # fmt: skip


def format_table(rows: list[Row]) -> list[str]:
    head = ("scenario", "jobs sent", "lost", "duplicated", "time (s)", "note")
    rows = sorted(rows, key=lambda r: r.scenario.split()[0])  # by scenario number, in the order they ran
    body = [(r.scenario, str(r.sent), str(r.lost), str(r.duplicated), f"{r.seconds:.1f}", r.note) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [head, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines


# -- raw NATS --------------------------------------------------------------------------------------------
def nats_call(url: str, fn: Callable[[Any, Any], Awaitable[Any]], **options: Any) -> Any:
    """`await fn(nc, js)` on a fresh raw connection (closed afterwards); a bounded helper for tests."""

    async def main() -> Any:
        nc = await nats.connect(url.split(","), connect_timeout=5, max_reconnect_attempts=2, **options)
        try:
            return await asyncio.wait_for(fn(nc, nc.jetstream(timeout=5)), timeout=60)
        finally:
            await nc.close()

    return asyncio.run(main())


def stream_name(prefix: str, queue: str = "default") -> str:
    return f"{prefix.upper()}_{queue.upper()}"


def consumer_name(prefix: str, queue: str = "default") -> str:
    return f"{prefix}-{queue}"


@dataclass(frozen=True)
class ConsumerCounts:
    pending: int
    ack_pending: int
    redelivered: int
    delivered: int


def consumer_counts(url: str, prefix: str, queue: str = "default", **options: Any) -> ConsumerCounts:
    async def read(_nc: Any, js: Any) -> ConsumerCounts:
        info = await js.consumer_info(stream_name(prefix, queue), consumer_name(prefix, queue))
        return ConsumerCounts(info.num_pending, info.num_ack_pending, info.num_redelivered,
                              info.delivered.consumer_seq)  # fmt: skip

    return nats_call(url, read, **options)


def queued_ids(url: str, prefix: str, queue: str = "default", **options: Any) -> list[str]:
    """Bgjob-Id of every job message still stored in the queue's stream (acked ones are gone: WorkQueue)."""
    import nats.js.errors

    async def read(_nc: Any, js: Any) -> list[str]:
        stream, subject, ids, seq = stream_name(prefix, queue), f"{prefix}.{queue}.job.>", [], 1
        while True:
            try:
                msg = await js.get_msg(stream, seq=seq, next=True, subject=subject)
            except nats.js.errors.NotFoundError:
                return ids
            ids.append((msg.headers or {}).get("Bgjob-Id", f"seq-{msg.seq}"))
            seq = msg.seq + 1

    return nats_call(url, read, **options)
