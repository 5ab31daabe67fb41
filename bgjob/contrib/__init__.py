"""Integrations with optional dependencies: import the submodule you need.

- `bgjob.contrib.prometheus`: PrometheusMetricStorage for bgjob.Metrics, queue gauges, a /metrics server
  (`pip install "bgjob[prometheus]"`).
- `bgjob.contrib.opentelemetry`: BgjobInstrumentor, send and process spans (`pip install "bgjob[otel]"`).
- `bgjob.contrib.sentry`: BgjobIntegration for sentry-sdk (`pip install "bgjob[sentry]"`).
"""
