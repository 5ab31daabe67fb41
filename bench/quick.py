"""Quick numbers for the core: enqueue and process rates against raw nats-py, on a private server.

    python -m bench.quick [--jobs 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid

import nats

import bgjob
from bgjob.server import EmbeddedServer


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def raw_publish(url: str, n: int) -> tuple[float, float]:
    """Sequential acked publishes/s and pipelined publishes/s with plain nats-py."""

    async def run() -> tuple[float, float]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        name = "RAW" + uuid.uuid4().hex[:6].upper()
        await js.add_stream(name=name, subjects=[f"{name.lower()}.>"], storage="file")
        start = time.perf_counter()
        for _i in range(n):
            await js.publish(f"{name.lower()}.x", b'{"i":1}')
        sequential = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for _i in range(n):
            await js.publish_async(f"{name.lower()}.y", b'{"i":1}')
        await js.publish_async_completed()
        pipelined = n / (time.perf_counter() - start)
        await js.delete_stream(name)
        await nc.close()
        return sequential, pipelined

    return asyncio.run(run())


def raw_process(url: str, n: int) -> float:
    """fetch(256)+ack loop throughput with plain nats-py."""

    async def run() -> float:
        nc = await nats.connect(url)
        js = nc.jetstream()
        name = "RAWP" + uuid.uuid4().hex[:6].upper()
        await js.add_stream(name=name, subjects=[f"{name.lower()}.>"], storage="file", retention="workqueue")
        for _i in range(n):
            await js.publish_async(f"{name.lower()}.x", b'{"i":1}')
        await js.publish_async_completed()
        sub = await js.pull_subscribe(f"{name.lower()}.>", durable="c", stream=name)
        done = 0
        start = time.perf_counter()
        while done < n:
            for msg in await sub.fetch(256, timeout=5):
                await msg.ack()
                done += 1
        rate = n / (time.perf_counter() - start)
        await js.delete_stream(name)
        await nc.close()
        return rate

    return asyncio.run(run())


def send_latency(client: bgjob.Client, n: int) -> list[float]:
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        client.send_job("noop", {"i": i}, queue="lat")
        latencies.append(time.perf_counter() - start)
    return latencies


def send_threads(client: bgjob.Client, n: int, threads: int) -> float:
    per_thread = n // threads
    barrier = threading.Barrier(threads + 1)

    def send() -> None:
        barrier.wait()
        for i in range(per_thread):
            client.send_job("noop", {"i": i}, queue="threads")

    workers = [threading.Thread(target=send) for _ in range(threads)]
    for t in workers:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in workers:
        t.join()
    return per_thread * threads / (time.perf_counter() - start)


def send_bulk(client: bgjob.Client, n: int) -> float:
    start = time.perf_counter()
    client.send_jobs([("noop", {"i": i}) for i in range(n)], queue="bulk")
    return n / (time.perf_counter() - start)


def process(client: bgjob.Client, n: int, concurrency: int) -> float:
    queue = f"proc{concurrency}"
    client.ensure_queue(queue)

    async def prefill(core) -> None:  # pipelined, so the fill isn't what we measure
        futures = []
        for i in range(n):
            subject, body, headers, _ = bgjob.client.prepare_job(client.settings, "noop", {"i": i}, queue=queue)
            futures.append(await core.js.publish_async(subject, body, headers=headers))
        await asyncio.gather(*futures)

    client.run(prefill)
    done = threading.Event()
    count = 0
    lock = threading.Lock()

    def noop(job: bgjob.Job) -> bgjob.Result:
        nonlocal count
        with lock:
            count += 1
            if count == n:
                done.set()
        return bgjob.Complete()

    mux = bgjob.Mux()
    mux.handle("noop", noop)
    worker = bgjob.Worker(client, mux, queue=queue, concurrency=concurrency)
    start = time.perf_counter()
    thread = worker.start()
    done.wait(300)
    rate = n / (time.perf_counter() - start)
    worker.stop()
    thread.join()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20000)
    args = parser.parse_args()
    n = args.jobs
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(tmp) as server:
        raw_seq, raw_pipe = raw_publish(server.url, n // 4)
        raw_proc = raw_process(server.url, n)
        client = bgjob.Client(bgjob.Settings(url=server.url)).connect()
        lat = send_latency(client, n // 4)
        seq_rate = len(lat) / sum(lat)
        rate8 = send_threads(client, n, 8)
        rate64 = send_threads(client, n, 64)
        bulk = send_bulk(client, n)
        proc = {c: process(client, n, c) for c in (1, 16, 64)}
        client.close()
    print(f"nats-server {bgjob.server.binary_version(bgjob.server.find_binary())}, {n} jobs")
    print(f"raw nats-py publish sequential      {raw_seq:9.0f}/s")
    print(f"raw nats-py publish pipelined       {raw_pipe:9.0f}/s")
    print(f"send_job 1 thread                   {seq_rate:9.0f}/s  ({seq_rate / raw_seq:.2f}x raw sequential)")
    print(f"send_job 8 threads                  {rate8:9.0f}/s  ({rate8 / raw_pipe:.2f}x raw pipelined)")
    print(f"send_job 64 threads                 {rate64:9.0f}/s  ({rate64 / raw_pipe:.2f}x raw pipelined)")
    print(f"send_jobs 1 thread                  {bulk:9.0f}/s  ({bulk / raw_pipe:.2f}x raw pipelined)")
    print(f"send_job latency p50 {statistics.median(lat) * 1e6:.0f} us, p99 {percentile(lat, 99) * 1e6:.0f} us")
    print(f"raw nats-py fetch(256)+ack          {raw_proc:9.0f}/s")
    for c, r in proc.items():
        print(f"Worker no-op, concurrency {c:<3}       {r:9.0f}/s  ({r / raw_proc:.2f}x raw)")


if __name__ == "__main__":
    main()
