"""Queue limits (choria asyncjobs' Queue: MaxEntries, MaxAge, MaxTries, MaxConcurrent) on a real nats-server:
`max_entries` refuses sends with QueueFull and drops nothing stored, `max_age` dead-letters a ready job that
waited too long (reason expired) and never touches delayed jobs or periodic schedules, `max_deliveries` never
strands a message, and none of them is undone by a process starting with default settings."""

from __future__ import annotations

import dataclasses
import queue
from datetime import UTC, datetime, timedelta

import pytest

import bgjob
from bgjob.cli import main as cli_main

from .conftest import drain, wait_until


def stored_ids(client: bgjob.Client, name: str) -> list[str]:
    """The job ids the queue's stream holds, oldest first (read with an ephemeral ordered look, acking nothing)."""
    return [m.headers.get("Bgjob-Id") for m in stream_messages(client, name)]


def stream_messages(client: bgjob.Client, name: str) -> list:
    runtime, core = client._ensure()

    async def read() -> list:
        stream = core.topology.queue_stream(name)
        info = await core.js.stream_info(stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                found.append(await core.js.get_msg(stream, seq))
            except Exception:  # noqa: BLE001 - a deleted sequence
                continue
        return found

    return runtime.run(read(), 10)


def oldest_age(client: bgjob.Client, name: str) -> float:
    """Seconds since the oldest message of the queue's stream was stored (by the server's clock as it reads)."""
    messages = stream_messages(client, name)
    return max((datetime.now(UTC) - m.time).total_seconds() for m in messages) if messages else 0.0


# -- max_entries --------------------------------------------------------------------------------------------------
def test_a_full_queue_refuses_sends_with_queue_full_naming_queue_limit_and_job_and_loses_nothing(client) -> None:
    assert client.configure_queue("mail", max_entries=3) == {"max_entries": (None, 3)}
    sent = [client.send_job("mail.send", {"n": n}, queue="mail", job_id=f"m{n}") for n in range(3)]
    with pytest.raises(bgjob.QueueFull) as caught:
        client.send_job("mail.send", {"n": 3}, queue="mail", job_id="m3")
    error = caught.value
    assert error.job_id == "m3" and error.job_ids == ("m3",)
    assert "'mail'" in str(error) and "max_entries is 3" in str(error) and "m3" in str(error)
    assert error.queue == "mail" and error.max_entries == 3
    assert isinstance(error, bgjob.PublishError) and not isinstance(error, bgjob.InvalidJob)  # try again later
    assert stored_ids(client, "mail") == sent, "nothing stored was dropped, the refused job was not stored"

    with pytest.raises(bgjob.QueueFull) as caught:  # a batch is admitted whole or not at all
        client.send_jobs([bgjob.JobSpec("mail.send", job_id="b1"), bgjob.JobSpec("mail.send", job_id="b2")],
                         queue="mail")  # fmt: skip
    assert caught.value.job_ids == ("b1", "b2")
    assert stored_ids(client, "mail") == sent

    assert client.send_job("other", None) and client.send_jobs([("other", 1), ("other", 2)])  # other queues: free
    assert client.configure_queue("mail", max_entries=0) == {"max_entries": (3, None)}  # 0 removes the limit
    assert client.send_job("mail.send", {"n": 3}, queue="mail", job_id="m3") == "m3"


def test_delayed_jobs_count_toward_max_entries_and_a_drained_queue_takes_jobs_again(client, start_worker) -> None:
    client.configure_queue("mail", max_entries=2)
    client.send_job("mail.send", None, queue="mail", delay=timedelta(hours=1), job_id="later")
    client.send_job("mail.send", None, queue="mail", job_id="now")
    with pytest.raises(bgjob.QueueFull):
        client.send_job("mail.send", None, queue="mail", job_id="third")
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("mail.send", lambda job: ran.put(job.id) or bgjob.Complete())
    start_worker(client, mux, queue="mail")
    assert drain(ran, 1) == ["now"]
    wait_until(lambda: len(stored_ids(client, "mail")) == 1, message="the ready job acked")
    assert client.send_job("mail.send", None, queue="mail", job_id="third") == "third"
    assert drain(ran, 1) == ["third"]


def test_another_producer_sees_the_limit_and_a_default_settings_process_never_undoes_it(make_client) -> None:
    admin = make_client()
    admin.configure_queue("mail", max_entries=1, max_age=3600, max_deliveries=5, max_ack_pending=4)
    producer = make_client(ack_wait=30.0, max_ack_pending=1000)  # other Settings, starting afterwards
    producer.send_job("mail.send", None, queue="mail", job_id="a")
    with pytest.raises(bgjob.QueueFull):
        producer.send_job("mail.send", None, queue="mail", job_id="b")
    config = producer.queue_config("mail")
    assert (config.max_entries, config.max_age, config.max_deliveries, config.max_ack_pending) == (1, 3600.0, 5, 4)


def test_queue_full_leaves_a_unique_job_id_free_to_send_again(client) -> None:
    client.configure_queue("mail", max_entries=1)
    client.send_job("mail.send", None, queue="mail")
    with pytest.raises(bgjob.QueueFull):
        client.send_job("mail.send", None, queue="mail", job_id="u1", unique_for=60)
    client.configure_queue("mail", max_entries=0)
    assert client.send_job("mail.send", None, queue="mail", job_id="u1", unique_for=60) == "u1"
    assert stored_ids(client, "mail")[-1] == "u1"


# -- max_age ------------------------------------------------------------------------------------------------------
def test_an_old_ready_job_is_dead_lettered_as_expired_without_running(client, start_worker) -> None:
    client.configure_queue("q", max_age=1)
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("work", lambda job: ran.put(job.id) or bgjob.Complete())
    client.send_job("work", {"x": 1}, queue="q", job_id="old")
    wait_until(lambda: oldest_age(client, "q") > 1.5, message="the ready job older than max_age")
    start_worker(client, mux, queue="q")
    wait_until(lambda: client.dlq.count() == 1, message="the expired job dead-lettered")
    letter = client.dlq.list()[0]
    assert (letter.id, letter.reason, letter.queue) == ("old", "expired", "q")
    assert "max_age of 1s" in letter.error and "not run" in letter.error
    client.send_job("work", None, queue="q", job_id="fresh")  # a young job runs
    assert drain(ran, 1) == ["fresh"]
    # the handler reports before its job is acked: the ack removes it from the stream a moment later
    wait_until(lambda: stored_ids(client, "q") == [], message="the fresh job acked, nothing left stored")
    assert ran.empty()


def test_max_age_never_expires_a_delayed_job_or_a_periodic_schedule(client, start_worker) -> None:
    client.configure_queue("q", max_age=1)
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("later", lambda job: ran.put(("later", job.id)) or bgjob.Complete())
    mux.handle("tick", lambda job: ran.put(("tick", job.id)) or bgjob.Complete())
    start_worker(client, mux, queue="q")
    client.send_job("later", None, queue="q", delay=3, job_id="delayed")  # waits three times max_age
    client.schedule("every-second", "* * * * * *", "tick", queue="q")
    got = [drain(ran, 1, timeout=20)[0]]
    while ("later", "delayed") not in got:
        got += drain(ran, 1, timeout=20)
    assert sum(kind == "tick" for kind, _ in got) >= 2, "the schedule fired every second"
    assert client.dlq.count() == 0, "nothing expired"
    assert [s.name for s in client.schedules()] == ["every-second"], "the periodic schedule is still there"
    client.unschedule("every-second")


def test_a_worker_started_with_a_lowered_max_age_reads_it_at_its_start(make_client, start_worker) -> None:
    admin = make_client()
    admin.send_job("work", None, queue="q", job_id="waited")
    wait_until(lambda: oldest_age(admin, "q") > 1.5, message="the job older than a second")
    admin.configure_queue("q", max_age=timedelta(seconds=1))
    mux = bgjob.Mux()
    mux.handle("work", lambda job: bgjob.Complete())
    start_worker(make_client(), mux, queue="q")  # a worker process with default settings
    wait_until(lambda: admin.dlq.count(reason="expired") == 1, message="expired by the new worker")
    assert admin.queue_config("q").max_age == 1.0


# -- max_deliveries -----------------------------------------------------------------------------------------------
def test_the_servers_last_delivery_is_dead_lettered_unrun_so_nothing_is_stranded(client, start_worker) -> None:
    client.configure_queue("q", max_deliveries=3)
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    def fails(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.attempt)
        return bgjob.Retry(0.05)

    mux.handle("fails", fails)
    policy = bgjob.RetryPolicy(max_attempts=10, base_delay=0.05, jitter=0)  # more than the cap allows
    start_worker(client, mux, queue="q", retry_policy=policy)
    client.send_job("fails", None, queue="q", job_id="poison")
    wait_until(lambda: client.dlq.count() == 1, message="the poison job dead-lettered")
    letter = client.dlq.list()[0]
    assert (letter.id, letter.reason) == ("poison", "max_deliveries")
    # The first retry goes through a retry schedule (a new message); the later ones are naks of that message,
    # whose third delivery is the server's last: dead-lettered, not run.
    assert drain(runs, 3) == [1, 2, 3] and runs.empty(), "the last delivery did not run"
    assert "delivered 3 times" in letter.error
    wait_until(lambda: stored_ids(client, "q") == [], message="the message left the stream")


def test_configure_queue_checks_the_limits_and_changes_nothing_on_a_bad_one(client) -> None:
    before = client.queue_config()
    for bad in ({"max_entries": -1}, {"max_entries": 1.5}, {"max_age": 0.5}, {"max_age": "1h"},
                {"max_deliveries": 1}, {"max_entries": True}):  # fmt: skip
        with pytest.raises(bgjob.ConfigurationError, match=next(iter(bad))):
            client.configure_queue("default", **bad)
    assert client.queue_config() == before


def test_limits_keep_the_servers_own_stream_metadata_and_each_other(client) -> None:
    client.configure_queue("q", max_entries=10, max_age=60)
    assert client.configure_queue("q", max_age=0) == {"max_age": (60.0, None)}
    config = client.queue_config("q")
    assert (config.max_entries, config.max_age, config.max_deliveries) == (10, None, None)
    runtime, core = client._ensure()
    metadata = runtime.run(core.js.stream_info(core.topology.queue_stream("q")), 5).config.metadata
    assert metadata["bgjob.max_entries"] == "10" and "bgjob.max_age" not in metadata
    assert any(key.startswith("_nats.") for key in metadata)


def test_a_worker_with_default_settings_warns_about_nothing_the_queue_was_configured_with(
    make_client, start_worker, caplog
) -> None:
    admin = make_client()
    admin.configure_queue("q", max_entries=5, max_age=60, max_deliveries=4)
    mux = bgjob.Mux()
    mux.handle("work", lambda job: bgjob.Complete())
    caplog.set_level("INFO", logger="bgjob")
    worker_client = make_client()
    start_worker(worker_client, mux, queue="q")
    worker_client.send_job("work", None, queue="q")
    wait_until(lambda: admin.queue_stats("q").pending == 0 and stored_ids(admin, "q") == [], message="ran")
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "differs" in r.getMessage()]
    config = admin.queue_config("q")
    assert (config.max_entries, config.max_age, config.max_deliveries) == (5, 60.0, 4)


# -- bgjob queue show|configure -----------------------------------------------------------------------------------
def test_bgjob_queue_configure_and_show_the_limits(nats_server, prefix, monkeypatch, capsys) -> None:
    monkeypatch.setenv("BGJOB_URL", nats_server.url)
    monkeypatch.setenv("BGJOB_PREFIX", prefix)
    assert cli_main(["queue", "configure", "mail", "--max-entries", "100", "--max-age", "3600",
                     "--max-deliveries", "6"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "max_entries unset -> 100" in out and "max_age unset -> 3600s" in out
    assert "max_deliveries unset -> 6" in out
    assert cli_main(["queue", "show", "mail"]) == 0
    out = capsys.readouterr().out
    assert "max_entries          100" in out and "max_age              3600s" in out
    assert "max_deliveries       6" in out
    assert cli_main(["queue", "configure", "mail", "--max-entries", "none", "--max-deliveries", "none"]) == 0
    assert "max_entries 100 -> unset" in capsys.readouterr().out
    assert cli_main(["queue", "show", "mail"]) == 0
    out = capsys.readouterr().out
    assert "max_entries          no limit" in out and "max_deliveries       no cap" in out
    with pytest.raises(SystemExit):
        cli_main(["queue", "configure", "mail", "--max-entries", "lots"])
    assert "not a number or 'none'" in capsys.readouterr().err


# -- configure_queue(name, config) --------------------------------------------------------------------------------
def test_configure_queue_takes_a_queue_config_and_keywords_win_over_its_fields(client) -> None:
    client.configure_queue("a", max_entries=7, max_age=60, max_deliveries=4, ack_wait=20)
    copied = client.queue_config("a")
    assert client.configure_queue("b", copied) == {"max_entries": (None, 7), "max_age": (None, 60.0),
                                                   "max_deliveries": (None, 4), "ack_wait": (None, 20.0),
                                                   "max_ack_pending": (None, copied.max_ack_pending)}  # fmt: skip
    got = client.queue_config("b")
    assert (got.max_entries, got.max_age, got.max_deliveries, got.ack_wait) == (7, 60.0, 4, 20.0)

    # a limit None in the config is removed; a keyword beside it wins over its field
    lowered = dataclasses.replace(got, max_entries=None, max_age=120.0)
    assert client.configure_queue("b", lowered, max_age=90) == {"max_entries": (7, None), "max_age": (60.0, 90.0)}
    got = client.queue_config("b")
    assert (got.max_entries, got.max_age, got.max_deliveries) == (None, 90.0, 4)
    assert client.configure_queue("b", got) == {}, "giving a queue its own configuration changes nothing"


def test_configure_queue_refuses_a_config_that_is_not_a_queue_config_and_changes_nothing(client) -> None:
    client.configure_queue("default", max_entries=100)
    before = client.queue_config()
    for bad in ({"max_entries": 3}, "max_entries=3", 3):
        with pytest.raises(bgjob.ConfigurationError, match=r"config must be a bgjob\.QueueConfig"):
            client.configure_queue("default", bad)  # type: ignore[arg-type]
    assert client.queue_config() == before
    bad_value = dataclasses.replace(before, max_entries=-1)
    with pytest.raises(bgjob.ConfigurationError, match="max_entries"):
        client.configure_queue("default", bad_value)
    assert client.queue_config() == before

