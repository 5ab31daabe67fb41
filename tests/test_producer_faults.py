"""Producer guarantees under faults (issue 12, faults 1-4): every error reply from the server is a named bgjob error
raised at once, a paused server costs at most retry_for plus one request timeout, an error raised after a publish
left the process carries the job id(s), and no nats-py exception escapes a public call of Client or client.dlq."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import DiscardPolicy

import bgjob
from bgjob.errors import DUPLICATE_IN_PROCESS, publish_refusal
from bgjob.server import EmbeddedServer
from bgjob.topology import Topology, queue_stream_config

from .conftest import stream_ids, wait_until

#: the issue's allowance over retry_for + request_timeout on this shared 2-core machine.
MARGIN = 1.5


def precreate_stream(client: bgjob.Client, queue: str, **changes: Any) -> None:
    """Create the queue's stream as an operator might, with bgjob's subjects and `changes` to its config."""

    async def create(core: Any) -> None:
        config = queue_stream_config(Topology(client.settings.prefix), client.settings, queue)
        await core.js.add_stream(dataclasses.replace(config, **changes))

    client.run(create)


def timed(call: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    """(result, exception, seconds) of `call()`."""
    start = time.monotonic()
    try:
        return call(), None, time.monotonic() - start
    except Exception as exc:  # noqa: BLE001 - returned for the test to judge
        return None, exc, time.monotonic() - start


@contextmanager
def paused(server: EmbeddedServer) -> Iterator[None]:
    """The server's process stopped (SIGSTOP): connections stay open, nothing answers."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        # kill() returns before every thread of the server has stopped: a publish sent at once may still be
        # answered. Wait until the kernel reports each thread stopped (state T).
        wait_until(lambda: all(_state(task) == "T" for task in Path(f"/proc/{pid}/task").iterdir()),
                   timeout=5, message="the server's threads stopped")  # fmt: skip
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def _state(task: Path) -> str:
    try:
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:  # a thread that ended
        return "T"


@pytest.fixture
def full_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server whose JetStream file store holds 256 KiB (`jetstream { max_file_store: 262144 }`)."""
    conf = tmp_path / "full.conf"
    conf.write_text("jetstream { max_file_store: 262144 }\n")
    server = EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(conf)])
    server.start()
    yield server
    server.stop()


def client_of(server: EmbeddedServer, prefix: str, **settings: Any) -> bgjob.Client:
    return bgjob.Client(bgjob.Settings(url=server.url, prefix=prefix, **settings)).connect()


# -- fault 1: error replies are named errors, raised at once -------------------------------------------------------
def test_a_job_too_large_for_the_queues_stream_is_invalid_job_for_send_job_and_send_jobs(make_client) -> None:
    client = make_client(retry_for=3, request_timeout=1)
    precreate_stream(client, "small", max_msg_size=256)

    _, error, seconds = timed(lambda: client.send_job("work", {"pad": "x" * 1024}, queue="small"))
    assert isinstance(error, bgjob.InvalidJob) and isinstance(error, bgjob.JobTooLarge), error
    assert isinstance(error, bgjob.PublishError)  # a refusal by the server: it names the job and what it said
    assert "too large for queue 'small'" in str(error) and "nothing was stored" in str(error)
    assert error.job_id and error.job_ids == (error.job_id,) and error.err_code and error.description
    assert seconds < 3

    _, error, seconds = timed(lambda: client.send_jobs([("work", {"pad": "x" * 1024}), ("work", {})], queue="small"))
    assert isinstance(error, bgjob.SendJobsError), error
    assert len(error.stored) == 1 and len(error.not_stored) == 1 and error.job_ids == tuple(error.not_stored)
    assert isinstance(error.errors[error.not_stored[0]], bgjob.InvalidJob)
    assert "refused by the server" in str(error) and seconds < 3
    assert client.send_job("work", {"small": True}, queue="small")  # the queue still takes what fits


@pytest.mark.parametrize("limit", [{"max_msgs": 2}, {"max_bytes": 1500}], ids=["max_msgs", "max_bytes"])
def test_a_stream_limit_with_discard_new_is_queue_full_carrying_the_job_id(make_client, limit: dict) -> None:
    client = make_client(retry_for=3, request_timeout=1)
    precreate_stream(client, "capped", discard=DiscardPolicy.NEW, allow_msg_schedules=False, **limit)
    def send(n: int) -> str:
        return client.send_job("work", {"pad": "x" * 200}, queue="capped", job_id=f"j{n}")

    sent, error = 0, None
    while error is None and sent < 10:
        sent += 1
        _, error, seconds = timed(lambda n=sent: send(n))
    assert isinstance(error, bgjob.QueueFull) and isinstance(error, bgjob.PublishError), error
    assert error.job_id == f"j{sent}" and error.err_code is not None and "is full" in str(error)
    assert seconds < 3 and sent >= 2
    assert stream_ids(client, "capped") == [f"j{n}" for n in range(1, sent)]


def test_a_full_store_is_storage_full_for_a_running_client_and_a_new_process(full_server, prefix) -> None:
    client = client_of(full_server, prefix, retry_for=3, request_timeout=1)
    error, sent = None, 0
    while error is None and sent < 200:
        _, error, seconds = timed(lambda: client.send_job("work", {"pad": "x" * 16384}))
        sent += 1
    assert isinstance(error, bgjob.StorageFull), error
    assert error.job_id and error.err_code in (10023, 10047, 10077) and seconds < 3

    fresh = client_of(full_server, prefix + "n", retry_for=3, request_timeout=1)  # new streams cannot be made
    _, error, seconds = timed(lambda: fresh.send_job("work", {}))
    assert isinstance(error, bgjob.BgjobError) and not isinstance(error, bgjob.ConnectionError), error
    assert seconds < 3 + 1 + MARGIN
    _, error, _ = timed(lambda: client.send_jobs([("work", {"pad": "x" * 16384})] * 3))
    assert isinstance(error, bgjob.SendJobsError) and isinstance(next(iter(error.errors.values())), bgjob.StorageFull)
    client.close()
    fresh.close()


def test_every_error_reply_has_one_name_and_10158_means_wait() -> None:
    assert publish_refusal(409, DUPLICATE_IN_PROCESS, "duplicate message id is in process") is None
    assert publish_refusal(503, None, "no responders") is None
    cases = {
        (400, 10054, "message size exceeds maximum allowed"): bgjob.JobTooLarge,
        (400, 10097, "header size exceeds maximum allowed of 64k"): bgjob.JobTooLarge,
        (503, 10077, "maximum messages exceeded"): bgjob.QueueFull,
        (503, 10077, "maximum bytes exceeded"): bgjob.QueueFull,
        (503, 10077, "maximum messages per subject exceeded"): bgjob.QueueFull,
        (503, 10023, "insufficient resources"): bgjob.StorageFull,
        (500, 10047, "insufficient storage resources available"): bgjob.StorageFull,
        (400, 10002, "resource limits exceeded for account"): bgjob.StorageFull,
        (400, 10060, "expected stream does not match"): bgjob.PublishError,
    }
    for (code, err_code, text), kind in cases.items():
        error = publish_refusal(code, err_code, text, job_ids=("j1",), queue="q")
        assert type(error) is kind, (err_code, text, error)
        assert "j1" in str(error) and text in str(error) and "did not answer" not in str(error)


# -- faults 3 and 4: a paused server ----------------------------------------------------------------------------
def test_send_job_against_a_paused_server_raises_within_retry_for_plus_one_request_timeout(own_server, prefix) -> None:
    client = client_of(own_server, prefix, retry_for=3, request_timeout=1)
    client.send_job("warm-up", {})
    with paused(own_server):
        _, error, seconds = timed(lambda: client.send_job("work", {"n": 1}, job_id="paused-1"))
    assert isinstance(error, bgjob.ConnectionError), error
    assert seconds <= 3 + 1 + MARGIN, f"send_job took {seconds:.2f}s"
    assert error.job_id == "paused-1" and error.job_ids == ("paused-1",)
    assert "may have been stored" in str(error) and "job_id='paused-1'" in str(error)
    # Re-sending with that id is the retry, and it stores the job once, whether or not the first publish landed.
    assert client.send_job("work", {"n": 1}, job_id="paused-1") == "paused-1"
    assert stream_ids(client).count("paused-1") == 1
    client.close()


def test_send_jobs_and_results_against_a_paused_server_carry_the_job_ids(own_server, prefix) -> None:
    client = client_of(own_server, prefix, retry_for=2, request_timeout=1)
    stored = client.send_job("work", {}, store_result=True)
    with paused(own_server):
        _, error, seconds = timed(lambda: client.send_jobs([("work", {"n": n}) for n in range(5)]))
        assert isinstance(error, bgjob.SendJobsError), error
        assert len(error.not_stored) == 5 and set(error.job_ids) == set(error.not_stored)
        assert all(isinstance(e, bgjob.ConnectionError) for e in error.errors.values())
        assert "may have been stored" in str(error) and seconds <= 2 + 1 + MARGIN
        _, error, seconds = timed(lambda: client.send_job("work", {}, store_result=True))
        assert isinstance(error, bgjob.ConnectionError) and error.job_id, error
        _, error, seconds = timed(lambda: client.result(stored, wait=1))
        assert isinstance(error, bgjob.ConnectionError), error
        assert seconds <= 1 + 2 + 1 + MARGIN
    client.close()


# -- fault 2: no nats-py exception escapes any public call (against a paused server: tests/reliability) ----------
def public_calls(client: bgjob.Client) -> dict[str, Callable[[], Any]]:
    """Every public function of Client and client.dlq, with arguments that reach the server."""
    return {
        "send_job": lambda: client.send_job("work", {}),
        "send_job new queue": lambda: client.send_job("work", {}, queue="fresh"),
        "send_job store_result": lambda: client.send_job("work", {}, store_result=True),
        "send_jobs": lambda: client.send_jobs([("work", {})] * 3),
        "result": lambda: client.result("some-job", wait=0.5),
        "ensure_queue": lambda: client.ensure_queue("other"),
        "configure_queue": lambda: client.configure_queue("default", ack_wait=20),
        "queue_config": lambda: client.queue_config("default"),
        "queue_stats": lambda: client.queue_stats("default"),
        "queues": lambda: client.queues(),
        "workers": lambda: client.workers(),
        "schedule": lambda: client.schedule("tick", "0 3 * * *", "work", {}),
        "schedules": lambda: client.schedules(),
        "unschedule": lambda: client.unschedule("tick"),
        "dlq.list": lambda: client.dlq.list(),
        "dlq.get": lambda: client.dlq.get("missing"),
        "dlq.retry": lambda: client.dlq.retry("missing"),
        "dlq.delete": lambda: client.dlq.delete("missing"),
        "dlq.purge": lambda: client.dlq.purge(),
        "dlq.count": lambda: client.dlq.count(),
        "connect a new client": lambda: client_of_url(client.settings),
    }


def client_of_url(settings: bgjob.Settings) -> None:
    bgjob.Client(dataclasses.replace(settings, connect_timeout=1)).connect().close()


def assert_only_bgjob_errors_within_bound(client: bgjob.Client) -> dict[str, str]:
    settings = client.settings
    outcomes = {}
    for name, call in public_calls(client).items():
        _, error, seconds = timed(call)
        bound = settings.retry_for + max(settings.request_timeout, 1) + MARGIN + (0.5 if name == "result" else 0)
        assert error is None or isinstance(error, bgjob.BgjobError), f"{name}: {type(error)!r} {error}"
        assert seconds <= bound, f"{name} took {seconds:.2f}s (bound {bound:.2f}s)"
        outcomes[name] = "ok" if error is None else type(error).__name__
    return outcomes


def test_every_public_call_against_a_full_store_raises_a_bgjob_error_within_its_bound(full_server, prefix) -> None:
    client = client_of(full_server, prefix, retry_for=2, request_timeout=1)
    with pytest.raises(bgjob.StorageFull):
        for _ in range(200):
            client.send_job("work", {"pad": "x" * 16384})
    outcomes = assert_only_bgjob_errors_within_bound(client)
    assert outcomes["send_job"] == "StorageFull"
    client.close()


def test_a_worker_started_against_a_full_store_drains_it_and_sending_works_again(full_server, prefix) -> None:
    """No bare nats-py error at start-up: the worker sets its queue up, runs the stored jobs, and their acks free
    the store, after which send_job stores jobs again."""
    client = client_of(full_server, prefix, retry_for=3, request_timeout=1)
    error, stored = None, 0
    while error is None:
        _, error, _ = timed(lambda: client.send_job("work", {"pad": "x" * 16384}))
        stored += error is None
    assert isinstance(error, bgjob.StorageFull), error
    done: list[str] = []
    mux = bgjob.Mux()
    mux.handle("work", lambda job: done.append(job.id) or bgjob.Complete())
    worker = bgjob.Worker(client, mux, fetch_timeout=0.5)
    thread = worker.start()
    try:
        wait_until(lambda: len(done) == stored, timeout=30, message="the stored jobs run")
        wait_until(lambda: timed(lambda: client.send_job("work", {"pad": "x" * 16384}))[1] is None, timeout=15,
                   message="sending works again once the acks freed the store")  # fmt: skip
    finally:
        worker.stop()
        thread.join(30)
    client.close()
