"""The `bgjob` command against a real nats-server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

import bgjob

from .conftest import ROOT, wait_until


@pytest.fixture
def cli_env(nats_server, prefix) -> dict[str, str]:
    return {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT)}


def bgjob_cli(env: dict[str, str], *args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bgjob", "--log-level", "WARNING", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_send_prints_the_job_id_and_stores_the_job(cli_env, client) -> None:
    out = bgjob_cli(cli_env, "send", "report", '{"user": 7}')
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert len(job_id) == 32 and client.queue_stats().pending == 1


def test_send_refuses_bad_json_and_bad_types_clearly(cli_env, client) -> None:
    out = bgjob_cli(cli_env, "send", "report", "{user: 7}")
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = bgjob_cli(cli_env, "send", "bad type", "{}")
    assert out.returncode == 2 and "invalid job type" in out.stderr


def stored_jobs(client: bgjob.Client, queue: str = "default") -> dict[str, tuple[str, dict[str, str]]]:
    """Every message in the queue's stream: {Bgjob-Id: (subject, headers)}."""
    import nats.js.errors

    async def read(core) -> dict[str, tuple[str, dict[str, str]]]:
        stream, found, seq = core.topology.queue_stream(queue), {}, 1
        while True:
            try:
                msg = await core.js.get_msg(stream, seq=seq, next=True, subject=core.topology.queue_subjects(queue))
            except nats.js.errors.NotFoundError:
                return found
            found[msg.headers["Bgjob-Id"]] = (msg.subject, dict(msg.headers))
            seq = msg.seq + 1

    return client.run(read)


def test_send_places_a_job_with_target_partition_key_and_target_timeout(cli_env, client) -> None:
    out = bgjob_cli(cli_env, "send", "report", "1", "--target", "region/eu", "--target-timeout", "90")
    assert out.returncode == 0, out.stderr
    placed = out.stdout.strip()
    out = bgjob_cli(cli_env, "send", "report", "2", "--partition-key", "customer-7")
    assert out.returncode == 0, out.stderr
    ordered = out.stdout.strip()
    stored = stored_jobs(client)
    subject, headers = stored[placed]
    assert subject.endswith(".default.target.region/eu.report") and headers["Bgjob-Target"] == "region/eu"
    assert "Bgjob-Target-Until" in headers
    assert ".default.part." in stored[ordered][0]
    # send_job's refusals: the usual clear error, exit 2, nothing sent
    for args, says in ((("--target-timeout", "0", "--target", "primary"), "target_timeout must be more than 0"),
                       (("--target-timeout", "30"), "target_timeout needs a target"),
                       (("--target", "a.b"), "invalid claim"),
                       (("--target", "primary", "--partition-key", "k"), "partition_key"),
                       (("--target-timeout", "soon", "--target", "primary"), "invalid float value")):  # fmt: skip
        out = bgjob_cli(cli_env, "send", "report", "3", *args)
        assert out.returncode == 2 and says in out.stderr, (args, out.stderr)
    assert len(stored_jobs(client)) == 2


def test_worker_runs_a_module_mux_and_drains_on_sigterm(cli_env, client, tmp_path) -> None:
    (tmp_path / "myjobs.py").write_text(textwrap.dedent("""
        import bgjob
        mux = bgjob.Mux()

        @mux.handler("report")
        def report(job):
            with open("done.txt", "a") as f:
                f.write(job.id + "\\n")
            return bgjob.Complete()

        @mux.handler("fail")
        def fail(job):
            return bgjob.MoveToDlq("always fails")
    """))
    worker = subprocess.Popen(
        [sys.executable, "-m", "bgjob", "worker", "myjobs", "--concurrency", "4"], env=cli_env, cwd=tmp_path,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ids = [client.send_job("report", i) for i in range(5)]
        failed = client.send_job("fail", {"x": 1})
        done = tmp_path / "done.txt"
        wait_until(lambda: done.exists() and len(done.read_text().split()) == 5, timeout=30, message="5 jobs")
        assert sorted(done.read_text().split()) == sorted(ids)
        wait_until(lambda: client.dlq.count() == 1, message="dead letter")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert "draining" in stderr

    listed = bgjob_cli(cli_env, "dlq", "list")
    assert listed.returncode == 0 and failed in listed.stdout and "always fails" in listed.stdout
    shown = bgjob_cli(cli_env, "dlq", "show", failed)
    assert shown.returncode == 0 and '"reason": "handler"' in shown.stdout and '"x": 1' in shown.stdout
    assert json.loads(shown.stdout)["traceback"] is None  # MoveToDlq: no exception
    status = bgjob_cli(cli_env, "status")
    assert status.returncode == 0
    assert [line.split() for line in status.stdout.splitlines() if line.startswith("default")] == [
        ["default", "0", "0", "0", "0", "0", "1"]  # pending, in-flight, retrying, scheduled, routed, dlq
    ]
    assert bgjob_cli(cli_env, "dlq", "retry", failed).returncode == 0
    assert client.dlq.count() == 0 and client.queue_stats().pending == 1


def test_dlq_purge_asks_for_confirmation(cli_env, client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq("x"))
    start_worker(client, mux)
    client.send_job("fail", None)
    wait_until(lambda: client.dlq.count() == 1, message="dead letter")
    out = bgjob_cli(cli_env, "dlq", "purge")
    assert out.returncode == 1 and "would purge 1" in out.stderr and client.dlq.count() == 1
    out = bgjob_cli(cli_env, "dlq", "purge", "--yes")
    assert out.returncode == 0 and "purged 1" in out.stdout and client.dlq.count() == 0


def test_dlq_purge_up_to_the_sequence_its_dry_run_printed_keeps_newer_ones(cli_env, client, start_worker) -> None:
    """What was counted is what is purged: dead letters arriving between the dry run and --yes stay."""
    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq("no"))
    start_worker(client, mux)
    client.send_job("fail", 1)
    wait_until(lambda: client.dlq.count() == 1, message="dead letter")
    dry = bgjob_cli(cli_env, "dlq", "purge")
    bound = re.search(r"add --yes --up-to (\d+) ", dry.stderr).group(1)
    assert "would purge 1 dead letter (up to DLQ sequence" in dry.stderr
    client.send_job("fail", 2)
    wait_until(lambda: client.dlq.count() == 2, message="a newer dead letter")
    out = bgjob_cli(cli_env, "dlq", "purge", "--yes", "--up-to", bound)
    assert out.returncode == 0 and "purged 1 dead letter; 1 stored after sequence" in out.stdout
    assert [e.arg for e in client.dlq.list()] == [2]


def test_status_lists_periodic_jobs_and_live_workers(cli_env, client, start_worker) -> None:
    client.schedule("nightly-report", "0 3 * * *", "report", tz="Europe/Berlin")
    worker = start_worker(client, bgjob.Mux())
    wait_until(client.workers, message="worker listed")
    out = bgjob_cli(cli_env, "status")
    assert out.returncode == 0
    assert "nightly-report" in out.stdout and "0 3 * * *" in out.stdout and "Europe/Berlin" in out.stdout
    assert "live workers: 1 process (1 queue worker)" in out.stdout and worker.id in out.stdout
    assert f":{os.getpid()} " in out.stdout  # the worker's host:pid


def test_dlq_delete_and_retry_do_every_id_and_report_each_miss(cli_env, client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq("x"))
    start_worker(client, mux)
    ids = []
    for n in range(4):
        ids.append(client.send_job("fail", n))
        wait_until(lambda n=n: client.dlq.count() == n + 1, message=f"dead letter {n + 1}")
    out = bgjob_cli(cli_env, "dlq", "delete", ids[0], "missing", ids[1])
    assert out.returncode == 1 and out.stdout.splitlines() == [f"deleted {ids[0]}", f"deleted {ids[1]}"]
    assert out.stderr.splitlines() == ["bgjob: error: no dead letter with id 'missing'",
                                       "bgjob: error: 1 of 3 dead letters not found (deleted 2)"]  # fmt: skip
    assert {e.id for e in client.dlq.list()} == {ids[2], ids[3]}
    out = bgjob_cli(cli_env, "dlq", "retry", "gone", ids[2], ids[3])
    assert out.returncode == 1 and out.stdout.splitlines() == [f"retried {ids[2]}", f"retried {ids[3]}"]
    assert "no dead letter with id 'gone'" in out.stderr  # (the retried jobs fail again: no count to check)


def test_dlq_list_json_has_iso_dates_and_retry_all(cli_env, client, start_worker) -> None:
    from datetime import datetime

    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq("a very long error " * 10))
    start_worker(client, mux)
    client.send_job("fail", {"n": 1})
    wait_until(lambda: client.dlq.count() == 1, message="dead letter")
    out = bgjob_cli(cli_env, "dlq", "list", "--json")
    [entry] = json.loads(out.stdout)
    assert datetime.fromisoformat(entry["last_failure_at"]).utcoffset() is not None and "T" in entry["last_failure_at"]
    listed = bgjob_cli(cli_env, "dlq", "list").stdout
    assert "a very long error a very" in listed and "…" in listed  # cut, and saying so
    assert "--reason" in bgjob_cli(cli_env, "dlq", "list", "--help").stdout
    out = bgjob_cli(cli_env, "dlq", "retry", "--all")
    assert out.returncode == 0 and "retried 1 dead letter" in out.stdout


def test_status_dlq_and_queue_fail_at_once_when_nats_is_unreachable(cli_env) -> None:
    import time

    from bgjob.server import free_port

    env = {**cli_env, "BGJOB_URL": f"nats://127.0.0.1:{free_port()}"}  # retry_for: 15 s
    for args in (("status",), ("dlq", "list"), ("queue", "show"), ("queue", "configure", "default", "--ack-wait", "9")):
        # What starting the command costs on this machine now (a loaded CI machine takes seconds to import it):
        # the same command's --help, which connects to nothing. Beyond that, the bound is about 2 s, not the 15 s
        # of retry_for.
        started = time.monotonic()
        assert bgjob_cli(env, *args, "--help").returncode == 0
        startup = time.monotonic() - started
        started = time.monotonic()
        out = bgjob_cli(env, *args)
        took = time.monotonic() - started
        print(f"bgjob {' '.join(args)}: exit {out.returncode} after {took:.2f}s (--help: {startup:.2f}s)")
        assert out.returncode == 2 and "cannot connect to NATS" in out.stderr.splitlines()[-1]
        assert len([ln for ln in out.stderr.splitlines() if "WARNING" in ln]) <= 1, out.stderr
        assert took - startup < 10, f"bgjob {args} took {took:.1f}s, {took - startup:.1f}s more than its --help"


def test_dlq_show_unknown_id_is_a_clear_error(cli_env, client) -> None:
    out = bgjob_cli(cli_env, "dlq", "show", "nope")
    assert out.returncode == 2 and "no dead letter with id 'nope'" in out.stderr


def test_worker_with_a_bad_target_says_what_is_wrong(cli_env, tmp_path) -> None:
    out = bgjob_cli(cli_env, "worker", "no_such_module", cwd=str(tmp_path))
    assert out.returncode == 2 and "cannot import 'no_such_module'" in out.stderr
    (tmp_path / "notamux.py").write_text("mux = 42\n")
    out = bgjob_cli(cli_env, "worker", "notamux", cwd=str(tmp_path))
    assert out.returncode == 2 and "is not a bgjob.Mux" in out.stderr


def test_dlq_list_writes_control_characters_as_escapes(cli_env, client, start_worker) -> None:
    """Stored text never drives the operator's terminal (ESC sequences, NUL)."""
    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq("bad \x00\x1b[31mred\x9b"))
    start_worker(client, mux)
    client.send_job("fail", None)
    wait_until(lambda: client.dlq.count() == 1, message="dead letter")
    out = bgjob_cli(cli_env, "dlq", "list")
    assert out.returncode == 0 and "bad \\x00\\x1b[31mred\\x9b" in out.stdout
    assert "\x1b" not in out.stdout and "\x00" not in out.stdout


def test_a_command_piped_into_a_reader_that_quits_ends_quietly(cli_env, client, start_worker) -> None:
    """`bgjob dlq list | head -1`: no BrokenPipeError traceback."""
    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq("no"))
    start_worker(client, mux)
    client.send_jobs([("fail", n) for n in range(300)])
    wait_until(lambda: client.dlq.count() == 300, message="300 dead letters")
    done = subprocess.run(f"{sys.executable} -m bgjob dlq list --limit 300 | head -1", shell=True, env=cli_env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.startswith("     SEQ ID") and "Traceback" not in done.stderr, done.stderr
