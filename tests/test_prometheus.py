"""bgjob.contrib.prometheus: job metrics from a real worker, queue gauges from JetStream, `--metrics-port`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bgjob.contrib.prometheus import PrometheusMetricStorage, QueueStatsCollector

from .conftest import ROOT, run_mixed_outcomes, wait_until


def test_job_counters_and_durations_count_every_handler_call_by_outcome(client, start_worker) -> None:
    registry = CollectorRegistry()
    storage = PrometheusMetricStorage(registry=registry)
    run_mixed_outcomes(client, start_worker, storage)

    def value(name: str, job_type: str | None = None) -> float | None:
        labels = {} if job_type is None else {"queue": "default", "job_type": job_type}
        return registry.get_sample_value(name, labels)

    wait_until(lambda: value("bgjob_jobs_succeeded_total", "flaky") == 1, message="flaky success")
    counters = {
        (name, job_type): value(f"bgjob_jobs_{name}_total", job_type)
        for name in ("succeeded", "retried", "dead_lettered")
        for job_type in ("ok", "flaky", "dead", "raises")
    }
    assert counters == {
        ("succeeded", "ok"): 3, ("succeeded", "flaky"): 1, ("succeeded", "dead"): None, ("succeeded", "raises"): None,
        ("retried", "ok"): None, ("retried", "flaky"): 1, ("retried", "dead"): None, ("retried", "raises"): 1,
        ("dead_lettered", "ok"): None, ("dead_lettered", "flaky"): None, ("dead_lettered", "dead"): 1,
        ("dead_lettered", "raises"): 1,
    }  # fmt: skip
    assert value("bgjob_internal_errors_total") == 1  # the unknown type never reached a handler
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
        [sys.executable, "-m", "bgjob", "worker", "metricjobs", "--metrics-port", str(port), "--metrics-addr",
         "127.0.0.1", "--max-attempts", "2"],
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
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert f"Prometheus metrics on http://127.0.0.1:{port}/metrics" in stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
