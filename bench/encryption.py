"""`python -m bench.encryption`: what encrypting job bodies at rest (Settings.encryption_keys) costs per job.

For a small (100 B) and a large (64 KiB) arg, measured in one process against one private nats-server, with
and without a key, in alternating rounds (so both see the same machine load): the cipher alone (encrypt +
decrypt, µs per job), `send_job` from one thread (jobs/s), and end to end (N jobs sent from one thread and run
by an in-process worker, concurrency 16: jobs/s from the first send to the last handler call). Each encrypted
figure is printed as a ratio of the unencrypted one from the same run (1.00x: no cost).
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import bgjob
from bgjob.encryption import Cipher, generate_key
from bgjob.headers import HEADER_ID

from .env import nats_server

SIZES = {"100 B": 100, "64 KiB": 64 * 1024}


def arg_of(size: int) -> dict[str, str]:
    """A JSON arg whose encoded body is `size` bytes."""
    return {"data": "x" * (size - len('{"data": ""}'))}


def cipher_us(size: int, n: int) -> float:
    """µs per encrypt + decrypt of a `size`-byte body."""
    cipher, body = Cipher([generate_key()]), b"x" * size
    headers = {HEADER_ID: uuid.uuid4().hex}
    t0 = time.perf_counter()
    for _ in range(n):
        h = dict(headers)
        cipher.decrypt(cipher.encrypt(body, h), h)
    return (time.perf_counter() - t0) / n * 1e6


def send_rate(client: bgjob.Client, queue: str, arg: object, n: int) -> float:
    """send_job calls per second from one thread."""
    t0 = time.perf_counter()
    for _ in range(n):
        client.send_job("noop", arg, queue=queue)
    return n / (time.perf_counter() - t0)


def e2e_rate(client: bgjob.Client, queue: str, arg: object, n: int) -> float:
    """Jobs per second from the first send to the n-th handler call, a worker (16 threads) in this process."""
    done = threading.Event()
    count = [0]
    lock = threading.Lock()

    def handle(job: bgjob.Job) -> bgjob.Result:
        with lock:
            count[0] += 1
            if count[0] == n:
                done.set()
        return bgjob.Complete()

    mux = bgjob.Mux()
    mux.handle("noop", handle)
    worker = bgjob.Worker(client, mux, queue=queue, concurrency=16, fetch_timeout=0.5)
    thread = worker.start()
    try:
        client.send_job("noop", arg, queue=queue)  # the worker is fetching: its start-up is not measured
        deadline = time.monotonic() + 30
        while count[0] < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up job did not run")
            time.sleep(0.01)
        with lock:
            count[0] = 0
        done.clear()
        t0 = time.perf_counter()
        for _ in range(n):
            client.send_job("noop", arg, queue=queue)
        if not done.wait(120):
            raise RuntimeError(f"only {count[0]} of {n} jobs ran within 120 s")
        return n / (time.perf_counter() - t0)
    finally:
        worker.stop()
        thread.join(30)


@contextlib.contextmanager
def clients(url: str) -> Iterator[dict[str, bgjob.Client]]:
    prefix = "benchenc" + uuid.uuid4().hex[:6]
    made = {
        "plain": bgjob.Client(bgjob.Settings(url=url, prefix=prefix)).connect(),
        "encrypted": bgjob.Client(bgjob.Settings(url=url, prefix=prefix, encryption_keys=(generate_key(),))).connect(),
    }
    try:
        yield made
    finally:
        for c in made.values():
            c.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encryption", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per send / end-to-end round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode (median kept)")
    args = parser.parse_args(argv)
    print(f"{'arg':8} {'measure':28} {'plain':>12} {'encrypted':>12} {'ratio':>7}")
    for label, size in SIZES.items():
        plain_us = cipher_us(size, 2000)
        print(f"{label:8} {'cipher encrypt+decrypt µs/job':28} {'-':>12} {plain_us:>12.1f} {'':>7}")
    with tempfile.TemporaryDirectory(prefix="bgjob-bench-enc-") as tmp, nats_server(pathlib.Path(tmp)) as url, \
            clients(url) as made:  # fmt: skip
        for label, size in SIZES.items():
            arg = arg_of(size)
            n = args.jobs if size < 4096 else max(args.jobs // 4, 100)
            for measure, run in (("send_job jobs/s (1 thread)", send_rate), ("end to end jobs/s", e2e_rate)):
                rates: dict[str, list[float]] = {"plain": [], "encrypted": []}
                for r in range(args.rounds):
                    for mode in ("plain", "encrypted") if r % 2 == 0 else ("encrypted", "plain"):
                        queue = f"q{uuid.uuid4().hex[:8]}"
                        rates[mode].append(run(made[mode], queue, arg, n))
                plain, enc = statistics.median(rates["plain"]), statistics.median(rates["encrypted"])
                print(f"{label:8} {measure:28} {plain:>12.0f} {enc:>12.0f} {enc / plain:>6.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
