"""The scenario families, one module each; `SCENARIOS` is the order in which `python -m bench` runs them."""

from __future__ import annotations

SCENARIOS = ["enqueue", "process", "e2e", "delay", "backlog", "memory", "peers", "wsgi", "outbox", "events", "typed",
             "workflows", "partitions", "delegated"]
