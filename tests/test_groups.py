"""Worker groups (bgjob.placement, from ebind): `@mux.handler(t, group=g)` runs only on `Worker(..., groups=[g])`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bgjob
from bgjob.errors import ConfigurationError, HandlerError

from .conftest import ROOT, drain, wait_until


def make_mux(label: str, ran: queue.Queue) -> bgjob.Mux:
    """The handlers every worker registers (one shared module in a real project), each run recorded with the
    worker's `label`."""
    mux = bgjob.Mux()

    def render(job: bgjob.Job) -> bgjob.Result:
        ran.put((label, job.type, job.arg, job.attempt))
        if job.arg == "flaky" and job.attempt == 1:
            return bgjob.Retry(1.5)  # a retry schedule: back through job.<type>, forwarded to the group again
        return bgjob.Complete()

    mux.handle("render-pdf", render, group="reports")
    mux.handle("plain", lambda job: ran.put((label, job.type, job.arg, job.attempt)) or bgjob.Complete())
    return mux


def test_a_grouped_type_waits_for_its_group_and_never_runs_on_a_default_worker(client, make_client,
                                                                                start_worker) -> None:  # fmt: skip
    ran: queue.Queue = queue.Queue()
    for arg in ("a", "b", "flaky"):
        client.send_job("render-pdf", arg)  # the producer knows nothing of groups: job.render-pdf
    start_worker(make_client(), make_mux("default", ran))
    client.send_job("plain", "first")
    assert drain(ran, 1) == [("default", "plain", "first", 1)]
    # the default worker forwarded the three to the group's subject, where they wait (counted as routed)
    wait_until(lambda: client.queue_stats().routed == 3, message="3 grouped jobs waiting on the group's subject")
    stats = client.queue_stats()
    assert (stats.pending, stats.in_flight, stats.scheduled) == (0, 0, 0)
    assert ran.empty()

    start_worker(make_client(), make_mux("reports", ran), groups=["reports"])
    got = drain(ran, 4)
    assert sorted(got) == [("reports", "render-pdf", "a", 1), ("reports", "render-pdf", "b", 1),
                           ("reports", "render-pdf", "flaky", 1), ("reports", "render-pdf", "flaky", 2)]  # fmt: skip
    client.send_job("plain", "second")  # the group worker serves no main consumer: the default worker runs it
    assert drain(ran, 1) == [("default", "plain", "second", 1)]
    wait_until(lambda: client.queue_stats().routed == 0, message="the group's subject emptied")
    assert ran.empty()

    topology = client._ensure()[1].topology

    async def consumers(core) -> set[str]:
        return {info.name for info in await core.js.consumers_info(topology.queue_stream("default"))}

    names = client.run(consumers)
    assert topology.group_consumer("default", "reports") in names and topology.consumer("default") in names


def test_a_group_worker_is_listed_with_its_groups(client, make_client, start_worker) -> None:
    ran: queue.Queue = queue.Queue()
    worker = start_worker(make_client(), make_mux("reports", ran), groups=["reports"])

    async def entry(core) -> dict:
        kv = await core.js.key_value(f"{topology.stream_prefix}WORKERS")
        return json.loads((await kv.get(worker.id)).value)

    topology = client._ensure()[1].topology
    wait_until(lambda: worker.id in {w.id for w in client.workers()}, message="the worker's directory entry")
    assert client.run(entry)["groups"] == ["reports"]
    assert [(w.groups, w.claims) for w in client.workers() if w.id == worker.id] == [(("reports",), ())]


GROUP_JOBS = """
import os
import bgjob

mux = bgjob.Mux()

def recorder(label):
    def handler(job):
        with open(os.environ["RUNS_LOG"], "a") as f:
            f.write(f"{label} {job.type} {job.arg} {os.getpid()}\\n")
        return bgjob.Complete()
    return handler

mux.handle("alpha.job", recorder("alpha"), group="alpha")
mux.handle("beta.job", recorder("beta"), group="beta")
mux.handle("plain", recorder("plain"))
"""


def test_two_groups_served_by_two_cli_worker_processes_each_get_only_theirs(client, nats_server, prefix,
                                                                            tmp_path: Path) -> None:  # fmt: skip
    (tmp_path / "groupjobs.py").write_text(textwrap.dedent(GROUP_JOBS))
    log = tmp_path / "runs.log"
    env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT),
           "RUNS_LOG": str(log)}  # fmt: skip
    client.send_jobs([("alpha.job", i) for i in range(20)] + [("beta.job", i) for i in range(20)]
                     + [("plain", i) for i in range(5)])  # fmt: skip
    started = []
    try:
        for args in (["--group", "alpha"], ["--group", "beta"], []):
            started.append(subprocess.Popen([sys.executable, "-m", "bgjob", "--log-level", "WARNING", "worker",
                                             "groupjobs", "--concurrency", "4", *args], env=env, cwd=tmp_path,
                                            stderr=subprocess.PIPE, text=True))  # fmt: skip
        alpha, beta, default = (proc.pid for proc in started)

        def runs() -> list[list[str]]:
            return [line.split() for line in log.read_text().splitlines()] if log.exists() else []

        wait_until(lambda: len(runs()) == 45, timeout=60, message="45 jobs to run")
    finally:
        for proc in started:
            proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=30)[1] for proc in started]
    assert [proc.returncode for proc in started] == [0, 0, 0], errors
    by_pid = {str(alpha): "alpha", str(beta): "beta", str(default): "plain"}
    done = runs()
    assert all(by_pid[pid] == label for label, _, _, pid in done), done  # each process ran only its own types
    assert sorted((label, int(arg)) for label, _, arg, _ in done) == sorted(
        [("alpha", i) for i in range(20)] + [("beta", i) for i in range(20)] + [("plain", i) for i in range(5)]
    )  # every job once


def test_one_worker_may_serve_two_groups(client, make_client, start_worker) -> None:
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("a", lambda job: ran.put(job.type) or bgjob.Complete(), group="ga")
    mux.handle("b", lambda job: ran.put(job.type) or bgjob.Complete(), group="gb")
    start_worker(make_client(), mux)  # forwards both
    worker = start_worker(make_client(), mux, groups=["ga", "gb", "ga"])
    assert worker.groups == ("ga", "gb")
    client.send_jobs([("a", None), ("b", None)])
    assert sorted(drain(ran, 2)) == ["a", "b"]


def test_bad_groups_are_refused_by_name() -> None:
    mux = bgjob.Mux()
    with pytest.raises(HandlerError, match=r"invalid group 'a\.b'"):
        mux.handle("t", lambda job: bgjob.Complete(), group="a.b")
    with pytest.raises(HandlerError, match="group= cannot be combined with singleton"):
        mux.handle("t", lambda job: bgjob.Complete(), group="g", singleton=True)
    with pytest.raises(HandlerError, match="group= cannot be combined with partitioned"):
        mux.handle("t", lambda job: bgjob.Complete(), group="g", partitioned=True)
    assert "t" not in mux  # nothing registered by a refusal
    mux.handle("t", lambda job: bgjob.Complete(), group="reports")
    assert mux.options("t").group == "reports"

    client = bgjob.Client(bgjob.Settings(prefix="x"))
    with pytest.raises(ConfigurationError, match=r"group 'other': no handler .* group='other'"):
        bgjob.Worker(client, mux, groups=["other"])
    with pytest.raises(TypeError, match="groups must be a list"):
        bgjob.Worker(client, mux, groups="reports")  # type: ignore[arg-type]
    with pytest.raises(bgjob.InvalidJob, match="invalid group"):
        bgjob.Worker(client, mux, groups=["no spaces"])
    with pytest.raises(ConfigurationError, match="holds no claims"):
        bgjob.Worker(client, mux, groups=["reports"], claims=["primary"])
    assert bgjob.Worker(client, mux, groups=["reports"]).groups == ("reports",)


def test_the_cli_refuses_a_group_without_handlers(client, nats_server, prefix, tmp_path: Path) -> None:
    (tmp_path / "groupjobs.py").write_text(textwrap.dedent(GROUP_JOBS))
    env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bgjob", "worker", "groupjobs", "--group", "gamma"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "group 'gamma': no handler" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "bgjob", "worker", "groupjobs", "--claim", "a.b"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "invalid claim 'a.b'" in done.stderr, done.stderr


def test_group_names() -> None:
    from bgjob.topology import Topology

    t = Topology("p")
    assert t.group_subject("q", "gpu/large", "a.b") == "p.q.group.gpu/large.a.b"
    assert t.job_type_of("q", t.group_subject("q", "gpu/large", "a.b")) == "a.b"
    assert "/" not in t.group_consumer("q", "gpu/large")
    assert t.group_consumer("q", "x") != t.target_consumer("q", "x")
