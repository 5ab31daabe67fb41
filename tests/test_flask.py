"""bgjob.contrib.flask: a real Flask app (tests/flask_app) served by gunicorn (sync, gthread) sending jobs, a
`flask bgjob worker` process running them inside the app context (a Flask-SQLAlchemy model updated), the request
id carried into the job, `flask bgjob status` and `flask bgjob dlq`; the config keys; the session teardown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("flask")
pytest.importorskip("flask_sqlalchemy")

import flask
from flask_sqlalchemy import SQLAlchemy

import bgjob
from bgjob.contrib.flask import AppContext, BgJob, FlaskConfig
from bgjob.server import free_port

from .conftest import ROOT, wait_until

BIN = os.path.dirname(sys.executable)
if shutil.which("gunicorn", path=BIN) is None or shutil.which("flask", path=BIN) is None:
    pytest.skip("gunicorn and flask are needed (pip install -e '.[dev]')", allow_module_level=True)
APP = "tests.flask_app.wsgi"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            body = response.read()
            is_json = response.headers.get("Content-Type") == "application/json"
            return response.status, json.loads(body) if is_json else {}, dict(response.headers)
    except OSError:
        return 0, {}, {}


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT job_id, n, request_id, app_name FROM run ORDER BY n").fetchall()


def flask_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "flask"), "--app", APP, "bgjob", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip


@pytest.fixture
def app_env(nats_server, prefix, tmp_path) -> dict[str, str]:
    env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT),
           "PYTHONUNBUFFERED": "1", "FLASK_APP_DB": str(tmp_path / "app.sqlite")}  # fmt: skip
    # the tables exist before gunicorn's workers and the job worker start (their create_all would race)
    subprocess.run([sys.executable, "-c", f"import {APP}"], cwd=ROOT, env=env, check=True, timeout=30)
    return env


@pytest.mark.parametrize(("worker_class", "extra"), [("sync", []), ("gthread", ["--threads", "4"])],
                         ids=["sync", "gthread"])  # fmt: skip
def test_view_sends_jobs_a_flask_worker_updates_the_model(app_env, tmp_path, worker_class, extra) -> None:
    port = free_port()
    command = [os.path.join(BIN, "gunicorn"), "-k", worker_class, "-w", "2", "--bind", f"127.0.0.1:{port}",
               "--graceful-timeout", "10", *extra, f"{APP}:application"]  # fmt: skip
    web = subprocess.Popen(command, cwd=ROOT, env=app_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = subprocess.Popen([os.path.join(BIN, "flask"), "--app", APP, "bgjob", "worker", "--concurrency", "4"],
                              cwd=ROOT, env=app_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    db = Path(app_env["FLASK_APP_DB"])
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: get(base + "/plain")[0] == 200 or None, timeout=20, message="gunicorn up")
        sent = {}
        for n in range(6):
            headers = {"X-Request-ID": f"req-{n}"} if n < 3 else {"X-Request-ID": "bad id with spaces"}
            status, body, response_headers = get(f"{base}/send?n={n}", headers)
            assert status == 200, body
            assert response_headers["X-Request-ID"] == body["request_id"]
            if n < 3:
                assert body["request_id"] == f"req-{n}"  # a valid incoming id is kept
            else:
                assert body["request_id"] != "bad id with spaces" and len(body["request_id"]) == 32  # replaced
            sent[n] = body
        found = wait_until(lambda: len(rows(db)) == 6 and rows(db), timeout=20, message="6 rows by the handler")
        for job_id, n, request_id, app_name in found:
            assert (job_id, request_id) == (sent[n]["id"], sent[n]["request_id"])
            assert app_name == "flask_app"  # current_app inside the handler
        if worker_class == "sync":
            status, body, _ = get(f"{base}/send?type=fail&n=9")
            assert status == 200
            listed = wait_until(lambda: (r := flask_cli(app_env, "dlq", "list")).returncode == 0
                                and body["id"] in r.stdout and r, timeout=20, message="dead letter listed")  # fmt: skip
            assert "(1 shown of 1)" in listed.stdout
            shown = json.loads(flask_cli(app_env, "dlq", "show", body["id"]).stdout)
            assert shown["request_id"] == body["request_id"]
            assert "failing on purpose for flask_app" in shown["error"]
            missing = flask_cli(app_env, "dlq", "show", "no-such-id")
            assert missing.returncode != 0 and "no-such-id" in missing.stderr
            status_out = flask_cli(app_env, "status")
            assert status_out.returncode == 0, status_out.stderr
            assert "default" in status_out.stdout and "live workers: 1 process" in status_out.stdout
            assert flask_cli(app_env, "dlq", "purge", "--yes").stdout.startswith("purged 1 dead letter")
    finally:
        web.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGTERM)
        _, web_err = web.communicate(timeout=30)
        worker_out, _ = worker.communicate(timeout=30)
    assert web.returncode == 0, web_err
    assert worker.returncode == 0, worker_out
    assert "handlers: record, fail" in worker_out or "handlers: fail, record" in worker_out


def test_each_job_runs_in_an_app_context_whose_teardown_removes_the_session(client, start_worker, tmp_path) -> None:
    app = flask.Flask("ctx_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'ctx.sqlite'}"
    db = SQLAlchemy(app)
    ext = BgJob(app)
    torn_down: list[object] = []
    app.teardown_appcontext(lambda exc: torn_down.append(exc))
    seen: list[tuple[str, int]] = []

    @ext.handler("touch")
    def touch(job: bgjob.Job) -> bgjob.Result:
        db.session.execute(db.text("SELECT 1"))  # opens a session in this job's app context
        seen.append((flask.current_app.name, len(db.session.registry.registry)))
        return bgjob.Complete()

    start_worker(client, ext.mux, concurrency=1, middleware=[AppContext(app), bgjob.Recovery()])
    for n in range(3):
        client.send_job("touch", n)
    wait_until(lambda: len(torn_down) == 3, message="3 app-context teardowns")
    assert [name for name, _ in seen] == ["ctx_app"] * 3
    assert all(open_sessions == 1 for _, open_sessions in seen)  # never a session left over from an earlier job
    assert torn_down == [None, None, None]
    assert db.session.registry.registry == {}  # Flask-SQLAlchemy's teardown_appcontext removed each one


def test_config_keys_map_onto_settings_and_unknown_ones_are_refused(monkeypatch) -> None:
    monkeypatch.setenv("BGJOB_PREFIX", "fromenv")
    config = FlaskConfig.from_config({"BGJOB_URL": "nats://h:4222", "BGJOB_ACK_WAIT": 12, "BGJOB_QUEUES": ["a", "b"],
                                      "BGJOB_CONCURRENCY": 3, "BGJOB_TIME_LIMIT": 5, "SECRET_KEY": "x"})  # fmt: skip
    assert (config.settings.url, config.settings.ack_wait, config.settings.prefix) == ("nats://h:4222", 12.0, "fromenv")
    assert (config.queues, config.concurrency, config.time_limit) == (("a", "b"), 3, 5.0)
    with pytest.raises(bgjob.ConfigurationError, match="did you mean 'BGJOB_QUEUES'"):
        FlaskConfig.from_config({"BGJOB_QUEUE": ["a"]})
    with pytest.raises(bgjob.ConfigurationError, match="BGJOB_SIGNING_KEY"):
        FlaskConfig.from_config({"BGJOB_SIGNING": "k"})
    with pytest.raises(bgjob.ConfigurationError, match="replicas"):
        FlaskConfig.from_config({"BGJOB_REPLICAS": 9})
    with pytest.raises(bgjob.ConfigurationError, match="BGJOB_QUEUES"):
        BgJob(_app({"BGJOB_QUEUES": "default"}))


def _app(config: dict) -> flask.Flask:
    app = flask.Flask("configured")
    app.config.update(config)
    return app


def test_request_id_taken_or_made_and_echoed_and_reset() -> None:
    app = _app({"BGJOB_URL": "nats://127.0.0.1:1"})
    BgJob(app)
    seen = []

    @app.get("/")
    def view() -> str:
        seen.append(bgjob.current_request_id.get())
        return "ok"

    with app.test_client() as http:
        kept = http.get("/", headers={"X-Request-ID": "abc-1"})
        made = http.get("/", headers={"X-Request-ID": "x" * 500})
    assert kept.headers["X-Request-ID"] == "abc-1" == seen[0]
    assert made.headers["X-Request-ID"] == seen[1] and len(seen[1]) == 32
    assert bgjob.current_request_id.get() is None


def test_send_job_outside_an_app_context_is_a_named_error() -> None:
    from bgjob.contrib.flask import send_job

    with pytest.raises(bgjob.BgjobError, match="app context"):
        send_job("report")
    with pytest.raises(bgjob.BgjobError, match="not set up"), flask.Flask("bare").app_context():
        BgJob().send_job("report")


def test_example_flask_app_counts_a_visit(nats_server, prefix, tmp_path, monkeypatch, client, start_worker) -> None:
    monkeypatch.setenv("BGJOB_URL", nats_server.url)
    monkeypatch.setenv("BGJOB_PREFIX", prefix)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'example.sqlite'}")
    monkeypatch.syspath_prepend(str(ROOT))
    from example_flask.app import app, bgjob_ext

    try:
        start_worker(client, bgjob_ext.mux, middleware=[AppContext(app), bgjob.Recovery()])
        with app.test_client() as http:
            assert http.get("/visit/ada").status_code == 200
            wait_until(lambda: http.get("/visits/ada").get_json()["count"] == 1, message="the visit counted")
    finally:
        bgjob_ext.state(app).close()  # the view's client; the worker's is the fixture's


def _factory_app(ext: BgJob, name: str, **config: object) -> flask.Flask:
    """An app factory's app: made after the handlers were registered, set up with `ext`."""
    app = flask.Flask(name)
    app.config.update(config)
    ext.init_app(app)
    return app


def test_ext_handlers_get_the_app_context_of_their_app_under_run_jobs(nats_server, prefix, client) -> None:
    from bgjob.testing import run_jobs

    ext = BgJob()
    seen: list[str] = []

    @ext.handler("who")
    def who(job: bgjob.Job) -> bgjob.Result:
        seen.append(flask.current_app.name)  # "Working outside of application context" without one
        return bgjob.Complete()

    once = bgjob.RetryPolicy(max_attempts=1)
    client.send_job("who")
    [never] = run_jobs(client, ext.mux, retry_policy=once)  # init_app never called: a named error
    assert never.kind is bgjob.FateKind.DEAD_LETTERED
    assert "ConfigurationError" in never.outcome.error and "never set up for an app" in never.outcome.error

    settings = {"BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix}
    _factory_app(ext, "first", **settings)  # an earlier app of the factory, dropped (a previous test's)
    app = _factory_app(ext, "second", **settings)
    torn_down: list[object] = []
    app.teardown_appcontext(lambda exc: torn_down.append(exc))
    with app.app_context():
        ext.send_job("who")
    torn_down.clear()
    [done] = run_jobs(client, ext.mux)  # no app context here, no AppContext middleware: the handler's own
    assert done.acked and seen == ["second"] and torn_down == [None]

    other = _factory_app(ext, "third", **settings)  # two live apps: which one is the job's cannot be told
    other.teardown_appcontext(lambda exc: torn_down.append(exc))
    try:
        with app.app_context():
            ext.send_job("who")
        [unclear] = run_jobs(client, ext.mux, retry_policy=once)
        assert unclear.kind is bgjob.FateKind.DEAD_LETTERED and "several Flask apps" in unclear.outcome.error
        with other.app_context():  # inside one of its apps' contexts: that app, no second context pushed
            ext.send_job("who")
            torn_down.clear()
            [inside] = run_jobs(client, ext.mux)
            assert inside.acked and seen == ["second", "third"] and torn_down == []
    finally:
        ext.close(other)
        ext.close(app)
    assert ext.state(app)._client is None  # closed; the next send would connect a new client


def test_immediate_mode_runs_the_ext_handlers_with_max_attempts_only_in_testing_or_debug() -> None:
    from bgjob.testing import immediate_log

    ext = BgJob()
    runs: list[tuple[str, int]] = []

    @ext.handler("flaky")
    def flaky(job: bgjob.Job) -> bgjob.Result:
        runs.append((flask.current_app.name, job.attempt))
        raise RuntimeError("always")

    app = _factory_app(ext, "immediate", TESTING=True, BGJOB_IMMEDIATE=True, BGJOB_MAX_ATTEMPTS=2)

    @app.post("/go")
    def go() -> object:
        return {"id": ext.send_job("flaky")}

    with app.test_client() as http:
        job_id = http.post("/go").get_json()["id"]
    log = immediate_log(ext.client(app))
    assert runs == [("immediate", 1), ("immediate", 2)]  # BGJOB_MAX_ATTEMPTS, not RetryPolicy()'s 10
    assert [o.id for o in log.dead_letters] == [job_id] and log.dead_letters[0].fate.reason == "max_attempts"
    with app.app_context():  # outside a request too: the handler gets the app's context
        ext.send_job("flaky")
    assert len(runs) == 4

    production = _factory_app(ext, "production", BGJOB_IMMEDIATE=True)
    with production.app_context(), pytest.raises(bgjob.ConfigurationError, match="test-only"):
        ext.send_job("flaky")
    _factory_app(ext, "debugging", DEBUG=True, BGJOB_IMMEDIATE=True, BGJOB_MAX_ATTEMPTS=1)
    assert len(runs) == 4


def test_django_only_keys_say_what_to_do_instead_in_a_sentence() -> None:
    from bgjob.contrib.flask import INSTEAD

    expected = {
        "BGJOB_OUTBOX": "bgjob_django's outbox needs Django's ORM; send the job after your transaction commits "
        "instead.",
        "BGJOB_SCHEDULES": "declare periodic jobs with client.schedule(...) (bgjob.periodic) instead.",
    }
    assert {"BGJOB_ON_COMMIT", "BGJOB_OUTBOX", "BGJOB_SCHEDULES", "BGJOB_SIGNING", "BGJOB_METRICS"} <= set(INSTEAD)
    for key in INSTEAD:
        with pytest.raises(bgjob.ConfigurationError) as raised:
            FlaskConfig.from_config({key: True})
        message = str(raised.value)
        head = f"app.config[{key!r}] is a bgjob_django setting with no meaning in Flask: "
        assert message.startswith(head) and message.endswith("."), message
        remedy = message[len(head) :]
        assert remedy == expected.get(key, remedy)
        first, second = remedy.split()[:2]
        # a verb telling what to do, or a statement; never "use" before something that is not a setting name
        assert first in {"use", "declare", "send", "call", "Flask", "bgjob_django's"}, message
        assert first != "use" or second.startswith("BGJOB_"), message


def test_flask_bgjob_dlq_without_a_subcommand_prints_click_help() -> None:
    app = _app({"BGJOB_URL": "nats://127.0.0.1:1"})
    BgJob(app)
    result = app.test_cli_runner().invoke(args=["bgjob", "dlq"])
    assert result.exit_code in (0, 2)  # click's groups: 2 since click 8.2
    assert "Usage: " in result.output and "usage:" not in result.output  # click's, not argparse's
    assert "list    dead letters, newest first" in result.output
