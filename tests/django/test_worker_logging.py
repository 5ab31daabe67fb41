"""The example project's `manage.py bgjob_worker` prints each log line once: django.tasks' lines included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import django
import pytest

from ..conftest import ROOT
from .conftest import WorkerProcess, wait_for

EXAMPLE = ROOT / "example_project"

pytestmark = pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks (and its log lines) need Django >= 6.0")

# The example's settings as they are (DEBUG on, its LOGGING dict), plus a django.tasks backend and an app with a task.
TASK_SETTINGS = """
from mysite.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "linetasks"]
TASKS = {"default": {"BACKEND": "bgjob_django.tasks.BgjobBackend"}}
"""
TASK_MODULE = """
from django.tasks import task


@task
def add(a, b):
    return a + b
"""
ENQUEUE = "from linetasks.tasks import add; print(add.enqueue(2, 3).id)"


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.fixture(params=["example LOGGING", "no LOGGING"])
def example_env(request, nats_server, prefix, tmp_path: Path) -> dict[str, str]:
    """The example's settings; with "no LOGGING", as a project that configures no logging (Django's defaults:
    a console handler on the `django` logger under DEBUG, bgjob's handler on the root)."""
    extra = "\nLOGGING = {}\n" if request.param == "no LOGGING" else ""
    (tmp_path / "task_settings.py").write_text(TASK_SETTINGS + extra)
    (tmp_path / "linetasks").mkdir()
    (tmp_path / "linetasks" / "__init__.py").write_text("")
    (tmp_path / "linetasks" / "tasks.py").write_text(TASK_MODULE)
    return {
        **os.environ, "DJANGO_SETTINGS_MODULE": "task_settings", "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix,
        "EXAMPLE_DB_PATH": str(tmp_path / "example.sqlite3"),
    }  # fmt: skip


def test_example_worker_prints_each_django_tasks_line_once(example_env, tmp_path) -> None:
    done = manage(example_env, "migrate", "-v0")
    assert done.returncode == 0, done.stderr
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    proc = subprocess.Popen([sys.executable, "manage.py", "bgjob_worker", "--no-relay"], cwd=EXAMPLE,
                            env=example_env, stdout=out.open("w"), stderr=err.open("w"))  # fmt: skip
    worker = WorkerProcess(proc, out, err)
    try:
        worker.wait_ready()
        enqueued = manage(example_env, "shell", "-c", ENQUEUE)
        assert enqueued.returncode == 0, enqueued.stderr
        result_id = enqueued.stdout.split()[-1]
        wait_for(lambda: f"Task id={result_id} path=linetasks.tasks.add state=SUCCESSFUL" in worker.stderr,
                 message=f"the task's SUCCESSFUL line in:\n{worker.stderr}")  # fmt: skip
        assert worker.stop() == 0, worker.stderr
    finally:
        worker.stop()
    output = worker.stdout + worker.stderr
    lines = [line for line in output.splitlines() if f"Task id={result_id}" in line]
    assert len(lines) == 2, "\n".join(lines)  # RUNNING, then SUCCESSFUL: each once, through the project's handler
    assert all(f"[task:linetasks.tasks.add {result_id}" in line for line in lines), lines
