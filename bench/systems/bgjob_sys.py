"""bgjob itself: `Client.send_job` / `send_jobs` and a `bgjob.Worker` with thread concurrency."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import bgjob

from . import OnJob, System


class Bgjob(System):
    name = "bgjob"
    config = (
        "JetStream file storage, WorkQueue stream, PubAck awaited per job, explicit ack after the handler; "
        "`bgjob.Worker` with a thread pool of `concurrency`"
    )
    has_bulk = True

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._client: bgjob.Client | None = None

    @property
    def client(self) -> bgjob.Client:
        if self._client is None:
            self._client = bgjob.Client(bgjob.Settings(url=self.ctx.nats_url, prefix=self.ctx.prefix)).connect()
        return self._client

    def producer(self, queue: str) -> Callable[[dict[str, Any]], None]:
        client = self.client
        client.ensure_queue(queue)

        def send(arg: dict[str, Any]) -> None:
            client.send_job("noop", arg, queue=queue)

        return send

    def unique_producer(self, queue: str, unique_for: float = 3600) -> Callable[[dict[str, Any]], None]:
        """`send_job` with a fresh `job_id` and `unique_for` per call: every send reserves its id, then publishes.
        The queue's stream and the unique-ids bucket exist before the clock starts."""
        client = self.client
        client.ensure_queue(queue)
        client.send_job("noop", {}, queue=queue, job_id=uuid.uuid4().hex, unique_for=unique_for)

        def send(arg: dict[str, Any]) -> None:
            client.send_job("noop", arg, queue=queue, job_id=uuid.uuid4().hex, unique_for=unique_for)

        return send

    def cleanup_unique(self) -> None:
        """Delete the unique-ids bucket `unique_producer` filled."""

        async def delete(core: Any) -> None:
            await core.js.delete_key_value(core.topology.stream_prefix + "UNIQUE")
            core._buckets.pop("UNIQUE", None)

        self.client.run(delete)

    def bulk(self, queue: str, args: list[dict[str, Any]]) -> None:
        self.client.send_jobs([("noop", arg) for arg in args], queue=queue)

    def cleanup(self, queue: str) -> None:
        async def delete(core: Any) -> None:
            await core.js.delete_stream(core.topology.queue_stream(queue))
            core._provisioned.discard(queue)

        self.client.run(delete)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def serve(self, queue: str, concurrency: int, on_job: OnJob, ready: Callable[[], None]) -> None:
        mux = bgjob.Mux()

        def noop(job: bgjob.Job) -> bgjob.Result:
            on_job(job.arg)
            return bgjob.Complete()

        def resched(job: bgjob.Job) -> bgjob.Result:
            """First run: reschedule itself `d` seconds on (with its due time in the arg); second run: count."""
            if job.arg.get("n", 0) == 0:
                delay = job.arg["d"]
                return bgjob.Reschedule(bgjob.ByAfterTime(delay), arg={"n": 1, "t": time.time() + delay})
            on_job(job.arg)
            return bgjob.Complete()

        mux.handle("noop", noop)
        mux.handle("resched", resched)
        worker = bgjob.Worker(self.client, mux, queue=queue, concurrency=concurrency)
        thread = worker.start()
        ready()
        while thread.is_alive():
            thread.join(1.0)


class BgjobEvents(Bgjob):
    """bgjob with `Settings(events=True)`: every send publishes an `enqueued` event, every worker `started` and one
    per fate (bench/scenarios/events.py measures what that costs)."""

    name = "bgjob+events"
    config = Bgjob.config + "; Settings(events=True): lifecycle events in the <PREFIX>_EVENTS stream"

    @property
    def client(self) -> bgjob.Client:
        if self._client is None:
            settings = bgjob.Settings(url=self.ctx.nats_url, prefix=self.ctx.prefix, events=True)
            self._client = bgjob.Client(settings).connect()
        return self._client

    def cleanup(self, queue: str) -> None:
        super().cleanup(queue)

        async def delete(core: Any) -> None:
            try:
                await core.js.delete_stream(core.topology.events_stream)
            except Exception:  # noqa: BLE001 - not made yet
                pass
            core._provisioned.discard("\0events")

        self.client.run(delete)
