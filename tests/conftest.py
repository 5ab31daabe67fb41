"""Shared fixtures: one real nats-server (JetStream, file storage, temp dir, free port) per session,
and a fresh topology prefix per test so tests never see each other's streams."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import bgjob
from bgjob.server import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server of this test alone, for tests that kill or restart it."""
    server = EmbeddedServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def proxy(nats_server: EmbeddedServer) -> Iterator[object]:
    """A loopback TCP proxy to the session's server that can be switched to drop every byte (a half-open link)."""
    from .reliability.proxy import BlackholeProxy

    with BlackholeProxy(nats_server.port) as p:
        yield p


@pytest.fixture
def link_events() -> Iterator[object]:
    """What bgjob logs about its connection ("disconnected", "reconnected"), with times."""
    from .reliability.proxy import LinkEvents

    events = LinkEvents()
    yield events
    events.close()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def make_client(nats_server: EmbeddedServer, prefix: str) -> Iterator[Callable[..., bgjob.Client]]:
    clients: list[bgjob.Client] = []

    def make(**overrides: object) -> bgjob.Client:
        options = {"url": nats_server.url, "prefix": prefix, "ack_wait": 5.0, "retry_for": 5.0, **overrides}
        client = bgjob.Client(bgjob.Settings(**options)).connect()  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., bgjob.Client]) -> bgjob.Client:
    return make_client()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., bgjob.Worker]]:
    """Start Workers in background threads; they are stopped and joined after the test."""
    running: list[tuple[bgjob.Worker, object]] = []

    def start(client: bgjob.Client, mux: bgjob.Mux, **options: object) -> bgjob.Worker:
        options.setdefault("retry_policy", bgjob.RetryPolicy(max_attempts=3, base_delay=0.05, jitter=0))
        options.setdefault("fetch_timeout", 0.5)
        worker = bgjob.Worker(client, mux, **options)  # type: ignore[arg-type]
        running.append((worker, worker.start()))
        return worker

    yield start
    for worker, thread in running:
        worker.stop()
        thread.join(timeout=30)  # type: ignore[attr-defined]
        assert not thread.is_alive(), "worker did not stop"  # type: ignore[attr-defined]


def run_mixed_outcomes(client: bgjob.Client, start_worker: Callable[..., bgjob.Worker], storage: object) -> None:
    """Run a worker with Recovery + Metrics(storage) over 3 successes, a retry-then-success, a MoveToDlq,
    an exception that exhausts max_attempts=2 and an unknown type; return once the 3 dead letters are in."""
    mux = bgjob.Mux()
    mux.handle("ok", lambda job: bgjob.Complete())
    mux.handle("flaky", lambda job: bgjob.Retry(0.05) if job.attempt == 1 else bgjob.Complete())
    mux.handle("dead", lambda job: bgjob.MoveToDlq("no"))

    def raises(job: bgjob.Job) -> bgjob.Result:
        raise RuntimeError("x")

    mux.handle("raises", raises)
    policy = bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0)
    start_worker(client, mux, middleware=[bgjob.Recovery(), bgjob.Metrics(storage)], retry_policy=policy)  # type: ignore[arg-type]
    for _ in range(3):
        client.send_job("ok", None)
    for job_type in ("flaky", "dead", "raises", "unknown-type"):
        client.send_job(job_type, None)
    wait_until(lambda: client.dlq.count() == 3, message="three dead letters")


def records(log: Path) -> list[dict]:
    """The JSON lines a test's worker processes appended to `log` (a line still being written is skipped)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, message: str = "condition") -> object:
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)


def drain(q: queue.Queue, count: int, timeout: float = 15.0) -> list:
    """Take `count` items from `q`, failing the test if they don't arrive in time."""
    items = []
    deadline = time.monotonic() + timeout
    for _ in range(count):
        remaining = deadline - time.monotonic()
        try:
            items.append(q.get(timeout=max(remaining, 0.01)))
        except queue.Empty:
            pytest.fail(f"got {len(items)} of {count} items within {timeout}s: {items!r}")
    return items


def drain_available(q: queue.Queue) -> list:
    """Everything `q` holds now, without waiting."""
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


def stream_ids(client: bgjob.Client, queue: str = "default") -> list[str]:
    """Bgjob-Id of every ready job in the queue's stream, in stream order."""
    import nats.js.errors

    async def read(core) -> list[str]:
        stream, subject, ids, seq = core.topology.queue_stream(queue), core.topology.job_filter(queue), [], 1
        while True:
            try:
                msg = await core.js.get_msg(stream, seq=seq, next=True, subject=subject)
            except nats.js.errors.NotFoundError:
                return ids
            ids.append(msg.headers["Bgjob-Id"])
            seq = msg.seq + 1

    return client.run(read)


def python_process(code: str, *args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen:
    """Start `python -c code args...` with the project importable."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=full_env, **kwargs)  # type: ignore[call-overload]


# -- the reliability suite's summary table -----------------------------------------------------------------
#: The summary's rows as the reports bring them: under pytest-xdist each test runs in a worker process, whose ROWS
#: the controller never sees, so every row travels with its test's report (user_properties) to the one summary.
REPORTED: list = []  # of tests.reliability.support.Row (imported in the hooks: support imports this module)
_ROW_PROPERTY = "bgjob_reliability_row"


_rows_sent = 0  # how many of this process's ROWS a report has carried


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    global _rows_sent
    from .reliability.support import ROWS

    outcome = yield
    if len(ROWS) > _rows_sent:  # rows added by this test (in its call or a fixture), sent once
        outcome.get_result().user_properties.extend((_ROW_PROPERTY, row.__dict__) for row in ROWS[_rows_sent:])
        _rows_sent = len(ROWS)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from .reliability.support import Row

    REPORTED.extend(Row(**value) for name, value in report.user_properties if name == _ROW_PROPERTY)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from .reliability.support import FULL, format_table

    if not REPORTED:
        return
    mode = "full (BGJOB_RELIABILITY_FULL=1)" if FULL else "default (set BGJOB_RELIABILITY_FULL=1 for the long run)"
    terminalreporter.section(f"bgjob reliability: {mode}")
    for line in format_table(REPORTED):
        terminalreporter.write_line(line)
    path = os.environ.get("BGJOB_RELIABILITY_REPORT")
    if path:
        Path(path).write_text(json.dumps([row.__dict__ for row in REPORTED], indent=2))
