"""The runtime thread: many threads at once, fork safety, close, and the module-level default client."""

from __future__ import annotations

import os
import sys
import threading

import pytest

import bgjob

from .conftest import python_process


def test_client_used_before_fork_works_in_the_child_and_the_parent(client) -> None:
    client.send_job("report", "parent-before")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must get its own loop thread and connection
        code = 1
        try:
            os.close(read)
            job_id = client.send_job("report", "child")
            os.write(write, job_id.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_id = os.read(read, 100).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0 and len(child_id) == 32
    client.send_job("report", "parent-after")
    assert client.queue_stats().pending == 3


def test_many_threads_share_one_client_without_serialising_errors(client) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(32)

    def send() -> None:
        try:
            barrier.wait()
            for i in range(10):
                client.send_job("report", i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and client.queue_stats().pending == 320


def test_closed_client_refuses_work_clearly(make_client) -> None:
    client = make_client()
    client.close()
    with pytest.raises(bgjob.BgjobError, match="closed"):
        client.send_job("report", None)


def test_module_level_send_job_uses_bgjob_url_and_exits_cleanly(nats_server, prefix) -> None:
    code = "import bgjob; print(bgjob.send_job('report', {'user': 7}))"
    proc = python_process(code, env={"BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix}, stdout=-1, stderr=-1,
                          text=True)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(out.strip()) == 32
    assert "Event loop is closed" not in err and "Traceback" not in err
    with bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix)) as client:
        assert client.queue_stats().pending == 1


def test_blocking_call_from_the_runtime_thread_is_refused(client) -> None:
    async def inner(core):
        return client.send_job("report", None)

    with pytest.raises(RuntimeError, match="runtime thread"):
        client.run(inner)


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_default_client_rebuilt_after_fork_in_a_subprocess(nats_server, prefix) -> None:
    code = """
import os, bgjob
bgjob.send_job("report", 1)
pid = os.fork()
if pid == 0:
    bgjob.send_job("report", 2)
    os._exit(0)
_, status = os.waitpid(pid, 0)
bgjob.send_job("report", 3)
print(os.waitstatus_to_exitcode(status))
"""
    proc = python_process(code, env={"BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix}, stdout=-1, stderr=-1,
                          text=True)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "0", err
    with bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix)) as client:
        assert client.queue_stats().pending == 3


def test_a_call_cancelled_on_the_loop_leaves_as_a_bgjob_error_and_close_still_closes(make_client) -> None:
    """A task of nats-py's cancelled under a call (the connection dropping during nc.drain(), seen in CI when a
    client was closed) ended the call's task cancelled; its CancelledError, a BaseException, got past the
    `except Exception` of Client.close() and out of it."""
    import asyncio

    from bgjob.runtime import Runtime

    runtime = Runtime("test-cancelled")
    try:

        async def cancelled_inside() -> None:
            raise asyncio.CancelledError()

        with pytest.raises(bgjob.ConnectionError, match="cancelled on bgjob's event loop"):
            runtime.run(cancelled_inside(), 10)
    finally:
        runtime.stop()
    client = make_client()
    client.queue_stats("default")  # connected

    async def drain_cancelled() -> None:
        raise asyncio.CancelledError()

    client._core._nc.drain = drain_cancelled  # what nats-py's drain did when the connection dropped under it
    client.close()  # returns, closed
    with pytest.raises(bgjob.BgjobError):
        client.send_job("t", None)
