"""Planted secrets never reach an output channel.

One run against a password-protected nats-server plants distinctive secrets: the URL's password, a signing key, an
encryption key, two sensitive arg values (one marked by the producer, one by the handler), an `Authorization` and
an `X-Api-Key` header, and a handler exception quoting all of them. It drives every channel bgjob writes to —
logs (text and JSON, through a server restart and reconnect), Sentry events (send_default_pii off), /metrics,
the stored result, the dead letter (raw and as `client.dlq` shows it), the CLI (`bgjob status`, `bgjob dlq
list|show`, text and JSON), reprs — and asserts that none holds any secret, and that each channel did carry the
failure (so the test cannot pass by looking at empty output). The Django channels (admin pages, manage.py
commands) are tests/django/test_no_secret_leaks.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentry_sdk

import bgjob
from bgjob.contrib.prometheus import PrometheusMetricStorage, start_metrics_server
from bgjob.contrib.sentry import BgjobIntegration
from bgjob.encryption import generate_key
from bgjob.logs import TEXT_FORMAT, ContextFilter, JsonFormatter, LogJobs
from bgjob.redaction import MASK
from bgjob.server import EmbeddedServer
from bgjob.signing import generate_keypair

from .conftest import ROOT, drain, wait_until
from .test_sentry import CapturingTransport

pytest.importorskip("nacl")
pytest.importorskip("cryptography")
prometheus_client = pytest.importorskip("prometheus_client")

PASSWORD = "Pl@nted-Passw0rd-7c1e"
CARD = "4111-9876-5432-1234"
ARG_PASSWORD = "hunter2-planted-arg"
BEARER = "planted-bearer-5f2a"
API_KEY = "planted-api-key-91b0"


@pytest.fixture
def secured_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A nats-server that needs user `app` with PASSWORD."""
    config = tmp_path / "auth.conf"
    config.write_text(f'authorization {{ users = [ {{ user: "app", password: "{PASSWORD}" }} ] }}\n')
    server = EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(config)])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def captured_logs() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Everything logged, at every level, as text and as JSON."""
    text, as_json = io.StringIO(), io.StringIO()
    text_handler, json_handler = logging.StreamHandler(text), logging.StreamHandler(as_json)
    text_handler.addFilter(ContextFilter())
    text_handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    json_handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(text_handler)
    root.addHandler(json_handler)
    yield text, as_json
    root.removeHandler(text_handler)
    root.removeHandler(json_handler)
    root.setLevel(level)


@pytest.fixture
def closing() -> Iterator[list[bgjob.Client]]:
    """Clients closed after the test's workers stop (request it before start_worker)."""
    clients: list[bgjob.Client] = []
    yield clients
    for client in clients:
        client.close()


@pytest.fixture
def sentry_events() -> Iterator[CapturingTransport]:
    transport = CapturingTransport()
    sentry_sdk.init(dsn="http://key@127.0.0.1:9/1", transport=transport, traces_sample_rate=1.0,
                    default_integrations=False, auto_enabling_integrations=False,
                    integrations=[BgjobIntegration(capture="every")])  # fmt: skip
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def test_no_planted_secret_reaches_any_output_channel(secured_server, captured_logs, sentry_events, prefix, closing,
                                                      start_worker) -> None:  # fmt: skip
    signing_key, verify_key = generate_keypair()
    encryption_key = generate_key()
    secrets = {"url password": PASSWORD, "signing key": signing_key, "encryption key": encryption_key,
               "card (marked by the handler)": CARD, "password (marked by the producer)": ARG_PASSWORD,
               "Authorization header": BEARER, "X-Api-Key header": API_KEY}  # fmt: skip
    url = f"nats://app:{PASSWORD}@127.0.0.1:{secured_server.port}"
    settings = bgjob.Settings(url=url, prefix=prefix, signing_key=signing_key, verify_keys=(verify_key,),
                              encryption_keys=(encryption_key,), ack_wait=5.0, retry_for=10.0)  # fmt: skip
    client = bgjob.Client(settings).connect()
    closing.append(client)
    channels: dict[str, str] = {"repr(settings)": repr(settings), "repr(client)": repr(client),
                                "client.url": client.url}  # fmt: skip

    # A reconnect: the WARNING lines about it name the server.
    secured_server.restart()
    wait_until(lambda: "reconnected" in captured_logs[0].getvalue(), message="the reconnect warning")

    registry = prometheus_client.CollectorRegistry()
    metrics_server, _ = start_metrics_server(0, client=client, registry=registry, cache_seconds=0)
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    def charge(job: bgjob.Job) -> bgjob.Result:
        arg, headers = job.arg, job.headers  # locals a careless reporter would send
        ran.put((arg["card"], headers.get("Authorization")))
        raise ValueError(f"card {arg['card']} declined for password {arg['password']} "
                         f"with {headers['Authorization']} and key {headers['X-Api-Key']}")  # fmt: skip

    mux.handle("charge", charge, sensitive=["card"])
    start_worker(client, mux, middleware=[bgjob.Recovery(), bgjob.Metrics(PrometheusMetricStorage(registry))],
                 hooks=[LogJobs()], retry_policy=bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0))
    job_id = client.send_job("charge", {"card": CARD, "password": ARG_PASSWORD, "customer": 7},
                             sensitive=["password"], store_result=True,
                             headers={"Authorization": f"Bearer {BEARER}", "X-Api-Key": API_KEY})  # fmt: skip
    assert drain(ran, 2) == [(CARD, f"Bearer {BEARER}")] * 2  # the handler itself sees everything
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    entry = client.dlq.get(job_id)
    wait_until(lambda: client.result(job_id).status == bgjob.ResultStatus.FAILED, message="the failed result")
    result = client.result(job_id)

    channels["dead letter (as client.dlq shows it)"] = " ".join(map(str, (
        entry, entry.masked_arg, entry.masked_headers, entry.masked_error, entry.masked_traceback, entry.headers,
        entry.error, entry.traceback)))  # fmt: skip
    channels["result"] = f"{result!r} {[(e.error, e.traceback) for e in result.errors]!r}"
    channels["/metrics"] = urllib.request.urlopen(
        f"http://127.0.0.1:{metrics_server.server_port}/metrics", timeout=10).read().decode()
    channels["workers"] = repr(client.workers())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BGJOB_URL": url, "BGJOB_PREFIX": prefix,
           "BGJOB_ENCRYPTION_KEYS": encryption_key}  # fmt: skip
    for command in (["status"], ["dlq", "list"], ["dlq", "list", "--json"], ["dlq", "show", job_id],
                    ["dlq", "find", "--match", "customer=7", "--json"], ["queue", "show"]):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "bgjob", *command], env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, (command, done.stderr)
        channels[f"bgjob {' '.join(command)}"] = done.stdout + done.stderr
    metrics_server.shutdown()
    sentry_sdk.flush()
    channels["logs (text)"], channels["logs (JSON)"] = captured_logs[0].getvalue(), captured_logs[1].getvalue()
    channels["Sentry events"] = json.dumps(sentry_events.items, default=str)

    leaks = [f"{name} in {channel}" for channel, text in channels.items() for name, secret in secrets.items()
             if secret in text]  # fmt: skip
    assert leaks == []
    # ... and each channel did carry the failure, with the secrets masked where they were quoted.
    assert "ValueError: card ********" in entry.error and MASK in entry.masked_arg["password"]
    assert "Authorization" not in entry.headers and entry.masked_arg["customer"] == 7
    assert result.errors and MASK in result.errors[-1].error
    assert "server: nats://***@127.0.0.1" in channels["bgjob status"] and "default" in channels["bgjob status"]
    assert MASK in channels[f"bgjob dlq show {job_id}"] and '"customer": 7' in channels[f"bgjob dlq show {job_id}"]
    assert "reconnected" in channels["logs (text)"] and job_id in channels["logs (JSON)"]
    assert "declined" in channels["Sentry events"] and "bgjob_jobs_dead_lettered_total" in channels["/metrics"]
