"""Lifecycle events and job status by id (bgjob.events), end to end on a real nats-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats.js.errors
import pytest

import bgjob
from bgjob.events import ERROR_BYTES, EventKind, JobState
from bgjob.redaction import MASK

from .conftest import ROOT, python_process, wait_until

FAST_RETRIES = bgjob.RetryPolicy(max_attempts=5, base_delay=0.05, jitter=0)


def kinds(client: bgjob.Client, job_id: str) -> list[str]:
    return [event.kind.value for event in client.events(job_id=job_id, follow=False)]


def state(client: bgjob.Client, job_id: str) -> JobState:
    return client.job_status(job_id).state


def raw_events(client: bgjob.Client) -> list[bytes]:
    """Every message of the events stream as stored (bodies), read without bgjob's decoding."""

    async def read(core) -> list[bytes]:
        stream = core.topology.events_stream
        last = (await core.js.stream_info(stream)).state.last_seq
        return [(await core.js.get_msg(stream, seq)).data for seq in range(1, last + 1)]

    return client.run(read)


def stream_exists(client: bgjob.Client, name: str) -> bool:
    async def look(core) -> bool:
        try:
            await core.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return False
        return True

    return client.run(look)


def test_a_job_that_fails_twice_then_succeeds_has_exactly_these_events(make_client, start_worker) -> None:
    client = make_client(events=True)
    mux = bgjob.Mux()

    @mux.handler("flaky")
    def flaky(job: bgjob.Job) -> bgjob.Result:
        if job.attempt < 3:
            raise RuntimeError(f"failure {job.attempt}")
        return bgjob.Complete()

    worker = start_worker(client, mux, retry_policy=FAST_RETRIES)
    job_id = client.send_job("flaky", {"n": 1})
    wait_until(lambda: state(client, job_id) is JobState.SUCCEEDED, message="success")
    # An idle worker starts a job as soon as it is stored: its `started` must never come before `enqueued`.
    more = [client.send_job("flaky", {"n": i}) for i in range(20)]
    wait_until(lambda: all(state(client, i) is JobState.SUCCEEDED for i in more), message="the others' success")
    assert {tuple(kinds(client, i)) for i in more} == {("enqueued", "started", "retry_scheduled", "started",
                                                        "retry_scheduled", "started", "succeeded")}  # fmt: skip

    events = list(client.events(job_id=job_id, follow=False))
    assert [e.kind.value for e in events] == ["enqueued", "started", "retry_scheduled", "started", "retry_scheduled",
                                              "started", "succeeded"]  # fmt: skip
    assert [e.attempt for e in events] == [0, 1, 1, 2, 2, 3, 3]
    assert {e.job_type for e in events} == {"flaky"} and {e.queue for e in events} == {"default"}
    assert events[0].worker is None and {e.worker for e in events[1:]} == {worker.id}
    assert [e.error for e in events if e.kind is EventKind.RETRY_SCHEDULED] == ["RuntimeError: failure 1",
                                                                                 "RuntimeError: failure 2"]  # fmt: skip
    assert all(e.due is not None for e in events if e.kind is EventKind.RETRY_SCHEDULED)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    status = client.job_status(job_id)
    assert (status.attempt, status.event.kind, status.time) == (3, EventKind.SUCCEEDED, events[-1].time)
    assert client.queues() == ["default"]  # the events stream is no queue


def test_job_status_answers_every_state(make_client, start_worker) -> None:
    client = make_client(events=True)
    release = threading.Event()
    mux = bgjob.Mux()
    mux.handle("ok", lambda job: bgjob.Complete())
    mux.handle("slow", lambda job: bgjob.Complete() if release.wait(30) else bgjob.Retry(1))
    mux.handle("later", lambda job: bgjob.Retry(3600, error="not yet"))
    mux.handle("dead", lambda job: bgjob.MoveToDlq("bad input", reason="broken"))
    mux.handle("again", lambda job: bgjob.Reschedule(bgjob.ByAfterTime(3600)))

    assert client.job_status("no-such-job").state is JobState.UNKNOWN
    scheduled = client.send_job("ok", None, delay=3600)
    ready = client.send_job("ok", None, queue="idle")  # no worker serves "idle"
    assert state(client, scheduled) is JobState.SCHEDULED
    assert client.job_status(scheduled).due is not None
    assert state(client, ready) is JobState.READY

    start_worker(client, mux)
    running = client.send_job("slow", None)
    wait_until(lambda: state(client, running) is JobState.RUNNING, message="running")
    release.set()
    wait_until(lambda: state(client, running) is JobState.SUCCEEDED, message="succeeded")

    retrying = client.send_job("later", None)
    wait_until(lambda: state(client, retrying) is JobState.RETRY_SCHEDULED, message="retry scheduled")
    assert client.job_status(retrying).error == "not yet"

    dead = client.send_job("dead", None)
    wait_until(lambda: state(client, dead) is JobState.DEAD_LETTERED, message="dead-lettered")
    status = client.job_status(dead)
    assert (status.event.kind, status.event.reason, status.error) == (EventKind.DEAD_LETTERED, "broken", "bad input")

    rescheduled = client.send_job("again", None)
    wait_until(lambda: state(client, rescheduled) is JobState.SCHEDULED and client.job_status(rescheduled).event.kind
               is EventKind.RESCHEDULED, message="rescheduled")  # fmt: skip


WORKER = r"""
import sys
import bgjob

url, prefix, marker = sys.argv[1:4]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=2.0, events=True))
mux = bgjob.Mux()

@mux.handler("hang_once")
def hang_once(job):
    if job.attempt == 1:
        open(marker, "w").close()
        import time
        time.sleep(600)
    return bgjob.Complete()

bgjob.Worker(client, mux, fetch_timeout=0.5).run()
client.close()
"""


@pytest.fixture
def worker_process(nats_server, prefix, tmp_path):
    started: list[subprocess.Popen] = []

    def start(marker: Path) -> subprocess.Popen:
        proc = python_process(WORKER, nats_server.url, prefix, str(marker))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_job_status_after_a_worker_is_killed_mid_job(make_client, worker_process, tmp_path) -> None:
    client = make_client(events=True)
    marker = tmp_path / "running"
    first = worker_process(marker)
    job_id = client.send_job("hang_once", None)
    wait_until(marker.exists, timeout=30, message="the handler to start")
    wait_until(lambda: state(client, job_id) is JobState.RUNNING, message="running")
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    status = client.job_status(job_id)  # nobody settled it: it stays running until it is delivered again
    assert (status.state, status.attempt) == (JobState.RUNNING, 1)

    worker_process(marker)
    wait_until(lambda: state(client, job_id) is JobState.SUCCEEDED, timeout=30, message="the redelivery to succeed")
    assert kinds(client, job_id) == ["enqueued", "started", "started", "succeeded"]
    assert [e.attempt for e in client.events(job_id=job_id, follow=False)] == [0, 1, 2, 2]


def test_events_off_create_no_stream_and_status_is_unknown(client, start_worker) -> None:
    assert client.settings.events is False
    done = threading.Event()
    mux = bgjob.Mux()
    mux.handle("ok", lambda job: done.set() or bgjob.Complete())
    start_worker(client, mux)
    job_id = client.send_job("ok", None)
    assert done.wait(15)
    wait_until(lambda: client.queue_stats().pending + client.queue_stats().in_flight == 0, message="ack")
    assert not stream_exists(client, client._core.topology.events_stream)
    assert client.job_status(job_id).state is JobState.UNKNOWN
    assert list(client.events(follow=False)) == []


def test_hostile_values_never_reach_an_event(make_client, start_worker) -> None:
    client = make_client(events=True)
    secret, token = "hunter2-very-secret", "tok-abcdef-123456"
    mux = bgjob.Mux()

    @mux.handler("leaky")
    def leaky(job: bgjob.Job) -> bgjob.Result:
        raise ValueError(f"login failed for {job.arg['password']} with {token} " + "x" * 100_000)

    start_worker(client, mux, retry_policy=bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0))
    job_id = client.send_job("leaky", {"user": "ann", "password": secret, "note": "plain-arg-text"},
                             sensitive=["password"], headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    wait_until(lambda: state(client, job_id) is JobState.DEAD_LETTERED, message="dead-lettered")

    raw = raw_events(client)
    assert len(raw) == 5  # enqueued, started, retry_scheduled, started, dead_lettered
    for body in raw:
        assert secret.encode() not in body and token.encode() not in body and b"plain-arg-text" not in body
        assert len(body) < ERROR_BYTES + 600
    errors = [e.error for e in client.events(job_id=job_id, follow=False) if e.error]
    assert len(errors) == 2
    assert all(e.startswith(f"ValueError: login failed for {MASK} with {MASK} xxx") and "[cut " in e for e in errors)
    assert client.dlq.get(job_id).error.startswith(f"ValueError: login failed for {MASK} with {MASK}")


def test_events_filter_by_queue_type_and_job_on_the_server(make_client) -> None:
    client = make_client(events=True)
    a = client.send_job("report.daily", None, queue="one")
    b = client.send_job("report.daily", None, queue="two")
    c = client.send_job("mail", None, queue="one")
    wait_until(lambda: state(client, c) is JobState.READY, message="the last event")  # one connection: in order
    assert [e.job_id for e in client.events(queue="one", follow=False)] == [a, c]
    assert [e.job_id for e in client.events(job_type="report.daily", follow=False)] == [a, b]
    assert [e.job_id for e in client.events(queue="two", job_type="report.daily", follow=False)] == [b]
    assert [e.job_id for e in client.events(job_id=c, follow=False)] == [c]
    assert list(client.events(queue="three", follow=False)) == []
    ahead = datetime.now(UTC) + timedelta(seconds=60)
    assert list(client.events(since=ahead, timeout=0.2)) == []  # from a minute ahead: nothing yet

    seen: list[str] = []
    follower = threading.Thread(target=lambda: seen.extend(e.job_id for e in client.events(queue="two", timeout=5)))
    follower.start()
    d = client.send_job("mail", None, queue="two")
    wait_until(lambda: d in seen, message="the followed event")
    assert seen[:2] == [b, d]
    follower.join(10)


def test_a_job_the_server_refuses_leaves_no_enqueued_event(make_client) -> None:
    client = make_client(events=True)
    first = client.send_job("ok", None, queue="full")
    wait_until(lambda: state(client, first) is JobState.READY, message="the first event")

    async def cap(core) -> None:  # an operator's limit the producer cannot know: the server refuses on publish
        name = core.topology.queue_stream("full")
        config = (await core.js.stream_info(name)).config
        config.max_msg_size = 1024
        await core.js.update_stream(config)

    client.run(cap)
    with pytest.raises(bgjob.BgjobError):
        client.send_job("ok", "x" * 5000, queue="full", job_id="refused-job")
    assert [e.job_id for e in client.events(follow=False)] == [first]
    assert client.job_status("refused-job").state is JobState.UNKNOWN
    again = client.send_job("ok", None, queue="full", job_id=first)  # a duplicate inside the window: no new event
    assert again == first and kinds(client, first) == ["enqueued"]


def test_events_settings_are_validated() -> None:
    with pytest.raises(bgjob.ConfigurationError, match="events must be True or False"):
        bgjob.Settings(events="yes")  # type: ignore[arg-type]
    with pytest.raises(bgjob.ConfigurationError, match="events_max_age"):
        bgjob.Settings(events_max_age=0)
    assert bgjob.Settings(events=True).events_max_age == 3 * 24 * 3600.0


def test_events_are_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("BGJOB_EVENTS", "1")
    monkeypatch.setenv("BGJOB_EVENTS_MAX_AGE", "3600")
    settings = bgjob.Settings.from_env()
    assert (settings.events, settings.events_max_age) == (True, 3600.0)
    monkeypatch.setenv("BGJOB_EVENTS", "maybe")
    with pytest.raises(bgjob.ConfigurationError, match="BGJOB_EVENTS"):
        bgjob.Settings.from_env()


def test_event_json_is_small_and_round_trips(make_client) -> None:
    client = make_client(events=True)
    job_id = client.send_job("ok", {"big": "y" * 10_000})
    wait_until(lambda: state(client, job_id) is JobState.READY, message="the event")  # published without a PubAck
    (body,) = raw_events(client)
    record = json.loads(body)
    assert set(record) == {"kind", "id", "type", "queue", "attempt", "time"} and record["id"] == job_id
    assert len(body) < 200


def bgjob_cli(nats_server, prefix: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "BGJOB_EVENTS": "1",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "bgjob", "--log-level", "WARNING", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_cli_events_and_job_print_what_happened(nats_server, prefix, make_client, start_worker) -> None:
    client = make_client(events=True)
    mux = bgjob.Mux()
    mux.handle("ok", lambda job: bgjob.Complete())
    start_worker(client, mux)
    job_id = client.send_job("ok", None)
    other = client.send_job("ok", None, queue="elsewhere")
    wait_until(lambda: state(client, job_id) is JobState.SUCCEEDED, message="success")
    wait_until(lambda: state(client, other) is JobState.READY, message="the other job's event")

    out = bgjob_cli(nats_server, prefix, "events", "--queue", "default")
    assert out.returncode == 0, out.stderr
    assert [line.split()[2] for line in out.stdout.splitlines()] == ["enqueued", "started", "succeeded"]
    assert other not in out.stdout
    out = bgjob_cli(nats_server, prefix, "events", "--job", other, "--json", "--since", "1h")
    assert [json.loads(line)["kind"] for line in out.stdout.splitlines()] == ["enqueued"]

    out = bgjob_cli(nats_server, prefix, "job", job_id)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"job {job_id}: succeeded (attempt 1, last event succeeded at ")
    assert out.stdout.count(job_id) == 4
    unknown = bgjob_cli(nats_server, prefix, "job", "nope")
    assert "unknown" in unknown.stdout and unknown.returncode == 1  # scripts can tell
    with pytest.raises(ValueError, match="timeout must be seconds"):
        client.events(timeout=-1)
    with pytest.raises(ValueError, match="since must be a timedelta back from now"):
        client.events(since=timedelta(seconds=-5))


def test_cli_events_follow_prints_new_events(nats_server, prefix, make_client) -> None:
    client = make_client(events=True)
    env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bgjob", "--log-level", "WARNING", "events", "--follow"], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        job_id = client.send_job("ok", None)
        wait_until(lambda: any(job_id in line for line in lines), message="the followed event")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


def test_event_body_round_trips_hostile_error_text_and_cut_errors_say_so() -> None:
    from datetime import datetime, timezone

    from bgjob.events import Event, cut_error, event_body

    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    error = 'ValueError: "quoted" \\ back\nslash, ünïcode, \u2028 and \x00'
    body = event_body(EventKind.DEAD_LETTERED, "id-1", "a.b", "q", 3, now, "w-1", error, "handler", now)
    event = Event.from_json(body, seq=7)
    assert (event.kind, event.job_id, event.job_type, event.queue, event.attempt, event.time, event.worker,
            event.error, event.reason, event.due, event.seq) == (EventKind.DEAD_LETTERED, "id-1", "a.b", "q", 3, now,
                                                                  "w-1", error, "handler", now, 7)  # fmt: skip
    assert Event.from_json(event.to_json()) == Event.from_json(body)
    cut = cut_error("é" * 1000, 1001)
    assert cut.startswith("é" * 500) and cut.endswith("…[cut 999 bytes]") and len(cut.encode()) < 1030


def test_an_enqueued_job_is_scheduled_until_it_is_due_then_ready() -> None:
    from datetime import datetime, timezone

    from bgjob.events import Event, state_of

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    sent = Event(EventKind.ENQUEUED, "j", "t", "q", 0, now, due=now + timedelta(seconds=60))
    assert state_of(sent, now) is JobState.SCHEDULED
    assert state_of(sent, now + timedelta(seconds=61)) is JobState.READY
    assert state_of(None) is JobState.UNKNOWN
    expected = {
        EventKind.STARTED: JobState.RUNNING,
        EventKind.HANDED_BACK: JobState.READY,
        EventKind.RESCHEDULED: JobState.SCHEDULED,
        EventKind.DEADLINE_EXPIRED: JobState.DEAD_LETTERED,
    }
    for kind, job_state in expected.items():
        assert state_of(Event(kind, "j", "t", "q", 1, now)) is job_state


def test_a_retry_or_reschedule_past_its_due_time_is_ready() -> None:
    """Like a delayed job, a job waiting for a retry or a reschedule is no longer waiting once its due time has
    passed: it is in its queue for a worker (`ready`), not `retry_scheduled`/`scheduled` at a time gone by."""
    from datetime import datetime, timezone

    from bgjob.events import Event, state_of

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    due = now + timedelta(seconds=60)
    for kind, waiting in ((EventKind.RETRY_SCHEDULED, JobState.RETRY_SCHEDULED),
                          (EventKind.RESCHEDULED, JobState.SCHEDULED)):  # fmt: skip
        event = Event(kind, "j", "t", "q", 1, now, due=due)
        assert state_of(event, now) is waiting
        assert state_of(event, due - timedelta(microseconds=1)) is waiting
        assert state_of(event, due) is JobState.READY
        assert state_of(event, due + timedelta(days=1)) is JobState.READY


def test_job_status_of_a_retry_nobody_took_after_its_due_time_is_ready(make_client, start_worker) -> None:
    client = make_client(events=True)
    mux = bgjob.Mux()
    mux.handle("later", lambda job: bgjob.Complete() if job.attempt > 1 else bgjob.Retry(2, error="not yet"))
    first = start_worker(client, mux)
    job_id = client.send_job("later", None)
    wait_until(lambda: state(client, job_id) is JobState.RETRY_SCHEDULED, message="retry scheduled")
    first.stop()  # no worker left to take the retry when it is due
    due = client.job_status(job_id).due
    wait_until(lambda: datetime.now(UTC) > due, message="the retry's due time")
    status = client.job_status(job_id)
    assert (status.state, status.event.kind, status.attempt) == (JobState.READY, EventKind.RETRY_SCHEDULED, 1)
    start_worker(client, mux)
    wait_until(lambda: state(client, job_id) is JobState.SUCCEEDED, message="the retry run by another worker")


def test_the_events_stream_is_capped_in_bytes_so_events_never_starve_the_queues(make_client) -> None:
    """Attacker review: with only a max age, events at a high job rate filled the server's storage until sends
    failed with StorageFull. The stream holds at most events_max_bytes; the oldest events go first."""
    from bgjob.events import ensure_events_stream

    client = make_client(events=True, events_max_bytes=2 << 20)

    async def config(core):
        await ensure_events_stream(core)
        return (await core.js.stream_info(core.topology.events_stream)).config

    stream = client.run(config)
    assert stream.max_bytes == 2 << 20 and str(getattr(stream.discard, "value", stream.discard)) == "old"
    assert bgjob.Settings().events_max_bytes == 1 << 30
    with pytest.raises(bgjob.ConfigurationError, match="events_max_bytes must be an int >= 1048576"):
        bgjob.Settings(events_max_bytes=1000)


def test_job_status_of_a_placed_job_says_which_claim_it_waits_for(nats_server, prefix, make_client) -> None:
    from bgjob.cli import job_status_lines

    client = make_client(events=True)
    placed = client.send_job("sync", 1, target="primary")
    plain = client.send_job("sync", 2)
    later = client.send_job("sync", 3, target="region/eu", delay=3600)
    second = client.send_job("sync", 4, target="primary")
    wait_until(lambda: state(client, second) is JobState.READY, message="the enqueued events")
    assert state(client, later) is JobState.SCHEDULED
    for job_id, claim in ((placed, "primary"), (later, "region/eu"), (second, "primary")):
        assert f"  waiting for a worker with claim {claim!r}" in job_status_lines(client, job_id), job_id
    assert not any("waiting for" in line for line in job_status_lines(client, plain))
    out = bgjob_cli(nats_server, prefix, "job", placed)
    assert out.returncode == 0 and "\n  waiting for a worker with claim 'primary'\n" in out.stdout, out.stderr
