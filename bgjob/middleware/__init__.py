"""Middleware: callables wrapped around every handler call (base), and the ones bgjob ships."""

from __future__ import annotations

from .base import Handler, Middleware, chain
from .metrics import InMemoryMetricStorage, Metrics, MetricStorage
from .recovery import Recovery
from .request_id import RequestId

__all__ = ["Handler", "InMemoryMetricStorage", "MetricStorage", "Metrics", "Middleware", "Recovery", "RequestId",
           "chain"]  # fmt: skip
