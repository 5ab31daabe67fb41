"""example_project/ works as its README says: migrate, runserver (here: the test client), bgjob_worker."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT
from .conftest import WorkerProcess, wait_for

EXAMPLE = ROOT / "example_project"

PRESS_BUTTONS = """
from django.test import Client
client = Client()
for what in ("report", "cleanup", "failing"):
    response = client.post(f"/send/{what}/", HTTP_X_REQUEST_ID=f"example-{what}")
    assert response.status_code == 302, response
print("sent")
"""


@pytest.fixture
def example_env(nats_server, prefix, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix,
        "EXAMPLE_DB_PATH": str(tmp_path / "example.sqlite3"),
    }  # fmt: skip


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_the_example_site_sends_reschedules_and_dead_letters_jobs(example_env, bgjob_client, tmp_path) -> None:
    for args in (("check",), ("migrate", "-v0")):
        done = manage(example_env, *args)
        assert done.returncode == 0, done.stderr
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    proc = subprocess.Popen([sys.executable, "manage.py", "bgjob_worker"], cwd=EXAMPLE, env=example_env,
                            stdout=out.open("w"), stderr=err.open("w"))  # fmt: skip
    worker = WorkerProcess(proc, out, err)
    try:
        worker.wait_ready()
        pressed = manage(example_env, "shell", "-c", PRESS_BUTTONS)
        assert pressed.returncode == 0 and "sent" in pressed.stdout, pressed.stderr

        def report() -> tuple | None:
            with sqlite3.connect(example_env["EXAMPLE_DB_PATH"]) as db:
                return db.execute("SELECT status, request_id FROM reports_report").fetchone()

        assert wait_for(lambda: report() and report()[0] == "done" and report(), message="the report") == (
            "done", "example-report")
        entry = wait_for(lambda: bgjob_client.dlq.list(), timeout=30, message="the failing job in the DLQ")[0]
        assert entry.type == "flaky-export" and entry.reason == "max_attempts" and entry.attempts == 3
        assert "ConnectionRefusedError: export service for s3://exports is down" in entry.error
        assert entry.request_id == "example-failing"
        # the nightly schedule from settings, and the cleanup's next run (the top of the next hour)
        wait_for(lambda: bgjob_client.queue_stats().scheduled == 2, message="the rescheduled cleanup")
        assert [p.name for p in bgjob_client.schedules()] == ["nightly-report"]
        assert "request=example-report" in worker.stderr
    finally:
        assert worker.stop() == 0
