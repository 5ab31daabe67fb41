"""`manage.py bgjob_dlq`, `bgjob_status` and `bgjob_queue` against a real nats-server."""

from __future__ import annotations

import io
import json
from datetime import datetime

import pytest
from django.core.management import CommandError, call_command

import bgjob
from bgjob_django import send_job

from ..conftest import wait_until
from .conftest import manage


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def dead_letters(bgjob_client, run_worker):
    """Three jobs of type `fail` dead-lettered on queue default, one on queue mail; returns their ids."""
    run_worker(queues=("default", "mail"))
    ids = []
    for n, queue in enumerate(("default", "default", "default", "mail")):
        ids.append(send_job("fail", n, queue=queue))
        # one at a time, so the DLQ's order is the order sent
        wait_until(lambda n=n: bgjob_client.dlq.count() == n + 1, message=f"dead letter {n + 1}")
    return ids


def test_dlq_list_shows_the_newest_first_with_a_total(dead_letters) -> None:
    out = run("bgjob_dlq", "list", "--limit", "2")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["SEQ", "ID", "QUEUE", "TYPE"]
    assert dead_letters[3] in lines[1] and dead_letters[2] in lines[2]
    assert "(2 shown of 4; next page: --before" in lines[-1]
    listed = json.loads(run("bgjob_dlq", "list", "--queue", "default", "--json"))
    assert [e["id"] for e in listed] == dead_letters[2::-1] and listed[0]["reason"] == "handler"
    for field in ("first_failure_at", "last_failure_at", "enqueued_at"):  # ISO 8601, with the UTC offset
        assert datetime.fromisoformat(listed[0][field]).utcoffset() is not None, listed[0][field]
        assert "T" in listed[0][field]


def test_dlq_show_prints_arg_headers_and_error(dead_letters) -> None:
    shown = json.loads(run("bgjob_dlq", "show", dead_letters[1]))
    assert shown["id"] == dead_letters[1] and shown["arg"] == 1 and shown["error"] == "cannot handle 1"
    assert shown["headers"]["Bgjob-Type"] == "fail"
    assert shown["traceback"] is None  # MoveToDlq: no exception


def test_dlq_show_prints_the_arg_as_json_and_the_traceback_as_lines(bgjob_client, run_worker) -> None:
    mux = bgjob.Mux()

    @mux.handler("explode")
    def explode(job: bgjob.Job) -> bgjob.Result:
        raise ValueError("exploded")

    run_worker(mux=mux, max_attempts=1)
    job_id = send_job("explode", {"user": 7, "password": "hunter2", "items": [1, 2]}, sensitive=["password"])
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="dead letter")
    out = run("bgjob_dlq", "show", job_id)
    shown = json.loads(out)
    assert shown["arg"]["user"] == 7 and shown["arg"]["items"] == [1, 2]  # JSON in the JSON, not a string
    assert shown["arg"]["password"] != "hunter2" and "hunter2" not in out  # masked, as before
    lines = shown["traceback"]  # a list of lines, each printed on its own line
    assert lines[0].startswith("Traceback") and lines[-1] == "ValueError: exploded"
    assert '"traceback": [\n    "Traceback (most recent call last):",\n' in out


def test_dlq_retry_delete_and_purge(dead_letters, bgjob_client) -> None:
    assert f"deleted {dead_letters[0]}" in run("bgjob_dlq", "delete", dead_letters[0])
    assert bgjob_client.dlq.count() == 3
    with pytest.raises(CommandError, match=r"would purge 1 dead letter \(up to DLQ sequence \d+\); add --yes"):
        run("bgjob_dlq", "purge", "--queue", "mail")
    assert "purged 1 dead letter" in run("bgjob_dlq", "purge", "--queue", "mail", "--yes")
    assert f"retried {dead_letters[1]}" in run("bgjob_dlq", "retry", dead_letters[1])
    # the retried job fails again and comes back: retry --all only takes the ones there when it started
    wait_until(lambda: bgjob_client.dlq.count() == 2, message="the retried job back in the DLQ")
    assert "retried 2 dead letters" in run("bgjob_dlq", "retry", "--all", "--type", "fail")
    with pytest.raises(CommandError, match="give dead letter ids, or --all"):
        run("bgjob_dlq", "retry")


@pytest.mark.parametrize("action", ["delete", "retry"])
def test_dlq_delete_and_retry_do_every_id_and_report_each_miss(action, dead_letters, bgjob_client) -> None:
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("bgjob_dlq", action, dead_letters[0], "missing-1", dead_letters[1], "missing-2", stdout=out)
    done = "deleted" if action == "delete" else "retried"
    assert out.getvalue().splitlines() == [f"{done} {dead_letters[0]}", f"{done} {dead_letters[1]}"]
    message = str(caught.value)
    assert "no dead letter with id 'missing-1'" in message and "no dead letter with id 'missing-2'" in message
    assert "2 of 4 dead letters not found" in message and caught.value.returncode == 1
    if action == "delete":  # (a retried job fails again and comes back with its id: its output line says it)
        assert {e.id for e in bgjob_client.dlq.list()} == {dead_letters[2], dead_letters[3]}


def test_status_lists_queues_schedules_and_live_workers(dead_letters, bgjob_client) -> None:
    bgjob_client.schedule("nightly", "0 3 * * *", "report", {"user": 1}, tz="Europe/Berlin")
    out = run("bgjob_status")
    assert f"server: {bgjob_client.url}" in out
    assert [ln.split() for ln in out.splitlines() if ln.startswith(("default ", "mail "))] == [
        ["default", "0", "0", "0", "1", "0", "3"],  # the schedule is a stored message: "scheduled"; none routed
        ["mail", "0", "0", "0", "0", "0", "1"],
    ]
    assert "nightly" in out and "Europe/Berlin" in out
    # one process (the test's) serving two queues: one process, two queue workers
    assert "live workers: 1 process (2 queue workers)" in out
    rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] and ln.split()[0] in
            {w.id for w in bgjob_client.workers()}]  # fmt: skip
    assert sorted(row[2] for row in rows) == ["default", "mail"]


def test_queue_shows_and_configures_a_queue_like_bgjob_queue(bgjob_client) -> None:
    send_job("report", {"user": 1})  # sent before any worker ran: the stream exists, the consumer not yet
    out = run("bgjob_queue", "show", "default")
    assert "consumer             not created yet" in out
    out = run("bgjob_queue", "configure", "default", "--ack-wait", "7", "--max-ack-pending", "50")
    assert out.splitlines() == ["queue default: ack_wait unset -> 7s", "queue default: max_ack_pending unset -> 50"]
    assert bgjob_client.queue_config().ack_wait == 7.0
    assert "ack_wait             7s" in run("bgjob_queue", "show")
    with pytest.raises(CommandError, match="nothing to configure: give at least one of --ack-wait"):
        run("bgjob_queue", "configure", "default")
    with pytest.raises(CommandError, match="queue 'nosuch' does not exist yet"):
        run("bgjob_queue", "show", "nosuch")


@pytest.mark.parametrize("command", ["bgjob_dlq", "bgjob_queue"])
def test_django_options_are_taken_after_the_sub_command_too(command) -> None:
    """`manage.py bgjob_dlq list --settings=X` was refused (unrecognized arguments): argparse looked for Django's
    options only before the sub-command. Given before it, an option keeps its value."""
    from django.core.management import load_command_class

    parser = load_command_class("bgjob_django", command).create_parser("manage.py", command)
    sub = "list" if command == "bgjob_dlq" else "show"
    after = vars(parser.parse_args([sub, "--settings=a.b", "--pythonpath=/p", "-v", "0", "--traceback", "--no-color"]))
    assert after["settings"] == "a.b" and after["pythonpath"] == "/p" and after["verbosity"] == 0
    assert after["traceback"] and after["no_color"]
    before = vars(parser.parse_args(["--settings=a.b", "-v", "2", sub]))
    assert before["settings"] == "a.b" and before["verbosity"] == 2 and not before["traceback"]


def test_manage_py_bgjob_dlq_list_with_settings_after_the_sub_command(worker_env, dead_letters) -> None:
    env = {k: v for k, v in worker_env.items() if k != "DJANGO_SETTINGS_MODULE"}  # only --settings names them
    done = manage(env, "bgjob_dlq", "list", "--limit", "1", "--settings=tests.django.settings")
    assert done.returncode == 0, done.stderr
    assert dead_letters[3] in done.stdout and "(1 shown of 4" in done.stdout
    done = manage(env, "bgjob_queue", "show", "default", "--settings=tests.django.settings")
    assert done.returncode == 0 and "default" in done.stdout, done.stderr
