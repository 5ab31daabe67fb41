"""Helpers shared by the reliability scenarios: record files, loss/duplicate tallies, the summary table,
raw NATS access (for what bgjob's API deliberately does not offer: raw publishes, consumer counters)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from bgjob.server import EmbeddedServer, free_port

from ..conftest import wait_until

#: BGJOB_RELIABILITY_FULL=1 runs the long version (the issue's numbers); the default fits in CI.
FULL = os.environ.get("BGJOB_RELIABILITY_FULL", "") not in ("", "0")


def scale(default: int, full: int) -> int:
    return full if FULL else default


#: For scenarios whose behaviour the README's test command already covers faster (short ping settings, the error
#: mapping); here they run with the real defaults, in the long run only, so the default run stays under 2 minutes.
full_run_only = pytest.mark.skipif(not FULL, reason="long run only (BGJOB_RELIABILITY_FULL=1); covered faster in tests")


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
    # by scenario number ("6a" after "5b", "10" after "9"), in the order they ran within one number
    rows = sorted(rows, key=lambda r: int(re.match(r"\d*", r.scenario).group() or 0))
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


def stream_messages(url: str, prefix: str, queue: str = "default", **options: Any) -> int:
    """Messages stored in the queue's stream: jobs not yet acked (it is a WorkQueue stream). Unlike the consumer's
    counters this works before any worker has created the consumer (producers never do)."""

    async def read(_nc: Any, js: Any) -> int:
        return (await js.stream_info(stream_name(prefix, queue))).state.messages

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


# -- a 3-node cluster --------------------------------------------------------------------------------------
class ClusterNode(EmbeddedServer):
    """A cluster member that keeps its server name across restarts: JetStream's raft groups know their peers by
    server name, so a node restarted under a new name (EmbeddedServer picks a fresh one per start) would come
    back as a stranger and its old seat in every R3 group would stay empty."""

    def __init__(self, node_name: str, *args: Any, **kwargs: Any) -> None:
        self._node_name = node_name
        super().__init__(*args, **kwargs)

    @property
    def name(self) -> str:
        return self._node_name

    @name.setter
    def name(self, _value: str) -> None:
        pass  # EmbeddedServer names each start afresh; a cluster peer keeps its name


class Cluster:
    """Three JetStream nodes routed to each other on loopback ports, each with its own store."""

    def __init__(self, root: Path, size: int = 3) -> None:
        client_ports = [free_port() for _ in range(size)]
        route_ports = [free_port() for _ in range(size)]
        token = secrets.token_hex(4)
        self.nodes: list[ClusterNode] = []
        for i in range(size):
            routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(route_ports) if j != i)
            args = ["--cluster_name", "bgjob-rel", "--cluster", f"nats://127.0.0.1:{route_ports[i]}",
                    "--routes", routes]  # fmt: skip
            self.nodes.append(ClusterNode(f"rel-{token}-n{i}", root / f"n{i}", port=client_ports[i], extra_args=args))
        self.url = ",".join(f"nats://127.0.0.1:{p}" for p in client_ports)

    def start(self) -> None:
        for node in self.nodes:
            node.start(timeout=30)
        # JetStream answers only once the nodes have elected a meta leader.
        wait_until(self._meta_leader, timeout=60, message="a JetStream meta leader")

    def _meta_leader(self) -> bool:
        async def ask(_nc: Any, js: Any) -> None:
            await js.account_info()

        try:
            nats_call(self.url, ask)
        except Exception:  # noqa: BLE001 - not yet
            return False
        return True

    def node_named(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def stream_leader(self, stream: str) -> str | None:
        """The name of the stream's leader; None while there is none (an election is running)."""

        async def ask(_nc: Any, js: Any) -> str | None:
            return (await js.stream_info(stream)).cluster.leader or None

        try:
            return nats_call(self.url, ask)
        except Exception:  # noqa: BLE001 - no leader to answer yet
            return None

    def consumer_leader(self, stream: str, consumer: str) -> str | None:
        """The name of the consumer's leader; None while there is none."""

        async def ask(_nc: Any, js: Any) -> str | None:
            return (await js.consumer_info(stream, consumer)).cluster.leader or None

        try:
            return nats_call(self.url, ask)
        except Exception:  # noqa: BLE001 - no leader to answer yet
            return None

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
