"""send_job against a real nats-server: what gets stored, dedup, delays, and refusals that store nothing."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

import bgjob
from bgjob.client import Core


def stream_messages(client: bgjob.Client, queue: str = "default") -> int:
    async def count(core: Core) -> int:
        return (await core.js.stream_info(core.topology.queue_stream(queue))).state.messages

    return client.run(count)


def last_job_message(client: bgjob.Client, job_type: str, queue: str = "default"):
    async def get(core: Core):
        subject = core.topology.job_subject(queue, job_type)
        return await core.js.get_msg(core.topology.queue_stream(queue), subject=subject)

    return client.run(get)


def test_send_job_returns_id_after_the_job_is_stored_with_its_headers(client: bgjob.Client) -> None:
    job_id = client.send_job("report", {"user": 7}, request_id="req-1", headers={"X-Tenant": "acme"})
    assert len(job_id) == 32
    msg = last_job_message(client, "report")
    assert msg.data == b'{"user":7}'
    assert msg.headers["Bgjob-Id"] == job_id and msg.headers["Nats-Msg-Id"] == job_id
    assert msg.headers["Bgjob-Type"] == "report"
    assert msg.headers["Bgjob-Request-Id"] == "req-1"
    assert msg.headers["X-Tenant"] == "acme"
    assert msg.headers["Content-Type"] == "application/json"
    enqueued = datetime.fromisoformat(msg.headers["Bgjob-Enqueued-At"].replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - enqueued).total_seconds()) < 60


def test_same_job_id_is_stored_once_within_the_duplicate_window(client: bgjob.Client) -> None:
    assert client.send_job("report", {"n": 1}, job_id="report-7") == "report-7"
    assert client.send_job("report", {"n": 2}, job_id="report-7") == "report-7"
    assert stream_messages(client) == 1
    assert last_job_message(client, "report").data == b'{"n":1}'


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("bad type", {}), {}, "invalid job type"),
        (("report", {"x": {1, 2}}), {}, "JSON-serialisable"),
        (("report", {1: "int key", "1": "str key"}), {}, r"arg\[1\]: JSON object keys must be strings"),
        (("report", {"a": [{None: 1}]}), {}, r"arg\[\"a\"\]\[0\]\[None\]: JSON object keys must be strings"),
        (("report", {}), {"queue": "Bad Queue"}, "invalid queue"),
        (("report", {}), {"job_id": "has.dot"}, "invalid job id"),
        (("report", {}), {"delay": -5}, "delay must be >= 0"),
        (("report", {}), {"delay": "soon"}, "timedelta or seconds"),
        (("report", {}), {"at": datetime(2030, 1, 1)}, "timezone-aware"),
        (("report", {}), {"delay": 1, "at": datetime.now(timezone.utc)}, "either delay or at"),
        (("report", {}), {"headers": {"Nats-Msg-Id": "x"}}, "reserved"),
        (("report", b"x" * (2 * 1024 * 1024)), {}, "at most"),
    ],
)
def test_bad_input_raises_invalid_job_and_stores_nothing(client: bgjob.Client, args, kwargs, match) -> None:
    client.ensure_queue("default")
    with pytest.raises(bgjob.InvalidJob, match=match):
        client.send_job(*args, **kwargs)
    assert stream_messages(client) == 0


def test_a_dict_key_json_would_turn_into_a_string_is_refused_by_every_way_a_job_is_sent(client: bgjob.Client) -> None:
    client.ensure_queue("default")
    with pytest.raises(bgjob.InvalidJob, match=r"job 1: .*arg\[1\]: JSON object keys must be strings"):
        client.send_jobs([("report", {"1": "fine"}), ("report", {1: "int key", "1": "str key"})])
    with pytest.raises(bgjob.InvalidJob, match=r"arg\[\"at\"\]\[0\]\[None\]"):
        client.send_job("report", {"at": [{None: 1}]}, delay=timedelta(minutes=5))
    with pytest.raises(bgjob.InvalidJob, match=r"Reschedule arg: .*arg\[2\]: JSON object keys must be strings"):
        bgjob.Reschedule(bgjob.ByAfterTime(timedelta(seconds=1)), arg={2: "x"})
    with pytest.raises(bgjob.InvalidJob, match=r"arg\[\"v\"\]\[1.5\]"):
        client.schedule("keys", "0 3 * * *", "tick", {"v": {1.5: "x"}})
    assert stream_messages(client) == 0


def test_delayed_job_is_held_by_a_server_schedule_until_due(client: bgjob.Client) -> None:
    job_id = client.send_job("report", {"n": 1}, delay=timedelta(seconds=30))

    async def scheduled(core: Core):
        subject = core.topology.delayed_filter("default", job_id)
        return await core.js.get_msg(core.topology.queue_stream("default"), seq=1, next=True, subject=subject)

    msg = client.run(scheduled)
    assert msg.headers["Nats-Schedule"].startswith("@at 20")
    assert msg.headers["Nats-Schedule-Target"].endswith(".default.job.report")
    stats = client.queue_stats("default")
    assert (stats.pending, stats.scheduled) == (0, 1)


def test_send_job_from_many_threads_at_once(client: bgjob.Client) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        for i in range(25):
            job_id = client.send_job("report", {"thread": n, "i": i})
            with lock:
                ids.append(job_id)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 200
    assert stream_messages(client) == 200


def test_unreachable_server_gives_a_clear_connection_error() -> None:
    client = bgjob.Client(bgjob.Settings(url="nats://127.0.0.1:1", retry_for=1.0, connect_timeout=0.5))
    start = time.monotonic()
    with pytest.raises(bgjob.ConnectionError, match=r"cannot connect to NATS at nats://127\.0\.0\.1:1"):
        client.send_job("report", {})
    assert time.monotonic() - start < 30


def test_old_server_is_refused_naming_the_version_needed(tmp_path) -> None:
    import shutil

    from bgjob.server import EmbeddedServer, binary_version

    system = shutil.which("nats-server", path="/usr/sbin:/usr/bin:/usr/local/bin")
    if system is None or binary_version(system) >= (2, 12, 0):
        pytest.skip("no nats-server older than 2.12 on this machine")
    with EmbeddedServer(tmp_path, binary=system) as server:
        client = bgjob.Client(bgjob.Settings(url=server.url))
        with pytest.raises(bgjob.ServerVersionError, match=r"needs >= 2\.12"):
            client.connect()
