"""Real gunicorn (sync, gthread, gevent workers; with and without --preload) serving a view that sends jobs:
every job whose request got a 200 is in the stream exactly once, and shutdown is clean."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

import bgjob
from bgjob.server import free_port

from .conftest import ROOT, stream_ids, wait_until

if shutil.which("gunicorn", path=os.path.dirname(sys.executable)) is None:
    pytest.skip("gunicorn is not installed (pip install -e '.[dev]')", allow_module_level=True)

CONFIGS = [
    ("sync", []),
    ("gthread", ["--threads", "8"]),
    ("gevent", ["--worker-connections", "200"]),
]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
@pytest.mark.parametrize(("worker_class", "extra"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_every_job_sent_by_a_200_response_is_stored_once(nats_server, prefix, worker_class, extra, preload) -> None:
    port = free_port()
    command = [
        os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-k", worker_class, "-w", "2",
        "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "10", *extra, *(["--preload"] if preload else []),
        "tests.wsgi.app:application",
    ]  # fmt: skip
    env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: get(base + "/plain")[0] == 200, timeout=30, message="gunicorn up")
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda n: get(f"{base}/send?n={n}"), range(150)))
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr
    ok_ids = [json.loads(body)["id"] for status, body in answers if status == 200]
    assert len(ok_ids) == 150, f"only {len(ok_ids)} of 150 requests succeeded"
    with bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix)) as client:
        stored = [job_id for job_id in stream_ids(client) if not job_id.startswith("boot-")]
    assert sorted(stored) == sorted(ok_ids)  # all there, none twice
    assert "Event loop is closed" not in stderr and "Traceback" not in stderr, stderr
