"""Scenario: workflows. bgjob's workflows (bgjob.workflows: chain, group) against Celery's canvas (chain, group)
on Redis and on RabbitMQ, in one run, same machine, same no-op steps, one worker process of 16 threads each:

- chains of 3 no-op steps: N chains started from one thread, the clock stopped when every last step ran
  (chains per second);
- groups of 100 no-op steps: G groups started from one thread, the clock stopped when every step ran (groups
  per second).

The plain path of the same run is the baseline of bgjob's workflow rows ("bgjob, plain jobs"): the same worker
(same process, 16 threads) where a chain is 3 plain jobs, each handler but the last sending the next one with
`client.send_job` (what an application does without the workflow engine), and a group is 100 independent jobs
sent with one `client.send_jobs`. Its ratio, workflow/plain, is what the engine (its bucket writes, its step
records) costs on top of the jobs themselves.

Completion is seen the same way for every system: the last step of a chain (every step of a group) appends a
line to a file the bench counts, so no result backend is needed (Celery runs with `task_ignore_result=True` and
`task_acks_late=True`, as in the peers scenario). bgjob's engine still records every step's value in its
`<PREFIX>_WORKFLOWS` bucket, as it always does. Ratios on Celery's rows are bgjob's rate over each Celery's.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from ..env import Context, ensure_rabbitmq, ensure_redis, flush_redis_db
from ..stats import Measurement, Row, combine
from .common import Plan, log

SCENARIO = "workflows"
CONCURRENCY = 16
GROUP_SIZE = 100
PLAIN = "bgjob, plain jobs"

# One worker script for both bgjob cases: the workflow steps (wf.*) and the same work as plain jobs (wfp.*: each
# handler sends the next job with send_job), so the two differ only in what the driver starts.
BGJOB_WORKER = r"""
import os, sys
import bgjob
url, prefix, queue, done = sys.argv[1:5]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix))
mux = bgjob.Mux()
fd = os.open(done, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

def finished(job):
    os.write(fd, b".\n")
    return bgjob.Complete(1)

mux.handle("wf.step", lambda job: bgjob.Complete(1))
mux.handle("wf.last", finished)
def sends(next_type):
    def handler(job):
        client.send_job(next_type, 1, queue=queue)
        return bgjob.Complete(1)
    return handler

mux.handle("wfp.first", sends("wfp.second"))
mux.handle("wfp.second", sends("wfp.last"))
mux.handle("wfp.last", finished)

open(done + ".ready", "w").close()
bgjob.Worker(client, mux, queue=queue, concurrency=int(sys.argv[5]), fetch_timeout=0.5).run()
"""

CELERY_WORKER = r"""
import os, sys
from celery import Celery
from celery.signals import worker_ready
broker, queue, done, concurrency = sys.argv[1:5]
app = Celery("benchwf", broker=broker, set_as_current=False)
app.conf.update(task_acks_late=True, task_ignore_result=True, worker_enable_remote_control=False,
                worker_send_task_events=False, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True,
                broker_transport_options={"confirm_publish": True} if broker.startswith("amqp") else {})
fd = os.open(done, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

@app.task(name="wf.step")
def step(*args):
    return 1

@app.task(name="wf.last")
def last(*args):
    os.write(fd, b".\n")
    return 1

worker_ready.connect(lambda **_: open(done + ".ready", "w").close(), weak=False)
app.worker_main(["worker", "--pool=threads", f"--concurrency={concurrency}", f"--queues={queue}",
                 "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel=WARNING"])
"""


class _Peer:
    """One system: a worker process, and how to start a chain and a group."""

    name = ""

    def __init__(self, ctx: Context, queue: str, done: pathlib.Path) -> None:
        self.ctx, self.queue, self.done = ctx, queue, done
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start_worker(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
        self.proc = subprocess.Popen([sys.executable, "-c", *self.argv()], env=env)
        deadline = time.monotonic() + 60
        while not pathlib.Path(str(self.done) + ".ready").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: the worker did not start")
            time.sleep(0.05)

    def stop_worker(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def chain(self) -> None:
        raise NotImplementedError

    def group(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Bgjob(_Peer):
    name = "bgjob"

    def __init__(self, ctx: Context, queue: str, done: pathlib.Path) -> None:
        super().__init__(ctx, queue, done)
        import bgjob

        self.bgjob = bgjob
        self.client = bgjob.Client(bgjob.Settings(url=ctx.nats_url, prefix=ctx.prefix)).connect()
        self.client.ensure_queue(queue)

    def argv(self) -> list[str]:
        return [BGJOB_WORKER, self.ctx.nats_url, self.ctx.prefix, self.queue, str(self.done), str(CONCURRENCY)]

    def chain(self) -> None:
        bg, q = self.bgjob, self.queue
        self.client.start(bg.chain(bg.signature("wf.step", 0).set(queue=q), bg.signature("wf.step").set(queue=q),
                                   bg.signature("wf.last").set(queue=q)))  # fmt: skip

    def group(self) -> None:
        bg, q = self.bgjob, self.queue
        self.client.start(bg.group(bg.signature("wf.last", i).set(queue=q) for i in range(GROUP_SIZE)))

    def close(self) -> None:
        self.client.close()


class _BgjobPlain(_Bgjob):
    """The plain path: a chain as 3 jobs each sending the next with send_job, a group as one send_jobs."""

    name = PLAIN

    def chain(self) -> None:
        self.client.send_job("wfp.first", 0, queue=self.queue)

    def group(self) -> None:
        self.client.send_jobs([("wfp.last", i) for i in range(GROUP_SIZE)], queue=self.queue)


class _Celery(_Peer):
    def __init__(self, ctx: Context, queue: str, done: pathlib.Path, broker: str) -> None:
        super().__init__(ctx, queue, done)
        from celery import Celery

        self.broker = broker
        self.app = Celery("benchwf", broker=broker, set_as_current=False)
        self.app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                             broker_transport_options={"confirm_publish": True} if broker.startswith("amqp")
                             else {})  # fmt: skip

    def argv(self) -> list[str]:
        return [CELERY_WORKER, self.broker, self.queue, str(self.done), str(CONCURRENCY)]

    def chain(self) -> None:
        from celery import chain

        q = self.queue
        chain(self.app.signature("wf.step", args=(0,), queue=q), self.app.signature("wf.step", queue=q),
              self.app.signature("wf.last", queue=q)).apply_async()  # fmt: skip

    def group(self) -> None:
        from celery import group

        q = self.queue
        group(self.app.signature("wf.last", args=(i,), queue=q) for i in range(GROUP_SIZE)).apply_async()

    def close(self) -> None:
        if self.broker.startswith("amqp"):
            with self.app.connection_for_write() as conn:
                channel = conn.channel()
                try:
                    channel.queue_delete(self.queue)
                    channel.exchange_delete(self.queue)
                finally:
                    channel.close()
        self.app.close()


def _lines(path: pathlib.Path) -> int:
    try:
        return path.stat().st_size // 2
    except FileNotFoundError:
        return 0


def _timed(peer: _Peer, start_one: Callable[[], None], count: int, expected: int, timeout: float) -> Measurement:
    """Start `count` workflows from this thread; the rate once `expected` lines (finished steps) are in."""
    before = _lines(peer.done)
    clock = time.perf_counter
    began = clock()
    for _ in range(count):
        start_one()
    sent = clock() - began
    deadline = time.monotonic() + timeout
    while _lines(peer.done) - before < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{peer.name}: {_lines(peer.done) - before}/{expected} steps done after {timeout}s")
        time.sleep(0.002)
    elapsed = clock() - began
    return Measurement(rate=count / elapsed, extra={"start_seconds": sent, "seconds": elapsed})


def run(ctx: Context, plan: Plan) -> list[Row]:
    chains = 100 if plan.quick else 500
    groups = 5 if plan.quick else 20
    redis_db = None
    if not ctx.redis_url:
        found = ensure_redis()
        if found is not None:
            redis_url, redis_db = found
        else:
            redis_url = ""
    else:
        redis_url = ctx.redis_url
    amqp_url = ctx.amqp_url or ensure_rabbitmq() or ""
    work = pathlib.Path(ctx.work_dir or "/tmp")
    reps: dict[tuple[str, str], list[Measurement]] = {}
    skipped: dict[str, str] = {}
    makers: list[tuple[str, Callable[[str, pathlib.Path], _Peer]]] = [
        (PLAIN, lambda q, d: _BgjobPlain(ctx, q, d)), ("bgjob", lambda q, d: _Bgjob(ctx, q, d))]  # fmt: skip
    if redis_url:
        makers.append(("celery-redis", lambda q, d: _make_celery("celery-redis", ctx, q, d, redis_url)))
    else:
        skipped["celery-redis"] = "no Redis"
    if amqp_url:
        makers.append(("celery-rabbitmq", lambda q, d: _make_celery("celery-rabbitmq", ctx, q, d, amqp_url)))
    else:
        skipped["celery-rabbitmq"] = "no RabbitMQ"
    try:
        for rep in range(plan.reps):
            for name, make in makers:  # the systems alternate within a repetition, so that drift hits them alike
                log(f"workflows: {name}, repetition {rep + 1}/{plan.reps}")
                queue = ctx.queue("wf")
                peer = make(queue, work / f"wf-{name}-{rep}.done")
                try:
                    peer.start_worker()
                    peer.chain()  # warm: connections, queue, bucket
                    _timed(peer, lambda: None, 0, 1, 30)
                    m = _timed(peer, peer.chain, chains, chains, 120)
                    reps.setdefault((name, "chain"), []).append(m)
                    m = _timed(peer, peer.group, groups, groups * GROUP_SIZE, 120)
                    reps.setdefault((name, "group"), []).append(m)
                except Exception as exc:  # noqa: BLE001 - one broken peer must not end the run
                    log(f"workflows: {name} failed: {exc!r}")
                    skipped[name] = f"failed: {exc}"
                finally:
                    peer.stop_worker()
                    peer.close()
    finally:
        if redis_db is not None:
            flush_redis_db(redis_url)
    rows: list[Row] = []
    cases = {"chain": f"chains of 3 no-op steps ({chains}, chains/s)",
             "group": f"groups of {GROUP_SIZE} no-op steps ({groups}, groups/s)"}  # fmt: skip
    for what, case in cases.items():
        mine = combine(reps[("bgjob", what)]) if ("bgjob", what) in reps else None
        plain = combine(reps[(PLAIN, what)]) if (PLAIN, what) in reps else None
        for name, _ in makers:
            if (name, what) not in reps:
                continue
            m = combine(reps[(name, what)])
            if name == PLAIN:
                how = ("3 jobs, each handler sending the next with send_job" if what == "chain"
                       else f"{GROUP_SIZE} jobs sent with one send_jobs")  # fmt: skip
                rows.append(Row(SCENARIO, case, name, m, note=f"baseline of bgjob's ratio: the plain path, {how}"))
            elif name == "bgjob":
                ratio = m.rate / plain.rate if plain is not None and plain.rate and m.rate else None
                rows.append(Row(SCENARIO, case, name, m, PLAIN if ratio else "", ratio,
                                "workflow engine; baseline of the Celery rows' ratios"))  # fmt: skip
            elif mine is not None and mine.rate and m.rate:
                ratio = mine.rate / m.rate
                rows.append(Row(SCENARIO, case, name, m, "bgjob", ratio, f"bgjob is {ratio:.2f}x {name}'s rate"))
                log(f"workflows: {case}: bgjob {mine.rate:.1f}/s, {name} {m.rate:.1f}/s: ratio {ratio:.2f}")
            else:
                rows.append(Row(SCENARIO, case, name, m))
    for name, why in skipped.items():
        log(f"workflows: skipped {name}: {why}")
    return rows


def _make_celery(name: str, ctx: Context, queue: str, done: pathlib.Path, broker: str) -> _Peer:
    peer = _Celery(ctx, queue, done, broker)
    peer.name = name
    return peer
