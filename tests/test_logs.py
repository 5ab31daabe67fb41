"""bgjob.logs: JSON and text log lines carry job and request ids; `bgjob --log-format json worker`."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import bgjob
from bgjob.context import current_job, request_id
from bgjob.logs import ContextFilter, JsonFormatter, LogJobs

from .conftest import ROOT, wait_until


def _record(msg: str = "hello %s", args: tuple = ("world",), exc_info=None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app.jobs", logging.WARNING, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_json_lines_have_the_fixed_fields_and_null_ids_outside_a_job() -> None:
    data = json.loads(JsonFormatter().format(_record()))
    assert data.keys() == {"time", "level", "logger", "message", "request_id", "job_id", "job_type"}
    assert (data["level"], data["logger"], data["message"]) == ("WARNING", "app.jobs", "hello world")
    assert data["request_id"] is data["job_id"] is data["job_type"] is None
    assert data["time"].endswith("+00:00") and "T" in data["time"]


def test_json_lines_inside_a_job_carry_its_ids_the_traceback_and_extra_fields() -> None:
    job = bgjob.Job(id="job-1", type="report", arg=None, request_id="req-from-producer")
    token = current_job.set(job)
    try:
        try:
            raise ValueError("bad")
        except ValueError:
            record = _record(exc_info=sys.exc_info(), user=7)
        with request_id("req-current"):
            data = json.loads(JsonFormatter().format(record))
        plain = json.loads(JsonFormatter().format(_record()))
    finally:
        current_job.reset(token)
    assert (data["job_id"], data["job_type"], data["request_id"], data["user"]) == ("job-1", "report", "req-current", 7)
    assert data["exc_info"].startswith("Traceback") and "ValueError: bad" in data["exc_info"]
    assert plain["request_id"] == "req-from-producer"


def test_ids_given_with_extra_win_over_the_context() -> None:
    """The worker logs some lines outside the job's thread; ids passed with `extra=` must survive."""
    record = _record(job_id="job-9", job_type="resize", request_id="req-9")
    data = json.loads(JsonFormatter().format(record))
    assert (data["job_id"], data["job_type"], data["request_id"]) == ("job-9", "resize", "req-9")
    ContextFilter().filter(record)
    assert record.job_context == " [resize job-9 request=req-9]"


def test_text_lines_show_job_and_request_only_where_there_are_some() -> None:
    formatter = logging.Formatter("%(name)s%(job_context)s: %(message)s")

    def line() -> str:
        record = _record()
        ContextFilter().filter(record)
        return formatter.format(record)

    assert line() == "app.jobs: hello world"
    with request_id("req-1"):
        assert line() == "app.jobs [request=req-1]: hello world"
        token = current_job.set(bgjob.Job(id="job-1", type="report", arg=None))
        try:
            assert line() == "app.jobs [report job-1 request=req-1]: hello world"
        finally:
            current_job.reset(token)


def test_log_jobs_logs_start_and_the_real_fate_with_the_traceback_of_a_raise(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="bgjob.jobs")
    hooks = LogJobs()
    job = bgjob.Job(id="job-1", type="report", arg=None, attempt=2)
    try:
        raise KeyError("x")
    except KeyError as exc:
        raised = bgjob.hooks.mark_unhandled(exc)
    runs = [
        (bgjob.Complete(), bgjob.Fate.acked()),
        (bgjob.Retry(1, error="not yet"), bgjob.Fate.retry_scheduled(1.0)),
        (bgjob.Failure("KeyError: 'x'", exception=raised), bgjob.Fate.dead_lettered("max_attempts")),
    ]
    for outcome, fate in runs:
        hooks.on_job_start(job)
        hooks.on_job_end(job, outcome)
        hooks.on_settled(job, outcome, fate)
    started = ("DEBUG", "job started: report job-1 attempt 2")
    lines = [(r.levelname, r.getMessage().split(" in ")[0]) for r in caplog.records]
    assert lines == [started, ("DEBUG", "job finished"), started, ("INFO", "job finished"),
                     started, ("WARNING", "job finished")]  # fmt: skip
    assert caplog.records[1].getMessage().endswith("report job-1 attempt 2 -> acked")
    assert caplog.records[3].getMessage().endswith("-> retry_scheduled(1s): not yet")
    assert caplog.records[5].getMessage().endswith("-> dead_lettered(max_attempts): KeyError: 'x'")
    assert caplog.records[5].exc_info[1] is raised
    assert caplog.records[5].bgjob_fate == "dead_lettered"


def test_worker_command_with_json_logs_names_the_failing_job_and_its_request(nats_server, prefix, client,
                                                                             tmp_path) -> None:  # fmt: skip
    (tmp_path / "logjobs.py").write_text(textwrap.dedent("""
        import logging
        import bgjob
        mux = bgjob.Mux()

        @mux.handler("boom")
        def boom(job):
            logging.getLogger("app").info("about to fail")
            raise RuntimeError("boom")

        mux.handle("ok", lambda job: bgjob.Complete())
    """))
    env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "bgjob", "--log-format", "json", "--log-level", "DEBUG", "worker", "logjobs",
         "--max-attempts", "2"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ok_id = client.send_job("ok", None)
        job_id = client.send_job("boom", None, request_id="req-json-1")
        wait_until(lambda: client.dlq.count() == 1, timeout=30, message="the dead letter")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object

    of_job = [line for line in lines if line["job_id"] == job_id]
    assert {line["request_id"] for line in of_job} == {"req-json-1"}
    assert {line["job_type"] for line in of_job} == {"boom"}
    handler_lines = [line for line in of_job if line["logger"] == "app"]
    assert [line["message"] for line in handler_lines] == ["about to fail", "about to fail"]
    failures = [line for line in of_job if line["level"] == "WARNING"]
    assert len(failures) == 2 and all("RuntimeError: boom" in line["exc_info"] for line in failures)
    assert any(line["job_id"] == ok_id and line["message"].startswith("job finished") for line in lines)
    assert any(line["level"] == "ERROR" and job_id in line["message"] for line in lines)  # the DLQ line
