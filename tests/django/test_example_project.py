"""example_project/ works as its README says: migrate, runserver (here: the test client), bgjob_worker."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import bgjob
from bgjob.server import stop_embedded_server

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


# -- issue 15, item 12: the example a project is copied from passes `check --deploy` where it can -----------------
#: what `check --deploy` may still say about the example (its settings say why): DEBUG, its public SECRET_KEY,
#: and the HTTPS-only settings a site served over plain http by runserver cannot have.
LOCAL_ONLY = {"security.W004", "security.W008", "security.W009", "security.W012", "security.W016", "security.W018"}

PURGE_PAGE = """
from django.test import Client
client = Client()
assert client.login(username="admin", password="admin")
response = client.get("/admin/bgjob_django/deadletter/purge/")
assert response.status_code == 200, response
print("x-frame-options:", response.headers.get("X-Frame-Options"))
print("nosniff:", response.headers.get("X-Content-Type-Options"))
"""


def test_the_example_project_cannot_be_framed_and_passes_the_deploy_checks_it_can(example_env) -> None:
    done = manage(example_env, "check", "--deploy")
    assert done.returncode == 0, done.stderr
    found = set(re.findall(r"\((security\.[EW]\d+)\)", done.stdout + done.stderr))
    assert "security.W002" not in found  # XFrameOptionsMiddleware: no clickjacking of the admin's confirmations
    assert found <= LOCAL_ONLY, found - LOCAL_ONLY
    assert manage(example_env, "migrate", "-v0").returncode == 0
    page = manage(example_env, "shell", "-c", PURGE_PAGE)
    assert page.returncode == 0, page.stderr
    assert "x-frame-options: DENY" in page.stdout and "nosniff: nosniff" in page.stdout


# -- fault 10: one project, one embedded server, however its commands are started ----------------------------------
#: the URL shows masked: the embedded server's carries its token.
SERVER_LINE = re.compile(r"^server: (nats://\*\*\*@127\.0\.0\.1:\d+) \(embedded, data dir (\S+?)(;.*)?\)$",
                         re.MULTILINE)
SEND_ELSEWHERE = "from bgjob_django.conf import get_client; print(get_client().send_job('report', {}, queue='parked'))"


@pytest.fixture
def embedded_example_env(tmp_path: Path):
    """The example project with no URL anywhere (its embedded server), in a BGJOB_HOME of the test's own."""
    home = tmp_path / "bgjob-home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJANGO_SETTINGS_MODULE", "BGJOB_URL", "BGJOB_DATA_DIR", "BGJOB_PREFIX")}  # fmt: skip
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", BGJOB_HOME=str(home),
               EXAMPLE_DB_PATH=str(tmp_path / "example.sqlite3"))  # fmt: skip
    yield env
    for data_dir in (home / "bgjob").glob("*") if (home / "bgjob").exists() else ():
        stop_embedded_server(data_dir)


def run_in(env: dict[str, str], cwd: Path, *cmd: str) -> str:
    done = subprocess.run([sys.executable, *cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_commands_started_from_the_repository_root_or_example_project_reach_the_same_embedded_server(
    embedded_example_env, tmp_path
) -> None:
    env = embedded_example_env
    # "runserver started in example_project/": the first use there starts the project's server, and says so
    first = SERVER_LINE.search(run_in(env, EXAMPLE, "manage.py", "bgjob_status"))
    assert first and "started now with a NEW, EMPTY store" in first.group(3)
    url, data_dir = first.group(1), first.group(2)
    assert Path(data_dir).parent == tmp_path / "bgjob-home" / "bgjob"
    assert Path(data_dir).name.startswith("example_project-")
    job_id = run_in(env, EXAMPLE, "manage.py", "shell", "-c", SEND_ELSEWHERE).splitlines()[-1]
    assert len(job_id) == 32
    same = f"server: {url} (embedded, data dir {data_dir})"
    # ... and `python example_project/manage.py bgjob_status` from the repository root reaches that server
    out = run_in(env, ROOT, "example_project/manage.py", "bgjob_status")
    assert out.splitlines()[0] == same
    assert [ln.split()[:2] for ln in out.splitlines() if ln.startswith("parked ")] == [["parked", "1"]]
    # so do a subdirectory of the project, and plain `bgjob status` in the project's folder
    assert run_in(env, EXAMPLE / "reports", "../manage.py", "bgjob_status").splitlines()[0] == same
    assert run_in(env, EXAMPLE, "-m", "bgjob", "status").splitlines()[0] == same
    # the worker, started from the repository root, names the server it serves first
    out_file, err_file = tmp_path / "worker.out", tmp_path / "worker.err"
    proc = subprocess.Popen([sys.executable, "example_project/manage.py", "bgjob_worker", "--queue", "idle",
                             "--no-schedules"], cwd=ROOT, env=env, stdout=out_file.open("w"),
                            stderr=err_file.open("w"))  # fmt: skip
    worker = WorkerProcess(proc, out_file, err_file)
    try:
        worker.wait_ready()
        assert worker.stdout.splitlines()[0] == same
        # running, its SIGTERM handler set, before it drains; the server is reached by its data dir (and token)
        with bgjob.Client(bgjob.Settings(data_dir=data_dir)) as client:
            wait_for(lambda: client.workers(), message="the worker in the directory")
    finally:
        assert worker.stop() == 0
