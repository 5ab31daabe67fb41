"""The worker process the reliability scenarios start, kill and restart.

Run as `python -c "from tests.reliability.worker_app import main; main()" CONFIG_JSON`. Every handler
appends one JSON line per event to the record file (O_APPEND, one write per line, fsync'd), so what a
handler did survives the process being SIGKILLed a moment later.

Config keys: record (path), url (None: BGJOB_URL through Settings.from_env), prefix, ack_wait,
replicas, concurrency, grace_period, max_attempts, verify_keys, nats_options, fsync (default true),
debug (logger names to log at DEBUG, e.g. ["bgjob.worker"]).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import bgjob


class Recorder:
    """Append-only, crash-safe record of what handlers did."""

    def __init__(self, path: str, fsync: bool = True) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fsync = fsync

    def record(self, job: bgjob.Job, event: str, **extra: Any) -> None:
        line = {"id": job.id, "ev": event, "attempt": job.attempt, "pid": os.getpid(), "t": time.time(), **extra}
        os.write(self._fd, (json.dumps(line) + "\n").encode())
        if self._fsync:
            os.fsync(self._fd)


def portable(value: Any) -> Any:
    """A job's arg as JSON (bytes as {"__bytes__": base64})."""
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    return value


def build_mux(recorder: Recorder) -> bgjob.Mux:
    mux = bgjob.Mux()

    @mux.handler("work")
    def work(job: bgjob.Job) -> bgjob.Result:
        """Sleeps arg["ms"] milliseconds, then records completion."""
        time.sleep(job.arg.get("ms", 0) / 1000)
        recorder.record(job, "done")
        return bgjob.Complete()

    @mux.handler("slow")
    def slow(job: bgjob.Job) -> bgjob.Result:
        """Records its start, sleeps arg["s"] seconds (only on attempt 1 when arg["first_only"]), records done."""
        recorder.record(job, "start")
        if job.attempt == 1 or not job.arg.get("first_only"):
            time.sleep(job.arg["s"])
        recorder.record(job, "done")
        return bgjob.Complete()

    def echo(job: bgjob.Job) -> bgjob.Result:
        """Records the arg and user headers it got, for round-trip checks."""
        recorder.record(job, "done", type=job.type, arg=portable(job.arg), headers=dict(job.headers))
        return bgjob.Complete()

    for job_type in ("echo", "billing.invoice", "a:b-c_d"):
        mux.handle(job_type, echo)

    @mux.handler("poison")
    def poison(job: bgjob.Job) -> bgjob.Result:
        """Records its start, then ends its own process as an OOM kill (arg["how"] "sigkill") or a C extension
        calling exit() (arg["how"] "exit": status 3, unlike Python's 1 for an uncaught error) would."""
        recorder.record(job, "start")
        if job.arg.get("how") == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # not reached: the signal is delivered before kill() returns
        return bgjob.Complete()

    @mux.handler("dead")
    def dead(job: bgjob.Job) -> bgjob.Result:
        recorder.record(job, "done")
        return bgjob.MoveToDlq("refused on purpose")

    return mux


def main() -> None:
    config = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    for name in config.get("debug", ()):
        logging.getLogger(name).setLevel(logging.DEBUG)
    options: dict[str, Any] = {
        "prefix": config["prefix"],
        "ack_wait": config.get("ack_wait", 5.0),
        "retry_for": config.get("retry_for", 30.0),
        "nats_options": config.get("nats_options", {}),
    }
    if config.get("replicas"):
        options["replicas"] = config["replicas"]
    if config.get("verify_keys"):
        options["verify_keys"] = tuple(config["verify_keys"])
    settings = bgjob.Settings.from_env(url=config.get("url"), **options)
    client = bgjob.Client(settings)
    recorder = Recorder(config["record"], fsync=config.get("fsync", True))
    worker = bgjob.Worker(
        client,
        build_mux(recorder),
        concurrency=config.get("concurrency", 16),
        grace_period=config.get("grace_period", 30.0),
        fetch_timeout=0.5,
        retry_policy=bgjob.RetryPolicy(max_attempts=config.get("max_attempts", 3), base_delay=0.2, jitter=0),
    )
    worker.run()  # SIGTERM/SIGINT drain (we are the main thread)
    client.close()
    logging.getLogger("worker_app").info("worker exited cleanly after %d jobs", worker.processed)
