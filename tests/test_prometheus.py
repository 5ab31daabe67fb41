"""bgjob.contrib.prometheus: job metrics from a real worker, queue gauges from JetStream, `--metrics-port`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bgjob.cli import build_parser
from bgjob.contrib.prometheus import PrometheusMetricStorage, QueueStatsCollector, start_metrics_server

from .conftest import ROOT, run_mixed_outcomes, wait_until


def test_job_counters_and_durations_count_every_handler_call_by_outcome(client, start_worker) -> None:
    registry = CollectorRegistry()
    storage = PrometheusMetricStorage(registry=registry)
    run_mixed_outcomes(client, start_worker, storage)

    def value(name: str, job_type: str | None = None) -> float | None:
        labels = {} if job_type is None else {"queue": "default", "job_type": job_type}
        return registry.get_sample_value(name, labels)

    def counters() -> dict[tuple[str, str], float | None]:
        return {(name, job_type): value(f"bgjob_jobs_{name}_total", job_type)
                for name in ("succeeded", "retried", "dead_lettered")
                for job_type in ("ok", "flaky", "dead", "raises")}  # fmt: skip

    expected = {
        ("succeeded", "ok"): 3, ("succeeded", "flaky"): 1, ("succeeded", "dead"): None, ("succeeded", "raises"): None,
        ("retried", "ok"): None, ("retried", "flaky"): 1, ("retried", "dead"): None, ("retried", "raises"): 1,
        ("dead_lettered", "ok"): None, ("dead_lettered", "flaky"): None, ("dead_lettered", "dead"): 1,
        ("dead_lettered", "raises"): 1,
    }  # fmt: skip
    # A fate is counted when it is reported (on_settled), just after the dead letter is visible: under load the
    # last count can come a moment after run_mixed_outcomes saw three dead letters. Wait for it; a wrong count
    # (e.g. 2) never matches and still fails.
    wait_until(lambda: counters() == expected, message=f"the fates counted as {expected}")
    assert counters() == expected
    wait_until(lambda: value("bgjob_internal_errors_total") == 1, message="the unknown type counted")
    for job_type, calls in {"ok": 3, "flaky": 2, "dead": 1, "raises": 2}.items():
        assert value("bgjob_job_duration_seconds_count", job_type) == calls
        bucket = {"queue": "default", "job_type": job_type, "le": "+Inf"}
        assert registry.get_sample_value("bgjob_job_duration_seconds_bucket", bucket) == calls
        assert 0 < value("bgjob_job_duration_seconds_sum", job_type) < 5
    assert value("bgjob_job_duration_seconds_count", "unknown-type") is None


def test_storages_on_one_registry_share_their_metrics() -> None:
    registry = CollectorRegistry()
    first, second = PrometheusMetricStorage(registry), PrometheusMetricStorage(registry)
    first.inc_success_count("q", "t")
    second.inc_success_count("q", "t")
    assert registry.get_sample_value("bgjob_jobs_succeeded_total", {"queue": "q", "job_type": "t"}) == 2
    other = PrometheusMetricStorage(registry, namespace="app")
    other.inc_internal_error_count()
    assert registry.get_sample_value("app_internal_errors_total") == 1
    with pytest.raises(ValueError, match="buckets"):
        PrometheusMetricStorage(registry, buckets=(1.0, 2.0))


def test_queue_gauges_are_read_from_jetstream_and_cached_between_scrapes(client) -> None:
    registry = CollectorRegistry()
    collector = QueueStatsCollector(client, cache_seconds=60)
    registry.register(collector)
    for _ in range(3):
        client.send_job("report", None)
    client.send_job("report", None, delay=timedelta(hours=1))
    client.send_job("resize", None, queue="images")

    def gauge(name: str, queue: str) -> float | None:
        return registry.get_sample_value(f"bgjob_queue_{name}", {"queue": queue})

    assert registry.get_sample_value("bgjob_queue_stats_up") == 1
    assert [gauge(n, "default") for n in ("pending", "in_flight", "scheduled", "dlq")] == [3, 0, 1, 0]
    assert [gauge(n, "images") for n in ("pending", "in_flight", "scheduled", "dlq")] == [1, 0, 0, 0]

    client.send_job("report", None)
    assert gauge("pending", "default") == 3  # the cached reading
    collector.cache_seconds = 0
    assert gauge("pending", "default") == 4


def test_queue_gauges_say_down_instead_of_failing_when_the_server_is_gone(own_server, make_client) -> None:
    client = make_client(url=own_server.url, retry_for=1.0, request_timeout=1.0)
    client.send_job("report", None)
    registry = CollectorRegistry()
    registry.register(QueueStatsCollector(client, cache_seconds=0.1, timeout=1.0))
    assert registry.get_sample_value("bgjob_queue_pending", {"queue": "default"}) == 1
    own_server.stop()
    time.sleep(0.2)
    start = time.monotonic()
    assert registry.get_sample_value("bgjob_queue_stats_up") == 0
    assert registry.get_sample_value("bgjob_queue_pending", {"queue": "default"}) is None
    assert time.monotonic() - start < 5


def test_worker_command_serves_job_metrics_and_queue_gauges(nats_server, prefix, client, tmp_path) -> None:
    (tmp_path / "metricjobs.py").write_text(textwrap.dedent("""
        import bgjob
        mux = bgjob.Mux()
        mux.handle("ok", lambda job: bgjob.Complete())
        mux.handle("dead", lambda job: bgjob.MoveToDlq("no"))

        @mux.handler("boom")
        def boom(job):
            raise RuntimeError("boom")
    """))
    port = _free_port()
    env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        # no --metrics-addr: the default is this host only
        [sys.executable, "-m", "bgjob", "worker", "metricjobs", "--metrics-port", str(port), "--max-attempts", "2"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for job_type in ("ok", "ok", "dead", "boom"):
            client.send_job(job_type, None)
        client.send_job("ok", None, delay=timedelta(hours=1))
        wait_until(lambda: client.dlq.count() == 2, timeout=30, message="two dead letters")

        def scrape() -> dict[tuple[str, tuple], float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip

        def labels(job_type: str) -> tuple:
            return (("job_type", job_type), ("queue", "default"))

        samples = wait_until(lambda: (s := scrape()).get(("bgjob_jobs_retried_total", labels("boom"))) and s,
                             timeout=15, message="metrics of the boom job")  # fmt: skip
        assert samples[("bgjob_jobs_succeeded_total", labels("ok"))] == 2
        assert samples[("bgjob_jobs_dead_lettered_total", labels("dead"))] == 1
        assert samples[("bgjob_jobs_dead_lettered_total", labels("boom"))] == 1
        assert samples[("bgjob_jobs_retried_total", labels("boom"))] == 1
        assert samples[("bgjob_job_duration_seconds_count", labels("ok"))] == 2
        assert samples[("bgjob_internal_errors_total", ())] == 0
        assert samples[("bgjob_queue_stats_up", ())] == 1
        queue = (("queue", "default"),)
        assert samples[("bgjob_queue_dlq", queue)] == 2
        assert samples[("bgjob_queue_scheduled", queue)] == 1
        assert samples[("bgjob_queue_retrying", queue)] == 0
        assert samples[("bgjob_queue_pending", queue)] == 0
        assert _status(f"http://127.0.0.1:{port}/admin") == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert f"Prometheus metrics on http://127.0.0.1:{port}/metrics" in stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(url: str) -> int:
    """The HTTP status of a GET of `url` (a real request)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def metrics_server():
    """start_metrics_server(...) on a fresh registry; every server it started is shut down after the test."""
    started = []

    def start(*args, **kwargs):
        httpd, _thread = start_metrics_server(*args, registry=CollectorRegistry(), **kwargs)
        started.append(httpd)
        return httpd

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_metrics_server_binds_to_this_host_only_by_default(metrics_server) -> None:
    httpd = metrics_server(0)
    assert httpd.server_address[0] == "127.0.0.1"
    assert _status(f"http://127.0.0.1:{httpd.server_port}/metrics") == 200


def test_metrics_server_binds_every_interface_only_when_asked(metrics_server) -> None:
    httpd = metrics_server(0, "0.0.0.0")
    assert httpd.server_address[0] == "0.0.0.0"
    assert _status(f"http://127.0.0.1:{httpd.server_port}/metrics") == 200


@pytest.mark.parametrize("path", ["/", "/metricsx", "/metrics/extra", "/favicon.ico", "/admin", "/../metrics"])
def test_metrics_server_answers_404_on_every_path_but_metrics(metrics_server, path: str) -> None:
    httpd = metrics_server(0)
    base = f"http://127.0.0.1:{httpd.server_port}"
    assert _status(base + path) == 404
    assert _status(base + "/metrics?name[]=bgjob_queue_stats_up") == 200


def test_worker_commands_default_the_metrics_address_to_this_host_and_say_how_to_widen_it() -> None:
    worker = build_parser()._subparsers._group_actions[0].choices["worker"]  # type: ignore[union-attr]
    assert worker.parse_args(["mod"]).metrics_addr == "127.0.0.1"
    text = " ".join(worker.format_help().split())
    assert "default: 127.0.0.1, this host only; 0.0.0.0 is the explicit choice" in text


def test_manage_py_bgjob_worker_defaults_the_metrics_address_to_this_host_and_says_how_to_widen_it() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "django", "bgjob_worker", "--help"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "default: 127.0.0.1, this host only; 0.0.0.0 is the explicit choice" in text, text
