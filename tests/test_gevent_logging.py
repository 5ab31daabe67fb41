"""gevent: bgjob's loop thread (a real OS thread) never takes a logging lock that gevent patched, so greenlets
that log never freeze while the loop thread logs too (a server going down and up makes it log)."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bgjob.server import EmbeddedServer

from .conftest import python_process

pytest.importorskip("gevent")

#: rounds of the scenario in one process: the old code froze some greenlets in 6 of 9 single rounds.
ROUNDS = 3

LOGGING_UNDER_OUTAGES = r"""
from gevent import monkey; monkey.patch_all()
import asyncio, logging, sys, time, gevent, bgjob
from gevent.fileobject import FileObjectPosix

url, log_path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Configured after patching: every handler lock is a gevent lock.
logging.basicConfig(filename=log_path, level=logging.DEBUG, format="%(asctime)s %(threadName)s %(name)s %(message)s")
log = logging.getLogger("app")
client = bgjob.Client(bgjob.Settings(url=url, prefix="glog", retry_for=1.0, request_timeout=1.0)).connect()
client.ensure_queue()
commands = FileObjectPosix(sys.stdin.fileno(), "rb")
for round_no in range(rounds):
    stop = False

    def logger(i):
        n = 0
        while not stop:
            log.info("greenlet %d line %d", i, n)
            n += 1
            gevent.sleep(0.001 * (i % 3))

    def sender(i):
        while not stop:
            try:
                client.send_job("tick", i)
            except bgjob.BgjobError as exc:
                log.warning("send failed: %s", type(exc).__name__)
            gevent.sleep(0.01)

    async def loop_logger():
        # Code on bgjob's loop (hooks, nats-py, bgjob itself) logging steadily, besides what the outages log.
        n = 0
        while not stop:
            logging.getLogger("bgjob.loop-test").info("loop line %d", n)
            n += 1
            await asyncio.sleep(0.002)

    async def start_loop_logger(core):
        tasks.add(asyncio.get_running_loop().create_task(loop_logger()))

    tasks = set()
    client.run(start_loop_logger)
    greenlets = [gevent.spawn(logger, i) for i in range(50)] + [gevent.spawn(sender, i) for i in range(20)]
    print("ready", flush=True)
    assert commands.readline().strip() == b"stop"
    stop = True
    finished = gevent.joinall(greenlets, timeout=30)
    print(f"round {round_no}: {len(greenlets) - len(finished)} unfinished", flush=True)
client.close()
print("done", flush=True)
"""


def test_greenlets_that_log_never_freeze_while_the_loop_thread_logs_through_server_outages(
    own_server: EmbeddedServer, tmp_path: Path
) -> None:
    proc = python_process(LOGGING_UNDER_OUTAGES, own_server.url, str(tmp_path / "app.log"), str(ROUNDS),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.decode().strip()) for line in proc.stdout], daemon=True).start()

    def next_line() -> str:
        try:
            return lines.get(timeout=60)  # generous: a round takes about 5 s; a frozen process says nothing
        except queue.Empty:
            return "(nothing within 60 s: the process froze)"

    rounds = []
    try:
        for _ in range(ROUNDS):
            assert next_line() == "ready"
            for _ in range(2):  # the server goes down and up twice
                own_server.stop()
                time.sleep(1.0)  # the outage itself: bgjob's loop thread logs it while greenlets log
                own_server.start()
                time.sleep(1.0)
            proc.stdin.write(b"stop\n")
            proc.stdin.flush()
            rounds.append(next_line())
        last = next_line()
    finally:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
    assert rounds == [f"round {i}: 0 unfinished" for i in range(ROUNDS)], err
    assert last == "done" and proc.returncode == 0, err


LOOP_THREAD_RECORDS = r"""
from gevent import monkey; monkey.patch_all()
import contextvars, logging, sys, gevent, bgjob
from gevent.monkey import get_original

get_ident = get_original("_thread", "get_ident")
main_thread = get_ident()
tag = contextvars.ContextVar("tag", default="-")
seen = []

class Recorder(logging.Handler):
    def emit(self, record):
        seen.append((record.name, record.getMessage(), get_ident() == main_thread, record.tag))

class Tag(logging.Filter):
    def filter(self, record):
        record.tag = tag.get()
        return True

recorder = Recorder()
recorder.addFilter(Tag())
logging.basicConfig(level=logging.DEBUG, handlers=[recorder])
client = bgjob.Client(bgjob.Settings(url=sys.argv[1], prefix="ghand")).connect()

async def log_on_the_loop(core):
    tag.set("from-the-loop")
    assert get_ident() != main_thread
    for name in ("bgjob.worker", "nats.aio.client", "asyncio", "someapp.library"):
        logging.getLogger(name).warning("hello from %s", name)
        logging.getLogger(name).debug("debug from %s", name)

client.run(log_on_the_loop)
gevent.sleep(0.2)
logging.getLogger("app").warning("from a greenlet")
client.close()
for entry in seen:
    if "hello" in entry[1] or "debug" in entry[1] or "greenlet" in entry[1]:
        print(*entry, sep="|")
"""


def test_every_logger_used_on_the_loop_thread_is_handled_in_the_hub_thread_with_the_loop_context(
    nats_server: EmbeddedServer,
) -> None:
    proc = python_process(LOOP_THREAD_RECORDS, nats_server.url, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = sorted(out.splitlines())
    names = ("asyncio", "bgjob.worker", "nats.aio.client", "someapp.library")
    expected = sorted(
        [f"{name}|{kind} from {name}|True|from-the-loop" for name in names for kind in ("hello", "debug")]
        + ["app|from a greenlet|True|-"]
    )
    assert lines == expected, err
