"""Who owns a queue's configuration: provisioning creates what is missing and never changes what exists,
producers never touch consumers, workers run with the server's values, and `configure_queue` (also
`bgjob queue configure`) is the one explicit way to change them. Plus the `retrying` count of QueueStats."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import nats.js.errors
import pytest

import bgjob
from bgjob.core import Core
from bgjob.topology import queue_stream_config

from .conftest import ROOT, wait_until

DIFFERS = "differs from this process's settings"


def consumer_exists(client: bgjob.Client, queue: str = "default") -> bool:
    async def exists(core: Core) -> bool:
        try:
            await core.js.consumer_info(core.topology.queue_stream(queue), core.topology.consumer(queue))
        except nats.js.errors.NotFoundError:
            return False
        return True

    return client.run(exists)


def stream_config(client: bgjob.Client, queue: str = "default"):
    async def read(core: Core):
        return (await core.js.stream_info(core.topology.queue_stream(queue))).config

    return client.run(read)


def warnings_about(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and what in r.getMessage()]


def test_a_worker_with_default_settings_runs_with_a_configured_queue_without_a_warning(
    make_client: Callable[..., bgjob.Client], caplog: pytest.LogCaptureFixture
) -> None:
    """After `bgjob queue configure default --ack-wait 60`, workers that never asked for an ack_wait (the default)
    run with 60 s and say so at INFO: no warning telling the operator to undo what they configured."""
    client = make_client(ack_wait=bgjob.Settings().ack_wait, duplicate_window=bgjob.Settings().duplicate_window)
    client.configure_queue("default", ack_wait=60, duplicate_window=30)
    with caplog.at_level(logging.INFO, logger="bgjob"):
        config = client.run(Core.ensure_consumer, "default")
        make_client(ack_wait=bgjob.Settings().ack_wait).send_job("report", None)
    assert config.ack_wait == 60.0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    info = [r.getMessage() for r in caplog.records if "is configured with" in r.getMessage()]
    assert any("ack_wait 60s" in line for line in info) and any("duplicate_window 30s" in line for line in info)


def publish_retry_schedule(client: bgjob.Client, job_id: str, job_type: str = "report", queue: str = "default") -> None:
    """What a worker stores for a job backing off: an `@at` schedule on the retry subject, far in the future."""

    async def publish(core: Core) -> None:
        await core.ensure_queue(queue)
        await core.js.publish(core.topology.retry_subject(queue, job_id, "1-1"), b"{}", headers={
            "Nats-Schedule": "@at 2099-01-01T00:00:00Z",
            "Nats-Schedule-Target": core.topology.job_subject(queue, job_type),
            "Bgjob-Id": job_id,
        })  # fmt: skip

    client.run(publish)


# -- fault 5: one process's settings silently rewrote another's consumer --------------------------------------------
def test_a_producer_with_a_shorter_ack_wait_does_not_make_a_running_long_job_run_again(
    make_client: Callable[..., bgjob.Client], start_worker: Callable[..., bgjob.Worker]
) -> None:
    """A worker with ack_wait=4 runs a 3 s job; a producer with ack_wait=1 sends a job meanwhile. Before, its
    provisioning rewrote the consumer to 1 s and the long job ran again and again (attempts 1, 2, 3)."""
    worker_client = make_client(ack_wait=4.0)
    runs: list[tuple[str, int]] = []
    lock = threading.Lock()
    started = threading.Event()

    def long_job(job: bgjob.Job) -> bgjob.Result:
        with lock:
            runs.append((job.type, job.attempt))
        started.set()
        time.sleep(3.0)  # the job's own work: well past the producer's ack_wait
        return bgjob.Complete()

    def short_job(job: bgjob.Job) -> bgjob.Result:
        with lock:
            runs.append((job.type, job.attempt))
        return bgjob.Complete()

    mux = bgjob.Mux()
    mux.handle("long", long_job)
    mux.handle("short", short_job)
    start_worker(worker_client, mux, concurrency=4)
    worker_client.send_job("long", None)
    assert started.wait(15), "the long job did not start"

    producer = make_client(ack_wait=1.0)
    producer.send_job("short", None)

    wait_until(lambda: ("short", 1) in runs, message="the short job")
    wait_until(lambda: (s := worker_client.queue_stats()).in_flight + s.pending == 0, message="both jobs settled")
    assert sorted(runs) == [("long", 1), ("short", 1)]
    assert producer.queue_config().ack_wait == 4.0


@pytest.mark.parametrize(
    ("field", "first", "second", "flag"),
    [("ack_wait", 4.0, 2.0, "--ack-wait 2"), ("max_ack_pending", 5, 1, "--max-ack-pending 1")],
)
def test_a_worker_with_other_consumer_settings_runs_with_the_servers_and_says_so_once(
    make_client: Callable[..., bgjob.Client], caplog: pytest.LogCaptureFixture, field, first, second, flag
) -> None:
    first_client, second_client = make_client(**{field: first}), make_client(**{field: second})
    assert getattr(first_client.run(Core.ensure_consumer, "default"), field) == first  # the first worker creates it

    with caplog.at_level(logging.WARNING, logger="bgjob"):
        second_client.send_job("report", None)  # a producer: never looks at the consumer
        assert warnings_about(caplog, "consumer") == []
        config = second_client.run(Core.ensure_consumer, "default")  # a worker starting with other settings

    assert getattr(config, field) == first, "the worker runs with the server's value"
    assert getattr(first_client.run(Core.ensure_consumer, "default"), field) == first, "the consumer is unchanged"
    [warning] = warnings_about(caplog, "consumer")
    assert DIFFERS in warning and f"{field} " in warning
    assert str(first).rstrip("0").rstrip(".") in warning and str(second).rstrip("0").rstrip(".") in warning
    assert f"bgjob queue configure default {flag}" in warning and "client.configure_queue('default'" in warning


def test_a_consumer_differing_in_several_fields_gets_one_warning_naming_each(
    make_client: Callable[..., bgjob.Client], caplog: pytest.LogCaptureFixture
) -> None:
    make_client(ack_wait=4.0, max_ack_pending=5).run(Core.ensure_consumer, "default")
    with caplog.at_level(logging.WARNING, logger="bgjob"):
        config = make_client(ack_wait=2.0, max_ack_pending=1).run(Core.ensure_consumer, "default")
    assert (config.ack_wait, config.max_ack_pending) == (4.0, 5)
    [warning] = warnings_about(caplog, DIFFERS)
    assert "ack_wait 4s (this process: 2s)" in warning and "max_ack_pending 5 (this process: 1)" in warning
    assert "--ack-wait 2 --max-ack-pending 1" in warning


@pytest.mark.parametrize(
    ("field", "first", "second", "server_field", "shown"),
    [
        ("replicas", 1, 3, "num_replicas", "replicas 1 (this process: 3)"),
        ("duplicate_window", 30.0, 60.0, "duplicate_window", "duplicate_window 30s (this process: 60s)"),
    ],
)
def test_an_existing_stream_with_other_settings_is_left_alone_with_a_warning(
    make_client: Callable[..., bgjob.Client], caplog: pytest.LogCaptureFixture, field, first, second, server_field,
    shown,
) -> None:  # fmt: skip
    creator = make_client(**{field: first})
    creator.ensure_queue()
    with caplog.at_level(logging.WARNING, logger="bgjob"):
        other = make_client(**{field: second})
        other.send_job("report", None)
        other.ensure_queue()
        other.queue_stats()
    assert getattr(stream_config(creator), server_field) == first
    [warning] = warnings_about(caplog, "stream")  # once per process, not once per call
    assert shown in warning and "left as it is" in warning
    assert f"bgjob queue configure default --{field.replace('_', '-')}" in warning
    assert other.queue_stats().pending == 1


def test_a_stream_without_message_schedules_is_not_switched_on_behind_the_operators_back(
    client: bgjob.Client, caplog: pytest.LogCaptureFixture
) -> None:
    async def create_without_schedules(core: Core) -> None:
        config = queue_stream_config(core.topology, core.settings, "default")
        await core.js.add_stream(config.evolve(allow_msg_schedules=False))

    client.run(create_without_schedules)
    with caplog.at_level(logging.WARNING, logger="bgjob"):
        client.ensure_queue()
    assert not stream_config(client).allow_msg_schedules
    [warning] = warnings_about(caplog, "stream")
    assert "allow_msg_schedules off (this process: on)" in warning and "--allow-msg-schedules" in warning

    assert client.configure_queue(allow_msg_schedules=True) == {"allow_msg_schedules": (False, True)}
    assert stream_config(client).allow_msg_schedules
    client.send_job("report", None, delay=60)
    assert client.queue_stats().scheduled == 1


def test_an_existing_dlq_stream_with_other_settings_is_left_alone_with_a_warning(
    make_client: Callable[..., bgjob.Client], caplog: pytest.LogCaptureFixture
) -> None:
    make_client(dlq_max_age=3600.0).run(Core.ensure_dlq)
    other = make_client()
    with caplog.at_level(logging.WARNING, logger="bgjob"):
        other.run(Core.ensure_dlq)

    async def max_age(core: Core) -> float:
        return (await core.js.stream_info(core.topology.dlq_stream)).config.max_age

    assert other.run(max_age) == 3600.0
    [warning] = warnings_about(caplog, "DLQ stream")
    assert "dlq_max_age 3600s" in warning and "left as it is" in warning


def test_producing_never_creates_the_consumer_and_stats_count_what_waits_in_the_stream(
    client: bgjob.Client, start_worker: Callable[..., bgjob.Worker]
) -> None:
    client.send_job("report", 1)
    client.send_jobs([("report", 2), ("mail", 3)])
    client.send_job("report", 4, delay=timedelta(hours=1))
    client.schedule("nightly", "0 3 * * *", "report")
    client.ensure_queue()
    stats = client.queue_stats()
    assert (stats.pending, stats.in_flight, stats.retrying, stats.scheduled) == (3, 0, 0, 2)
    assert client.queues() == ["default"] and client.queue_config().consumer is None
    assert not consumer_exists(client)

    done: list[int] = []
    mux = bgjob.Mux()
    mux.handle("report", lambda job: done.append(job.arg) or bgjob.Complete())
    mux.handle("mail", lambda job: done.append(job.arg) or bgjob.Complete())
    start_worker(client, mux)  # the first worker creates the consumer; it gets the jobs sent before it
    wait_until(lambda: sorted(done) == [1, 2, 3], message="the jobs sent before any worker ran")
    assert consumer_exists(client)


def test_ensure_consumer_recreates_the_stream_and_consumer_after_the_stream_was_deleted(client: bgjob.Client) -> None:
    assert client.run(Core.ensure_consumer, "default").ack_wait == 5.0

    async def delete_stream(core: Core) -> None:
        await core.js.delete_stream(core.topology.queue_stream("default"))

    client.run(delete_stream)
    assert client.run(Core.ensure_consumer, "default").ack_wait == 5.0  # the stream is known to this process
    assert consumer_exists(client)


# -- configure_queue: the explicit way -----------------------------------------------------------------------------
def test_configure_queue_changes_the_consumer_and_stream_and_reports_old_and_new(
    make_client: Callable[..., bgjob.Client],
) -> None:
    client = make_client(ack_wait=5.0)
    client.run(Core.ensure_consumer, "default")
    changed = client.configure_queue("default", ack_wait=timedelta(seconds=9), max_ack_pending=7, duplicate_window=60)
    assert changed == {"duplicate_window": (120.0, 60.0), "ack_wait": (5.0, 9.0), "max_ack_pending": (1000, 7)}
    config = client.queue_config()
    assert (config.ack_wait, config.max_ack_pending, config.duplicate_window) == (9.0, 7, 60.0)
    assert client.configure_queue("default", ack_wait=9) == {}, "nothing left to change"
    assert client.configure_queue("default") == {}
    # a worker started afterwards with its own settings runs with the configured values
    assert make_client(ack_wait=3.0).run(Core.ensure_consumer, "default").ack_wait == 9.0


def test_configure_queue_before_any_worker_creates_the_consumer_with_the_given_values(
    make_client: Callable[..., bgjob.Client],
) -> None:
    client = make_client(ack_wait=5.0)
    assert client.configure_queue("mail", replicas=1) == {}
    assert client.queue_config("mail").consumer is None, "only a consumer field creates the consumer"
    assert client.configure_queue("mail", ack_wait=3) == {"ack_wait": (None, 3.0)}
    assert client.run(Core.ensure_consumer, "mail").ack_wait == 3.0


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"ack_wait": "10"}, "ack_wait must be seconds"),
        ({"ack_wait": 0.5}, "ack_wait must be at least 1 second,"),
        ({"ack_wait": float("nan")}, "ack_wait must be at least"),
        ({"duplicate_window": timedelta(0)}, "duplicate_window must be at least"),
        ({"max_ack_pending": 0}, "max_ack_pending must be between 1"),
        ({"max_ack_pending": True}, "max_ack_pending must be a whole number"),
        ({"replicas": 6}, "replicas must be between 1 and 5"),
        ({"replicas": 1.5}, "replicas must be a whole number"),
        ({"allow_msg_schedules": False}, "can only be switched on"),
        ({"replicas": 3}, "the server refused to change stream .*: replicas > 1 not supported"),
    ],
)
def test_configure_queue_refuses_bad_values_with_a_configuration_error_and_changes_nothing(
    client: bgjob.Client, changes, match
) -> None:
    client.run(Core.ensure_consumer, "default")
    before = client.queue_config()
    with pytest.raises(bgjob.errors.ConfigurationError, match=match):
        client.configure_queue("default", **changes)
    assert client.queue_config() == before


def test_configure_queue_refuses_a_bad_queue_name(client: bgjob.Client) -> None:
    with pytest.raises(bgjob.InvalidJob, match="invalid queue"):
        client.configure_queue("Bad Queue", ack_wait=3)


# -- bgjob queue show|configure ------------------------------------------------------------------------------------
def bgjob_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgjob", "--log-level", "WARNING", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.fixture
def cli_env(nats_server, prefix) -> dict[str, str]:
    return {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT)}


def test_bgjob_queue_shows_and_configures_a_queue(cli_env, client: bgjob.Client) -> None:
    client.send_job("report", None)
    shown = bgjob_cli(cli_env, "queue", "show", "default")
    assert shown.returncode == 0, shown.stderr
    assert "consumer             not created yet" in shown.stdout and "duplicate_window     120s" in shown.stdout

    out = bgjob_cli(cli_env, "queue", "configure", "default", "--ack-wait", "7", "--max-ack-pending", "50")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "queue default: ack_wait unset -> 7s",
        "queue default: max_ack_pending unset -> 50",
    ]
    shown = bgjob_cli(cli_env, "queue", "show")
    assert "ack_wait             7s" in shown.stdout and "max_ack_pending      50" in shown.stdout
    again = bgjob_cli(cli_env, "queue", "configure", "default", "--ack-wait", "7")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert client.queue_config().ack_wait == 7.0


def test_bgjob_queue_says_what_is_wrong(cli_env, client: bgjob.Client) -> None:
    out = bgjob_cli(cli_env, "queue", "show", "nosuch")
    assert out.returncode == 2 and "queue 'nosuch' does not exist yet" in out.stderr
    client.ensure_queue()
    out = bgjob_cli(cli_env, "queue", "configure", "default")
    assert out.returncode == 2 and "nothing to configure: give at least one of --ack-wait" in out.stderr
    out = bgjob_cli(cli_env, "queue", "configure", "default", "--ack-wait", "0.1")
    assert out.returncode == 2 and "ack_wait must be at least 1 second," in out.stderr
    out = bgjob_cli(cli_env, "queue", "configure", "default", "--replicas", "3")
    assert out.returncode == 2 and "replicas > 1 not supported" in out.stderr


# -- QueueStats.retrying -------------------------------------------------------------------------------------------
def test_jobs_waiting_for_a_retry_schedule_count_as_retrying_not_scheduled(client: bgjob.Client) -> None:
    publish_retry_schedule(client, "job-1")
    publish_retry_schedule(client, "job-2", job_type="mail")
    client.send_job("report", None, at=datetime.now(timezone.utc) + timedelta(days=1))
    client.send_job("report", None)
    stats = client.queue_stats()  # no consumer yet
    assert (stats.pending, stats.in_flight, stats.retrying, stats.scheduled) == (1, 0, 2, 1)
    client.run(Core.ensure_consumer, "default")
    stats = client.queue_stats()
    assert (stats.pending, stats.in_flight, stats.retrying, stats.scheduled) == (1, 0, 2, 1)


def test_retrying_counts_stay_right_when_many_processes_read_them_at_once(make_client) -> None:
    clients = [make_client() for _ in range(4)]
    publish_retry_schedule(clients[0], "job-1")
    clients[0].run(Core.ensure_consumer, "default")
    seen: list[int] = []
    errors: list[BaseException] = []

    def read(client: bgjob.Client) -> None:
        try:
            for _ in range(5):
                seen.append(client.queue_stats().retrying)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and seen == [1] * 20


def test_status_shows_the_retrying_column(cli_env, client: bgjob.Client) -> None:
    publish_retry_schedule(client, "job-1")
    out = bgjob_cli(cli_env, "status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split() == ["QUEUE", "PENDING", "IN-FLIGHT", "RETRYING", "SCHEDULED", "ROUTED", "DLQ"]
    assert [ln.split() for ln in lines if ln.startswith("default")] == [["default", "0", "0", "1", "0", "0", "0"]]
