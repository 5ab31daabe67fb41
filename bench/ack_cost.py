"""CPU per ack: nats-py's `Msg.ack` one message at a time against the worker's `settle.ack_all` in batches of 8
(issue 21, goal 1). `python -m bench.ack_cost`: private nats-server, 20,000 deliveries per round, two rounds each;
prints µs of this process's CPU per ack (the figures to compare are the two methods' in the same run)."""

from __future__ import annotations

import asyncio
import pathlib
import tempfile
import time

import nats
from nats.js.api import ConsumerConfig

from bgjob.server import EmbeddedServer
from bgjob.worker.settle import ack_all

N, BATCH = 20_000, 8


async def _measure(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="ACKCOST", subjects=["ackcost"])
    for round_, method in enumerate(("Msg.ack", "ack_all", "Msg.ack", "ack_all")):
        for _ in range(0, N, 500):
            await asyncio.gather(*[js.publish("ackcost", b"x") for _ in range(500)])
        sub = await js.pull_subscribe("ackcost", durable=f"c{round_}", config=ConsumerConfig(max_ack_pending=N))
        msgs = []
        while len(msgs) < N:
            msgs += await sub.fetch(1000, timeout=5)
        start = time.process_time()
        if method == "Msg.ack":
            for msg in msgs:
                await msg.ack()
        else:
            for i in range(0, N, BATCH):
                await ack_all(nc, msgs[i : i + BATCH])
        await nc.flush()
        print(f"{method:8} {(time.process_time() - start) / N * 1e6:5.2f} µs CPU per ack")
        await js.purge_stream("ACKCOST")
    await nc.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as work, EmbeddedServer(pathlib.Path(work) / "nats") as server:
        asyncio.run(_measure(server.url))


if __name__ == "__main__":
    main()
