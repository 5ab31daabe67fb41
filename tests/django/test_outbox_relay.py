"""The outbox relay (bgjob_django.relay) against a real nats-server and a real database (SQLite; PostgreSQL with
DATABASE_URL): jobs committed while NATS is down run once it is back; relays SIGKILLed mid-batch store every job
exactly once; a refused row is marked failed without holding back the rows after it; the backlog is shown."""

from __future__ import annotations

import base64
import io
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import transaction

import bgjob
from bgjob.server import EmbeddedServer
from bgjob_django import send_job, send_jobs
from bgjob_django.models import OutboxMessage
from bgjob_django.relay import Relay, backlog

from ..conftest import ROOT, stream_ids
from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def relay_thread(bgjob_settings: dict) -> Iterator[Callable[..., Relay]]:
    """Start Relays (the project's client) in threads; stopped and joined after the test."""
    from bgjob_django.conf import get_client

    running: list[tuple[threading.Event, threading.Thread]] = []

    def start(**options: object) -> Relay:
        relay = Relay(get_client(), **options)  # type: ignore[arg-type]
        stop = threading.Event()
        running.append((stop, relay.start(stop)))
        return relay

    yield start
    for stop, thread in running:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the relay did not stop"


def test_jobs_committed_while_nats_is_down_run_exactly_once_when_it_is_back(
    settings, own_server: EmbeddedServer, relay_thread: Callable[..., Relay], run_worker: Callable[..., object]
) -> None:
    from bgjob_django import conf

    from .testapp.models import Marker, Report

    settings.BGJOB = {**settings.BGJOB, "URL": own_server.url}
    conf.reset()
    own_server.stop()
    ids = []
    for n in range(100):  # a view's transaction each: its data and one outbox job
        with transaction.atomic():
            Marker.objects.create(name=f"order-{n}")
            ids.append(send_job("report", {"user": n}, outbox=True))
    assert OutboxMessage.objects.count() == 100 and Marker.objects.count() == 100
    relay_thread()
    wait_for(lambda: OutboxMessage.objects.filter(attempts__gt=0).exists(), timeout=30,
             message="the relay to try (and fail) while NATS is down")  # fmt: skip
    assert backlog().count == 100

    own_server.start()
    wait_for(lambda: not OutboxMessage.objects.exists(), timeout=60, message="the relay to publish every row")
    client = conf.get_client()
    assert Counter(stream_ids(client)) == Counter(ids), "each job stored exactly once"
    run_worker()
    wait_for(lambda: Report.objects.count() >= 100, timeout=60, message="every job to run")
    ran = Counter(Report.objects.values_list("job_id", flat=True))
    assert ran == Counter(ids), "every job ran exactly once"


def test_a_refused_row_is_marked_failed_and_does_not_hold_back_the_rows_after_it(bgjob_client: bgjob.Client) -> None:
    first = send_job("report", {"user": 1}, outbox=True)
    malformed = OutboxMessage.objects.create(job_id="malformed", queue="default", record={"v": 1, "body": "x"})
    big = bgjob_client.prepare_job(bgjob.JobSpec("report", {"user": 2}))
    record = big.to_record()
    record["body"] = base64.b64encode(b"x" * 2_000_000).decode()  # over the server's max_payload
    too_large = OutboxMessage.objects.create(job_id=big.job_id, queue="default", record=record)
    after = send_jobs([("report", {"user": n}) for n in range(3, 6)], outbox=True)

    relay = Relay(bgjob_client, batch=100)
    published = 0
    deadline = time.monotonic() + 30
    while OutboxMessage.objects.filter(failed_at__isnull=True).exists() and time.monotonic() < deadline:
        published += relay.run_once()
    assert published == 4
    assert sorted(stream_ids(bgjob_client)) == sorted([first, *after])
    failed = {m.id: m for m in OutboxMessage.objects.all()}
    assert set(failed) == {malformed.id, too_large.id}
    for row in failed.values():
        assert row.failed_at is not None and row.claimed_by is None and row.attempts == 1
    assert "record" in failed[malformed.id].last_error
    assert "JobTooLarge" in failed[too_large.id].last_error
    assert relay.run_once() == 0, "failed rows are never retried"
    assert backlog() == backlog().__class__(count=0, oldest_age_seconds=None, failed=2)


def test_a_relay_that_cannot_reach_nats_backs_off_and_leaves_the_rows_to_others(bgjob_client: bgjob.Client) -> None:
    """Found by an attack: a relay cut off from NATS claimed a fresh batch every 50 ms, holding each row for
    retry_for, so rows waited tens of seconds though a healthy relay was running."""
    from bgjob.server import free_port

    cut_off = bgjob.Client(bgjob.Settings(url=f"nats://127.0.0.1:{free_port()}", prefix=bgjob_client.settings.prefix,
                                          retry_for=0.5, connect_timeout=0.2))  # fmt: skip
    first = send_job("report", {"user": 1}, outbox=True)
    bad = Relay(cut_off)
    assert bad.run_once() == 0 and bad.unreachable  # `run` now waits (0.5 s, doubling) before it claims again
    send_job("report", {"user": 2}, outbox=True)
    good = Relay(bgjob_client)
    wait_for(lambda: good.run_once() or not OutboxMessage.objects.exists(), timeout=30, message="the rows sent")
    wait_for(lambda: (good.run_once() or True) and not OutboxMessage.objects.exists(), timeout=30,
             message="every row sent by the healthy relay")  # fmt: skip
    assert first in stream_ids(bgjob_client) and not good.unreachable
    cut_off.close()


def test_the_backlog_is_on_the_admin_overview_and_in_bgjob_status(admin_client, bgjob_client: bgjob.Client) -> None:
    bgjob_client.ensure_queue("default")
    send_jobs([("report", {"user": n}) for n in range(3)], outbox=True)
    OutboxMessage.objects.create(job_id="malformed", queue="default", record={}, failed_at="2026-01-01T00:00Z")
    status = io.StringIO()
    call_command("bgjob_status", stdout=status)
    assert "outbox: 3 waiting, oldest 0s, 1 failed" in status.getvalue()
    html = admin_client.get("/admin/bgjob_django/queue/").content.decode()
    assert 'data-outbox="count">3<' in html
    assert 'data-outbox="failed">1<' in html

    OutboxMessage.objects.all().delete()
    status = io.StringIO()
    call_command("bgjob_status", stdout=status)
    assert "outbox: 0 waiting, oldest -, 0 failed" in status.getvalue()


# -- relays in processes, SIGKILLed mid-batch ----------------------------------------------------------------
class RelayProcess:
    def __init__(self, proc: subprocess.Popen, out: Path, err: Path) -> None:
        self.proc, self.out, self.err = proc, out, err

    @property
    def relay_id(self) -> str:
        """The relay's id (host-pid-random), as it prints it at start."""
        text = self.out.read_text()
        return text.rsplit("(", 1)[1].split(")", 1)[0]

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"relay exited ({self.proc.returncode}):\n{self.out.read_text()}\n{self.err.read_text()}")
            return "bgjob relay:" in self.out.read_text()

        wait_for(ready, timeout=30, message="the relay to start")


@pytest.fixture
def relay_process(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start `manage.py bgjob_relay ARGS` subprocesses; SIGTERMed (and must exit) after the test."""
    started: list[RelayProcess] = []

    def start(*args: str) -> RelayProcess:
        n = len(started)
        out, err = tmp_path / f"relay{n}.out", tmp_path / f"relay{n}.err"
        proc = subprocess.Popen([sys.executable, "-m", "django", "bgjob_relay", *args], env=worker_env, cwd=ROOT,
                                stdout=out.open("w"), stderr=err.open("w"))  # fmt: skip
        relay = RelayProcess(proc, out, err)
        started.append(relay)
        relay.wait_ready()
        return relay

    yield start
    for relay in started:
        if relay.proc.poll() is None:
            relay.proc.send_signal(signal.SIGTERM)
        try:
            assert relay.proc.wait(30) in (0, -signal.SIGKILL), relay.err.read_text()
        except subprocess.TimeoutExpired:
            relay.proc.kill()
            relay.proc.wait()
            pytest.fail(f"relay did not stop on SIGTERM:\n{relay.err.read_text()}")


def test_relays_sigkilled_mid_batch_store_every_job_exactly_once(
    bgjob_client: bgjob.Client, relay_process: Callable[..., RelayProcess]
) -> None:
    bgjob_client.ensure_queue("default")
    args = ("--batch", "20", "--lease", "2", "--log-level", "WARNING")
    relays = [relay_process(*args), relay_process(*args)]
    ids: list[str] = []
    held_at_kill = 0
    for wave in range(5):
        ids += send_jobs([("report", {"user": wave, "n": n, "pad": "x" * 2000}) for n in range(300)], outbox=True)
        victim = relays[wave % 2]
        prefix = victim.relay_id + "-"
        deadline, held = time.monotonic() + 20, False
        while time.monotonic() < deadline:  # kill it while it holds leased rows, if the wave lasts that long
            if OutboxMessage.objects.filter(claimed_by__startswith=prefix).exists():
                held = True
                break
            if not OutboxMessage.objects.exists():
                break
        held_at_kill += held
        victim.proc.send_signal(signal.SIGKILL)
        assert victim.proc.wait(10) == -signal.SIGKILL
        relays[wave % 2] = relay_process(*args)
    wait_for(lambda: not OutboxMessage.objects.exists(), timeout=90, message="the outbox to empty")
    stored = Counter(stream_ids(bgjob_client))
    assert len(stored) == len(ids) == 1500
    assert set(stored) == set(ids), "no job lost"
    assert max(stored.values()) == 1, "no job stored twice"
    print(f"{held_at_kill} of 5 SIGKILLs hit a relay holding leased rows")
    assert held_at_kill >= 1, "no SIGKILL hit a relay holding leased rows: the test did not test the crash"
