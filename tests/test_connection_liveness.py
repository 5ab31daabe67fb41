"""A half-open connection (the server's side vanished, nothing answers) is noticed within
`ping_interval * (max_outstanding_pings + 1)` seconds and re-established, for producers and workers.

These use short ping settings to stay fast; tests/reliability/test_half_open.py runs the same scenarios with
the defaults (noticed within 20 s)."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

import pytest

import bgjob

from .conftest import drain, drain_available, wait_until
from .reliability.proxy import BlackholeProxy, LinkEvents

#: connect_timeout: a reconnect that lands while the path is still dead gives up after 1 s, not 5.
FAST = {"ping_interval": 0.5, "max_outstanding_pings": 2, "connect_timeout": 1.0}
#: ping_interval * (max_outstanding_pings + 1), the documented bound, plus scheduling slack.
FAST_NOTICE = 0.5 * 3 + 1.0


def test_default_ping_settings_notice_a_dead_connection_within_20_seconds() -> None:
    settings = bgjob.Settings()
    assert settings.ping_interval * (settings.max_outstanding_pings + 1) <= 20


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ping_interval": 0}, "ping_interval"),
        ({"ping_interval": -1.5}, "ping_interval"),
        ({"ping_interval": "5"}, "ping_interval"),
        ({"ping_interval": float("nan")}, "ping_interval"),
        ({"ping_interval": True}, "ping_interval"),
        ({"max_outstanding_pings": 0}, "max_outstanding_pings"),
        ({"max_outstanding_pings": 2.5}, "max_outstanding_pings"),
        ({"max_outstanding_pings": None}, "max_outstanding_pings"),
    ],
)
def test_ping_settings_that_could_never_detect_anything_are_a_configuration_error(options, match) -> None:
    with pytest.raises(bgjob.ConfigurationError, match=match):
        bgjob.Settings(**options)


def test_a_producer_notices_a_half_open_connection_and_sends_again_once_the_path_is_back(
    make_client: Callable[..., bgjob.Client], proxy: BlackholeProxy, link_events: LinkEvents
) -> None:
    client = make_client(url=proxy.url, retry_for=1.0, request_timeout=1.0, **FAST)
    client.send_job("ping", 1)
    proxy.blackhole()
    lost_at = time.monotonic()
    with pytest.raises(bgjob.BgjobError):
        client.send_job("ping", 2)
    wait_until(lambda: link_events.disconnected, timeout=FAST_NOTICE + 3, message="the client to notice")
    assert link_events.disconnected[0] - lost_at <= FAST_NOTICE
    proxy.heal()
    wait_until(lambda: link_events.reconnected, timeout=10, message="the client to reconnect")
    assert client.send_job("ping", 3)


@pytest.mark.parametrize("key", ["ping_interval", "max_outstanding_pings"])
def test_ping_settings_are_refused_in_nats_options_naming_the_setting(key: str) -> None:
    with pytest.raises(bgjob.ConfigurationError, match=f"the {key} setting"):
        bgjob.Settings(nats_options={key: 1})


def test_a_worker_notices_a_half_open_connection_reconnects_and_handles_every_job(
    make_client: Callable[..., bgjob.Client],
    proxy: BlackholeProxy,
    start_worker: Callable[..., bgjob.Worker],
    link_events: LinkEvents,
) -> None:
    producer = make_client()
    # ack_wait 2 s: the jobs delivered on the dead connection come back sooner
    worker_client = make_client(url=proxy.url, ack_wait=2.0, **FAST)
    handled: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("echo", lambda job: handled.put(job.arg) or bgjob.Complete())
    start_worker(worker_client, mux)
    producer.send_job("echo", 0)
    assert drain(handled, 1) == [0]
    proxy.blackhole()
    lost_at = time.monotonic()
    for i in range(1, 6):
        producer.send_job("echo", i)
    wait_until(lambda: link_events.disconnected, timeout=FAST_NOTICE + 3, message="the worker to notice")
    assert link_events.disconnected[0] - lost_at <= FAST_NOTICE
    proxy.heal()
    # At least once: a job whose ack was lost in the blackhole (job 0, if its ack had not left) runs again.
    seen: set[int] = set()
    wait_until(lambda: seen.update(drain_available(handled)) or seen >= {1, 2, 3, 4, 5}, timeout=30,
               message="every job sent while the worker's connection was dead to be handled")  # fmt: skip



def test_a_first_connect_that_keeps_failing_warns_once_then_raises(caplog) -> None:
    """Found by a new user: every retry of a failing first connect logged a WARNING (42 lines in 15 s)."""
    from bgjob.server import free_port

    settings = bgjob.Settings(url=f"nats://127.0.0.1:{free_port()}", retry_for=2.0, connect_timeout=0.5)
    with caplog.at_level(logging.DEBUG, logger="bgjob"), pytest.raises(bgjob.ConnectionError):
        bgjob.Client(settings).connect()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.getMessage().startswith("nats:")]
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG and r.getMessage().startswith("nats:")]
    assert len(warnings) == 1 and retries, [r.getMessage() for r in caplog.records]
