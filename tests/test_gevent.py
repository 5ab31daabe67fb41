"""gevent: greenlets wait for PubAcks without blocking the hub; handlers can run as greenlets."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import python_process

pytest.importorskip("gevent")

CONCURRENT_SENDS = r"""
from gevent import monkey; monkey.patch_all()
import sys, gevent, bgjob
from bgjob import publisher

url, prefix = sys.argv[1:3]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix)).connect()
client.ensure_queue()
waiting = peak = 0
original_wait = publisher.PublishBatch.wait

def counting_wait(self, timeout=None):
    global waiting, peak
    waiting += 1
    peak = max(peak, waiting)
    try:
        return original_wait(self, timeout)
    finally:
        waiting -= 1

publisher.PublishBatch.wait = counting_wait
ids = [None] * 200

def send(i):
    ids[i] = client.send_job("hit", i)

gevent.joinall([gevent.spawn(send, i) for i in range(200)], raise_error=True)
print(len(set(ids)), peak, client.queue_stats().pending)
client.close()
"""


def test_200_greenlets_send_concurrently_without_blocking_the_hub(nats_server, prefix) -> None:
    proc = python_process(CONCURRENT_SENDS, nats_server.url, prefix, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    unique, peak, pending = map(int, out.split())
    assert unique == 200 and pending == 200
    # Had a waiting greenlet blocked the hub, only one send would ever have been waiting at a time.
    assert peak > 20, f"at most {peak} greenlets waited at once: the sends were serialised"


GEVENT_WORKER = r"""
from gevent import monkey; monkey.patch_all()
import sys, time, threading, bgjob

url, prefix, pool = sys.argv[1:4]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix)).connect()
lock = threading.Lock()
running = peak = done = 0
finished = threading.Event()

def nap(job):
    global running, peak, done
    with lock:
        running += 1
        peak = max(peak, running)
    time.sleep(0.3)          # patched: yields to the hub
    with lock:
        running -= 1
        done += 1
        if done == 50:
            finished.set()
    return bgjob.Complete()

mux = bgjob.Mux()
mux.handle("nap", nap)
client.send_jobs([("nap", i) for i in range(50)])
worker = bgjob.Worker(client, mux, concurrency=50, pool=pool)
import gevent
gevent.spawn(lambda: (finished.wait(30), worker.stop()))
worker.run()
print(done, peak, client.queue_stats().pending + client.queue_stats().in_flight)
client.close()
"""


def test_gevent_pool_runs_blocking_handlers_as_overlapping_greenlets(nats_server, prefix) -> None:
    proc = python_process(GEVENT_WORKER, nats_server.url, prefix, "gevent", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    done, peak, left = map(int, out.split())
    assert done == 50 and left == 0
    assert peak > 10, f"only {peak} handlers overlapped"


THREADS_ONLY = r"""
import sys, bgjob
url, prefix = sys.argv[1:3]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix)).connect()
mux = bgjob.Mux()
worker = bgjob.Worker(client, mux, concurrency=4)
mux.handle("x", lambda job: worker.stop() or bgjob.Complete())
client.send_job("x", None)
worker.run()
client.close()
print("gevent" in sys.modules)
"""


def test_thread_pool_never_imports_gevent(nats_server, prefix) -> None:
    proc = python_process(THREADS_ONLY, nats_server.url, prefix, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "False"


def test_gevent_pool_without_monkey_patching_is_a_clear_error(client) -> None:
    import bgjob

    worker = bgjob.Worker(client, bgjob.Mux(), pool="gevent")
    with pytest.raises(ValueError, match=r"monkey\.patch_all"):
        worker.run()


def test_cli_worker_with_gevent_pool_runs_jobs_and_drains(nats_server, prefix, client, tmp_path) -> None:
    import os
    import signal
    import sys
    import textwrap

    from .conftest import ROOT, wait_until

    (tmp_path / "greenjobs.py").write_text(textwrap.dedent("""
        import time, bgjob
        mux = bgjob.Mux()

        @mux.handler("nap")
        def nap(job):
            time.sleep(0.2)
            with open("done.txt", "a") as f:
                f.write(job.id + "\\n")
            return bgjob.Complete()
    """))
    env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "bgjob", "worker", "greenjobs", "--pool", "gevent",
                               "--concurrency", "100"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        ids = client.send_jobs([("nap", i) for i in range(100)])
        done = tmp_path / "done.txt"
        wait_until(lambda: done.exists() and len(done.read_text().split()) == 100, timeout=60, message="100 naps")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert sorted(done.read_text().split()) == sorted(ids)
