"""Fixtures for bgjob_django's tests: Django settings pointed at the session's nats-server with a fresh
prefix per test, in-process workers (threads) and `manage.py bgjob_worker` subprocesses.

The core's fixtures (nats_server, prefix, ...) come from tests/conftest.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_django

import bgjob
from bgjob.server import EmbeddedServer
from bgjob_django import send_job

from ..conftest import ROOT, wait_until

ARTIFACTS = ROOT / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    """Point pytest-django at the test settings: only these tests need Django, so only they set it up.

    pytest-django sets Django up before conftests below the rootdir are loaded; this one is loaded during
    collection, so it finishes the job (django.setup() and pytest-django's database-access blocking).
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.settings")
    import django
    from django.conf import settings

    settings.INSTALLED_APPS  # noqa: B018 - loads the settings module, as pytest-django does
    try:
        from pytest_django.plugin import _setup_django
    except ImportError:  # pragma: no cover - a pytest-django without it: setup without the access blocker
        django.setup()
    else:
        _setup_django(config)


@pytest.fixture(scope="session", autouse=True)
def database_features_known(django_db_setup: None, django_db_blocker: pytest_django.DjangoDbBlocker) -> None:
    """Django's system checks read database features (Django 6.1's JSONField check asks the connection whether it
    supports JSON fields, a query the first time): asked once here, so a check test that runs before any database
    test in its process (any order, any pytest-xdist worker) is not refused database access."""
    from django.db import connections

    with django_db_blocker.unblock():
        for connection in connections.all():
            _ = connection.features.supports_json_field


@pytest.fixture(autouse=True)
def bgjob_settings(settings, nats_server: EmbeddedServer, prefix: str) -> Iterator[dict]:
    """settings.BGJOB of the test settings, pointed at the test nats-server and this test's prefix."""
    from bgjob_django import conf

    settings.BGJOB = {**settings.BGJOB, "URL": nats_server.url, "PREFIX": prefix}
    yield settings.BGJOB
    conf.reset()


@pytest.fixture
def client():
    """Django's test client (the core's `client` fixture, a bgjob Client, is `bgjob_client` here)."""
    from django.test import Client

    return Client()


@pytest.fixture
def bgjob_client(bgjob_settings: dict) -> bgjob.Client:
    """The Django project's client (bgjob_django.get_client()) for this test."""
    from bgjob_django import get_client

    return get_client()


@pytest.fixture
def run_worker() -> Iterator[Callable[..., object]]:
    """Start the project's workers (WorkerGroup) in threads, as bgjob_worker would; stopped after the test."""
    from bgjob_django.conf import get_client, get_config
    from bgjob_django.registry import registry
    from bgjob_django.worker import WorkerGroup

    groups: list[WorkerGroup] = []

    def start(queues: tuple[str, ...] = ("default",), mux: object = None, relay: bool = False,
              **config_changes: object) -> WorkerGroup:  # fmt: skip
        """`relay`: also run the outbox relay (off by default here: most tests' databases are not shared with
        other threads)."""
        import dataclasses

        config = dataclasses.replace(get_config(), **config_changes)
        group = WorkerGroup(get_client(), mux or registry, list(queues), config, relay=relay)
        for worker in group.workers:
            worker.fetch_timeout = 0.5
        group.start()
        groups.append(group)
        return group

    yield start
    for group in groups:
        group.stop()
        assert group.join(timeout=30), "worker did not stop"


@pytest.fixture
def dead(bgjob_client: bgjob.Client, run_worker: Callable[..., object]) -> list[str]:
    """Dead letters from a real worker, oldest first: 3 `fail` jobs on default, 1 on mail; then the worker stops."""
    group = run_worker(queues=("default", "mail"))
    ids = []
    for n, queue in enumerate(("default", "default", "default", "mail")):
        arg = {"n": n, "text": "ünïcode"} if queue == "default" else {"n": n}
        ids.append(send_job("fail", arg, queue=queue, request_id=f"req-{n}"))
        # one at a time, so the DLQ's order is the order sent
        wait_until(lambda n=n: bgjob_client.dlq.count() == n + 1, message=f"dead letter {n + 1}")
    group.stop()
    group.join(30)
    return ids


class WorkerProcess:
    """A `manage.py bgjob_worker` subprocess whose stdout and stderr go to files."""

    def __init__(self, proc: subprocess.Popen, out: Path, err: Path) -> None:
        self.proc, self.out, self.err = proc, out, err

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.stdout}\n{self.stderr}")
            return "bgjob worker" in self.stdout

        wait_until(ready, timeout=timeout, message="the worker to start")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` (unless it exited already) and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"worker did not drain within {timeout}s:\n{self.stderr}")


@pytest.fixture
def worker_env(nats_server: EmbeddedServer, prefix: str) -> dict[str, str]:
    """Environment for subprocesses: the test nats-server and prefix, and the test database's name."""
    from django.db import connection

    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "tests.django.settings",
        "BGJOB_URL": nats_server.url,
        "BGJOB_PREFIX": prefix,
        "BGJOB_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
    }


def manage(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python -m django ARGS` (the test settings) and capture its output."""
    return subprocess.run([sys.executable, "-m", "django", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture
def worker_process(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `manage.py bgjob_worker ARGS` subprocesses; SIGTERMed (and must exit) after the test."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True,
              python: tuple[str, ...] = ()) -> WorkerProcess:  # fmt: skip
        n = len(started)
        out, err = tmp_path / f"worker{n}.out", tmp_path / f"worker{n}.err"
        command = [sys.executable, *python, "-m", "django", "bgjob_worker", *args]
        if python:  # e.g. ("-m", "gevent.monkey"): the module to run comes after --module
            command = [sys.executable, *python, "--module", "django", "bgjob_worker", *args]
        proc = subprocess.Popen(command, env={**worker_env, **(env or {})}, cwd=ROOT, stdout=out.open("w"),
                                stderr=err.open("w"))  # fmt: skip
        worker = WorkerProcess(proc, out, err)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, message: str = "condition") -> object:
    """wait_until with a longer default: subprocess workers import Django first."""
    return wait_until(predicate, timeout=timeout, message=message)


def elapsed(start: float) -> float:
    return time.monotonic() - start
