"""Filling the DLQ stream with many dead letters fast (plain publishes, then one wait), for the scale tests."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import bgjob
from bgjob import headers as hdr
from bgjob import job as jobmod
from bgjob.topology import Topology


def fill_dlq(client: bgjob.Client, count: int, rare_every: int) -> list[str]:
    """Store `count` dead letters: type `fail` on queues default/mail alternately, every `rare_every`-th of type
    `rare`, reasons handler/max_attempts alternately; returns the ids of the rare ones, oldest first."""
    start_messages = client.dlq.count()
    rare: list[str] = []
    entries = []
    now = jobmod.format_time(datetime.now(timezone.utc))
    topology = Topology(client.settings.prefix)
    for n in range(count):
        job_id = f"bulk{n:07d}"
        job_type = "rare" if n % rare_every == rare_every - 1 else "fail"
        if job_type == "rare":
            rare.append(job_id)
        queue = "mail" if n % 2 else "default"
        reason = "max_attempts" if n % 3 == 0 else "handler"
        headers = {
            hdr.HEADER_ID: job_id, hdr.HEADER_TYPE: job_type, hdr.CONTENT_TYPE: jobmod.JSON,
            hdr.DLQ_REASON: reason, hdr.DLQ_ERROR: json.dumps(f"failure {n}"), hdr.DLQ_ATTEMPTS: "3",
            hdr.DLQ_FIRST_FAILURE: now, hdr.DLQ_LAST_FAILURE: now,
        }  # fmt: skip
        entries.append((topology.dlq_subject(queue, reason, job_id, job_type), headers, n))

    async def publish_all(core: object) -> None:
        await core.ensure_dlq()  # plain publishes are stored only if the stream exists
        for subject, headers, n in entries:
            await core.nc.publish(subject, json.dumps({"n": n}).encode(), headers=headers)
        await core.nc.flush(timeout=30)

    client.run(publish_all, timeout=120)
    deadline = time.monotonic() + 60
    while client.dlq.count() < start_messages + count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {client.dlq.count()} of {count} dead letters were stored")
        time.sleep(0.2)
    return rare


def store_dead_letter(client: bgjob.Client, job_id: str, arg: object, *, headers: dict[str, str] | None = None,
                      error: str = "failed", traceback: str | None = None, queue: str = "default",
                      job_type: str = "charge", reason: str = "handler") -> None:  # fmt: skip
    """Store one dead letter as a worker would (its error and traceback as given: *not* scrubbed, so a display
    cannot rely on the worker's scrubbing); waits for the PubAck."""
    now = jobmod.format_time(datetime.now(timezone.utc))
    stored = {
        hdr.HEADER_ID: job_id, hdr.HEADER_TYPE: job_type, hdr.CONTENT_TYPE: jobmod.JSON, hdr.DLQ_REASON: reason,
        hdr.DLQ_ERROR: json.dumps(error), hdr.DLQ_ATTEMPTS: "1", hdr.DLQ_FIRST_FAILURE: now,
        hdr.DLQ_LAST_FAILURE: now, **(headers or {}),
    }  # fmt: skip
    if traceback is not None:
        stored[hdr.DLQ_TRACEBACK] = json.dumps(traceback)
    subject = Topology(client.settings.prefix).dlq_subject(queue, reason, job_id, job_type)

    async def publish(core: object) -> None:
        await core.ensure_dlq()
        await core.js.publish(subject, json.dumps(arg).encode(), headers=stored)

    client.run(publish)
