"""`manage.py bgjob_worker --pool gevent` with persistent connections: the database sees at most `concurrency`
connections from the worker, however many jobs it runs, and none pile up from finished jobs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.db import connection

from bgjob_django import send_jobs

from .conftest import wait_for
from .testapp.models import Marker

pytest.importorskip("gevent")

CONCURRENCY = 8
JOBS = 200


def open_connections(worker_pid: int) -> int:
    """Connections open to the test database, counted where they end: PostgreSQL's backends other than this
    test's own; for SQLite, the worker process's open file descriptors on the database file (one per connection)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()")  # fmt: skip
            return cursor.fetchone()[0]
    database = os.path.realpath(connection.settings_dict["NAME"])
    fds = Path(f"/proc/{worker_pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd) == database
        except FileNotFoundError:  # closed while listed
            pass
    return count


@pytest.mark.django_db(transaction=True)
def test_gevent_worker_keeps_at_most_concurrency_connections_open(worker_process) -> None:
    if connection.vendor not in ("postgresql", "sqlite"):
        pytest.skip(f"counts connections on PostgreSQL and SQLite only, not {connection.vendor}")
    if connection.vendor == "sqlite" and not Path("/proc/self/fd").is_dir():
        pytest.skip("counts SQLite connections by the worker's open files in /proc/<pid>/fd (Linux)")
    worker = worker_process("--pool", "gevent", "--concurrency", str(CONCURRENCY), "--no-relay",
                            env={"DJANGO_SETTINGS_MODULE": "tests.django.settings_persistent_connections"},
                            python=("-m", "gevent.monkey"))  # fmt: skip
    send_jobs([("mark", f"job-{n}") for n in range(JOBS)])
    seen: list[int] = []

    def all_done() -> bool:
        seen.append(open_connections(worker.proc.pid))
        return Marker.objects.count() == JOBS

    wait_for(all_done, timeout=60, message=f"{JOBS} jobs run")
    after = open_connections(worker.proc.pid)
    assert max(seen) <= CONCURRENCY and after <= CONCURRENCY, (seen, after)
    assert worker.stop() == 0, worker.stderr
