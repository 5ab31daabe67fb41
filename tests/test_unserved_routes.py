"""Jobs waiting on partition or group subjects that no running worker serves are not lost, but nothing would ever
run them: each worker's sweep says so in a warning (found by the attacker: a partition_key sent for a type no
worker registers partitioned=True waited for ever, silently)."""

from __future__ import annotations

import logging

import bgjob
from bgjob.placement import unserved_routes
from bgjob.topology import partition_of

from .conftest import wait_until


def test_jobs_no_worker_serves_are_named_and_served_ones_are_not(client, start_worker, caplog) -> None:
    reports = bgjob.Mux()
    reports.handle("render", lambda job: bgjob.Complete(), group="reports")
    client.send_job("plain", None, partition_key="k")  # no worker registers "plain" partitioned
    client.send_job("render", None)  # forwarded to group 'reports' by the plain worker below
    with caplog.at_level(logging.WARNING, logger="bgjob.worker"):
        plain = bgjob.Mux()
        plain.handle("plain", lambda job: bgjob.Complete())
        plain.handle("render", lambda job: bgjob.Complete(), group="reports")
        start_worker(client, plain)
        wait_until(lambda: "which no running worker serves" in caplog.text and "'reports'" in caplog.text,
                   message="the warnings")  # fmt: skip
    assert f"1 job(s) wait in partition {partition_of('k')}, which no running worker serves" in caplog.text
    assert "1 job(s) wait for worker group 'reports', which no running worker serves" in caplog.text
    assert client.queue_stats().routed == 2  # waiting, not lost

    ordered = bgjob.Mux()
    ordered.handle("plain", lambda job: bgjob.Complete(), partitioned=True)
    start_worker(client, ordered)
    start_worker(client, reports, groups=["reports"])
    wait_until(lambda: client.queue_stats().routed == 0, message="both jobs run once their workers run")
    assert client.run(lambda core: unserved_routes(core, "default")) == []
