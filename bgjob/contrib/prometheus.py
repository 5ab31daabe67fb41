"""Prometheus metrics: job outcomes and durations (a MetricStorage for bgjob.Metrics) and queue gauges.

storage = PrometheusMetricStorage()                     # registers on prometheus_client.REGISTRY
worker = bgjob.Worker(client, mux, middleware=[bgjob.Recovery(), bgjob.Metrics(storage)])
start_metrics_server(9100, client=client)               # /metrics, with the queue gauges of `client`

The metrics server binds to 127.0.0.1 unless told otherwise: queue names, depths and job types are not for
the network. `start_metrics_server(9100, "0.0.0.0", ...)` (or `--metrics-addr 0.0.0.0`) is the explicit choice
to let a Prometheus on another host scrape it; put it behind a firewall or a private network then.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

try:
    import prometheus_client
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError('bgjob.contrib.prometheus needs prometheus-client: pip install "bgjob[prometheus]"') from exc

if TYPE_CHECKING:
    from ..client import Client, QueueStats

log = logging.getLogger("bgjob.metrics")

#: Handler durations from 5 ms to 10 min: background jobs run longer than web requests.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_LABELS = ("queue", "job_type")


@dataclass(frozen=True)
class _JobMetrics:
    buckets: tuple[float, ...]
    duration: Histogram
    succeeded: Counter
    retried: Counter
    dead_lettered: Counter
    internal_errors: Counter


# One set of metric objects per (registry, namespace): a registry refuses a second metric with the same name,
# and every PrometheusMetricStorage of a process (one per worker/queue) should feed the same series.
_metrics: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _JobMetrics]] = weakref.WeakKeyDictionary()
_metrics_lock = threading.Lock()


def _job_metrics(registry: CollectorRegistry, namespace: str, buckets: tuple[float, ...]) -> _JobMetrics:
    with _metrics_lock:
        by_namespace = _metrics.setdefault(registry, {})
        metrics = by_namespace.get(namespace)
        if metrics is None:
            metrics = by_namespace[namespace] = _JobMetrics(
                buckets=buckets,
                duration=Histogram("job_duration_seconds", "Seconds a job's handler ran, middleware included.",
                                   _LABELS, namespace=namespace, registry=registry, buckets=buckets),
                succeeded=Counter("jobs_succeeded", "Handler calls that returned Complete or Reschedule.",
                                  _LABELS, namespace=namespace, registry=registry),
                retried=Counter("jobs_retried", "Handler calls that failed or returned Retry, to be tried again.",
                                _LABELS, namespace=namespace, registry=registry),
                dead_lettered=Counter("jobs_dead_lettered", "Handler calls after which the job went to the DLQ.",
                                      _LABELS, namespace=namespace, registry=registry),
                internal_errors=Counter("internal_errors", "Jobs the worker could not decode, route or settle.",
                                        namespace=namespace, registry=registry),
            )  # fmt: skip
        elif metrics.buckets != buckets:
            raise ValueError(f"{namespace}_job_duration_seconds is already registered with buckets {metrics.buckets}")
        return metrics


class PrometheusMetricStorage:
    """A bgjob.MetricStorage on prometheus-client: `<namespace>_job_duration_seconds` (histogram) and the
    counters `<namespace>_jobs_succeeded_total`, `_jobs_retried_total`, `_jobs_dead_lettered_total` (labels
    `queue`, `job_type`) and `<namespace>_internal_errors_total`.

    Instances on the same registry and namespace share their metrics, so creating one per worker is fine.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "bgjob",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.namespace = namespace
        self._m = _job_metrics(self.registry, namespace, tuple(float(b) for b in buckets))

    def observe_execute_duration(self, queue: str, job_type: str, seconds: float) -> None:
        self._m.duration.labels(queue, job_type).observe(seconds)

    def inc_retry_count(self, queue: str, job_type: str) -> None:
        self._m.retried.labels(queue, job_type).inc()

    def inc_dlq_count(self, queue: str, job_type: str) -> None:
        self._m.dead_lettered.labels(queue, job_type).inc()

    def inc_success_count(self, queue: str, job_type: str) -> None:
        self._m.succeeded.labels(queue, job_type).inc()

    def inc_internal_error_count(self) -> None:
        self._m.internal_errors.inc()


@dataclass(frozen=True)
class _Snapshot:
    taken_at: float
    up: bool
    stats: tuple[QueueStats, ...] = ()


class QueueStatsCollector(Collector):
    """Queue gauges read from JetStream when scraped: `<namespace>_queue_pending`, `_queue_in_flight`,
    `_queue_scheduled`, `_queue_retrying`, `_queue_dlq` (label `queue`, every queue of the client's prefix) and
    `<namespace>_queue_stats_up` (0 when the server could not be read in `timeout` seconds).

    Readings are reused for `cache_seconds`, so frequent or parallel scrapes cost one round of requests.
    A slow read goes on in the background; the scrape that gave up on it gets `up 0` and no queue gauges.
    """

    def __init__(self, client: Client, *, namespace: str = "bgjob", cache_seconds: float = 5.0,
                 timeout: float = 5.0) -> None:  # fmt: skip
        self.client = client
        self.namespace = namespace
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._reader: threading.Thread | None = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(_Snapshot(0.0, up=False))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families(self._current())

    def _current(self) -> _Snapshot:
        with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and time.monotonic() - snapshot.taken_at < self.cache_seconds:
                return snapshot
            if self._reader is None or not self._reader.is_alive():
                self._reader = threading.Thread(target=self._read, name="bgjob-queue-stats", daemon=True)
                self._reader.start()
            reader = self._reader
        reader.join(self.timeout)
        if reader.is_alive():
            return _Snapshot(time.monotonic(), up=False)
        with self._lock:
            return self._snapshot or _Snapshot(time.monotonic(), up=False)

    def _read(self) -> None:
        try:
            snapshot = _Snapshot(time.monotonic(), up=True,
                                 stats=tuple(self.client.queue_stats(q) for q in self.client.queues()))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a scrape reports the server as down, it doesn't fail
            was_up = self._snapshot is None or self._snapshot.up
            log.log(logging.WARNING if was_up else logging.DEBUG, "cannot read queue stats for metrics: %s", exc)
            snapshot = _Snapshot(time.monotonic(), up=False)
        with self._lock:
            self._snapshot = snapshot

    def _families(self, snapshot: _Snapshot) -> list[GaugeMetricFamily]:
        ns = self.namespace
        up = GaugeMetricFamily(f"{ns}_queue_stats_up", "1 if the last reading of the queue stats succeeded.",
                               value=1.0 if snapshot.up else 0.0)  # fmt: skip
        families = [up]
        for field, help_text in (
            ("pending", "Jobs ready to run, not yet delivered to a worker."),
            ("in_flight", "Jobs delivered to a worker and not yet settled."),
            ("scheduled", "Delayed, rescheduled and periodic jobs waiting for their time."),
            ("retrying", "Jobs waiting for a retry schedule to fire (they hold no worker slot)."),
            ("dlq", "Dead letters of the queue."),
        ):
            family = GaugeMetricFamily(f"{ns}_queue_{field}", help_text, labels=["queue"])
            for stats in snapshot.stats:
                family.add_metric([stats.queue], float(getattr(stats, field)))
            families.append(family)
        return families


#: where the metrics are; every other path is 404.
METRICS_PATH = "/metrics"
#: the default address: this host only. Binding wider is an explicit choice.
DEFAULT_ADDR = "127.0.0.1"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes are not worth a line on stderr each."""


def _metrics_only(registry: CollectorRegistry) -> Any:
    """A WSGI app answering GET /metrics with `registry`'s exposition and 404 on every other path."""
    metrics_app = prometheus_client.make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") == METRICS_PATH:
            body: list[bytes] = metrics_app(environ, start_response)
            return body
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found: the metrics are at {METRICS_PATH}\n".encode()]

    return app


def start_metrics_server(
    port: int, addr: str = DEFAULT_ADDR, *, client: Client | None = None, registry: CollectorRegistry | None = None,
    **collector_options: Any,
) -> tuple[Any, threading.Thread]:  # fmt: skip
    """Serve `registry` (default: prometheus_client.REGISTRY) on http://addr:port/metrics in a daemon thread,
    with the queue gauges of `client` when given (`collector_options` go to QueueStatsCollector).

    port: TCP port (0 picks a free one: read it from `server.server_port`). addr: the address to bind,
    default 127.0.0.1 (this host only); "0.0.0.0" or "::" (every interface) is the explicit choice that lets
    other hosts scrape it. Only GET /metrics answers 200; any other path is 404.
    Returns (the WSGI server, its thread); `server.shutdown()` stops it. Raises OSError when addr:port cannot
    be bound.
    """
    registry = registry if registry is not None else REGISTRY
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]

    class _Server(socketserver.ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True

    httpd = make_server(addr, port, _metrics_only(registry), _Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="bgjob-metrics", daemon=True)
    thread.start()
    if client is not None:
        registry.register(QueueStatsCollector(client, **collector_options))
    return httpd, thread
