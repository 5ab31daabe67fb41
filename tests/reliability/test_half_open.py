"""Scenario 11: a half-open connection (a loopback proxy keeps the TCP connection open and drops every byte) is
noticed within 20 s with the default ping settings (5 s, 3 outstanding), by a producer and by a worker, and both
recover once the path is back; nothing confirmed is lost. With nats-py's own defaults (120 s, 2) it took 359 s."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

import pytest

import bgjob

from ..conftest import drain_available, stream_ids, wait_until
from .proxy import BlackholeProxy, LinkEvents
from .support import Scenario, full_run_only, tally

pytestmark = [pytest.mark.reliability, pytest.mark.slow, full_run_only]

DEFAULTS = bgjob.Settings()
#: the documented bound, ping_interval * (max_outstanding_pings + 1), plus scheduling slack.
NOTICE_BOUND = DEFAULTS.ping_interval * (DEFAULTS.max_outstanding_pings + 1) + 1.0
RETRY_FOR, REQUEST_TIMEOUT = 5.0, 5.0


@pytest.mark.timeout(120)
def test_a_producer_behind_a_half_open_connection_fails_in_bounded_time_and_recovers_within_20_seconds(
    make_client: Callable[..., bgjob.Client], proxy: BlackholeProxy, link_events: LinkEvents
) -> None:
    scenario = Scenario("11a half-open connection: producer")
    client = make_client(url=proxy.url, retry_for=RETRY_FOR, request_timeout=REQUEST_TIMEOUT)
    confirmed = [client.send_job("work", i) for i in range(10)]
    proxy.blackhole()
    lost_at = time.monotonic()
    with pytest.raises(bgjob.BgjobError):
        client.send_job("work", "into the void")
    failed_after = time.monotonic() - lost_at
    # the send bound (retry_for plus at most one request timeout), not the 25 s+ it used to take
    assert failed_after <= RETRY_FOR + REQUEST_TIMEOUT + 1.0
    proxy.heal()
    wait_until(lambda: link_events.disconnected, timeout=NOTICE_BOUND + 5, message="the producer to notice")
    noticed_after = link_events.disconnected[0] - lost_at
    assert noticed_after <= NOTICE_BOUND
    wait_until(lambda: link_events.reconnected, timeout=30, message="the producer to reconnect")
    confirmed += [client.send_job("work", i) for i in range(10, 20)]
    recovered_after = time.monotonic() - lost_at
    stored = stream_ids(make_client())
    result = tally(confirmed, stored)
    scenario.report(result, note=f"send raised after {failed_after:.1f} s, noticed after {noticed_after:.1f} s, "
                                 f"sending again after {recovered_after:.1f} s")  # fmt: skip
    assert not result.lost, result.lost_message()


@pytest.mark.timeout(120)
def test_a_worker_behind_a_half_open_connection_notices_within_20_seconds_and_handles_every_job(
    make_client: Callable[..., bgjob.Client],
    proxy: BlackholeProxy,
    start_worker: Callable[..., bgjob.Worker],
    link_events: LinkEvents,
) -> None:
    scenario = Scenario("11b half-open connection: worker")
    producer = make_client()
    handled: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("echo", lambda job: handled.put(job.id) or bgjob.Complete())
    start_worker(make_client(url=proxy.url), mux)
    sent = [producer.send_job("echo", i) for i in range(10)]
    done: list[str] = []
    wait_until(lambda: done.extend(drain_available(handled)) or set(done) >= set(sent),
               message="the first jobs to be handled")  # fmt: skip
    proxy.blackhole()
    lost_at = time.monotonic()
    sent += [producer.send_job("echo", i) for i in range(10, 30)]
    wait_until(lambda: link_events.disconnected, timeout=NOTICE_BOUND + 5, message="the worker to notice")
    noticed_after = link_events.disconnected[0] - lost_at
    proxy.heal()
    wait_until(lambda: done.extend(drain_available(handled)) or set(done) >= set(sent), timeout=60,
               message="every job to be handled after the worker reconnected")  # fmt: skip
    result = tally(sent, done)
    scenario.report(result, note=f"noticed after {noticed_after:.1f} s, every job handled after "
                                 f"{time.monotonic() - lost_at:.1f} s")  # fmt: skip
    assert noticed_after <= NOTICE_BOUND
    assert not result.lost, result.lost_message()
