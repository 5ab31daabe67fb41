"""bgjob's pytest plugin (pytest_bgjob, loaded through the pytest11 entry point) and run_jobs."""

from __future__ import annotations

import threading

import pytest

import bgjob
from bgjob.testing import run_jobs
from bgjob.testing.run import MAX_TIMEOUT

from .conftest import wait_until

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user project's pytest runs without this suite's Django settings (tests/django sets them in os.environ)."""
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)


USER_TESTS = """
import threading

import bgjob
import pytest

mux = bgjob.Mux()
ran = []

@mux.handler("ok")
def ok(job):
    ran.append((job.arg, threading.current_thread() is threading.main_thread()))
    return bgjob.Complete()

@mux.handler("flaky")
def flaky(job):
    return bgjob.Retry(60)

@mux.handler("broken")
def broken(job):
    return bgjob.MoveToDlq("cannot do it")


@pytest.fixture
def bgjob_mux():
    return mux


def test_outcomes(bgjob_client, run_jobs):
    ok_id = bgjob_client.send_job("ok", {"n": 1})
    flaky_id = bgjob_client.send_job("flaky", None)
    dead_id = bgjob_client.send_job("broken", None)
    outcomes = {o.id: o for o in run_jobs()}
    assert outcomes[ok_id].acked and ran == [({"n": 1}, True)]
    assert outcomes[flaky_id].retried and outcomes[flaky_id].fate.delay == 60
    assert outcomes[dead_id].dead_lettered and outcomes[dead_id].fate.reason == "handler"
    assert bgjob_client.dlq.count() == 1
    assert run_jobs() == []


def test_fresh_prefix(bgjob_client, bgjob_prefix, run_jobs):
    assert bgjob_client.settings.prefix == bgjob_prefix
    assert run_jobs() == []
"""


def test_plugin_fixtures_in_a_user_project(pytester: pytest.Pytester) -> None:
    """A project with the plugin only (no bgjob conftest): the server, a client per test, run_jobs' fates."""
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)


def test_plugin_fixture_names_do_not_clash(pytester: pytest.Pytester) -> None:
    """A conftest's own `bgjob_client` wins over the plugin's; the plugin adds no `client` fixture."""
    pytester.makeconftest("""
import pytest

@pytest.fixture
def bgjob_client():
    return "mine"
""")
    pytester.makepyfile(
        test_mine="""
def test_mine(bgjob_client, request):
    assert bgjob_client == "mine"
    assert "client" not in request.fixturenames
"""
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q").assert_outcomes(passed=1)


def test_run_jobs_max_jobs_and_attempts(client: bgjob.Client) -> None:
    """max_jobs stops early; a job fetched but not run is handed back without using an attempt; a raise past the
    policy's attempts is dead-lettered (max_attempts); handlers run in the calling thread."""
    mux = bgjob.Mux()
    threads = []

    @mux.handler("raises")
    def raises(job: bgjob.Job) -> bgjob.Result:
        threads.append(threading.current_thread())
        raise RuntimeError("boom")

    first, second = client.send_job("raises", 1), client.send_job("raises", 2)
    policy = bgjob.RetryPolicy(max_attempts=2, base_delay=0.01, jitter=0)
    [one] = run_jobs(client, mux, max_jobs=1, retry_policy=policy)
    assert (one.id, one.attempt, one.retried) == (first, 1, True)
    assert one.failure is not None and "boom" in one.failure.error
    rest = run_jobs(client, mux, retry_policy=policy)
    by_id: dict[str, list] = {}
    for each in rest:
        by_id.setdefault(each.id, []).append(each)
    assert by_id[second][0].attempt == 1  # not burnt by the first call's hand-back
    seen = list(rest)  # the retries come due after 0.01 s: run again until both jobs are dead letters
    wait_until(lambda: seen.extend(run_jobs(client, mux, retry_policy=policy)) or client.dlq.count() == 2,
               message="two dead letters")  # fmt: skip
    dead = [o for o in seen if o.dead_lettered]
    assert sorted(o.id for o in dead) == sorted([first, second]) and {o.attempt for o in dead} == {2}
    assert {o.fate.reason for o in dead} == {"max_attempts"}, dead
    assert threads and all(t is threading.current_thread() for t in threads)
    with pytest.raises(ValueError):
        run_jobs(client, mux, max_jobs=0)


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 1e300, 10**400, MAX_TIMEOUT + 1, 0, -1, True, "5"])
def test_run_jobs_refuses_a_non_finite_or_huge_timeout(client: bgjob.Client, timeout: object) -> None:
    """A named ValueError before anything starts (timeout=inf was an OverflowError from a thread join)."""
    client.send_job("ping", 1)
    with pytest.raises(ValueError, match="timeout must be finite seconds"):
        run_jobs(client, bgjob.Mux(), timeout=timeout)  # type: ignore[arg-type]


def test_loading_the_plugin_imports_nothing_of_bgjob() -> None:
    """pytest loads entry-point plugins before any conftest: an app that monkey-patches for gevent there must still
    be first to import bgjob (its client, locks and threads)."""
    import subprocess
    import sys

    code = "import sys, pytest_bgjob; print(sorted(m for m in sys.modules if m.split('.')[0] == 'bgjob'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
