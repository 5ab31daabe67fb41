"""No output channel shows NATS credentials: a server that requires a user/password (the password holding '@'
and '/') or a token, BGJOB_URL carrying them, and every channel grepped for the planted secret: `bgjob status`
and `bgjob worker` (output and logs), `manage.py bgjob_status`, the disconnect/reconnect warnings, the error of
a refused login, the Django system check of a malformed URL, reprs, the worker directory and /metrics."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import bgjob
from bgjob import directory
from bgjob.contrib.prometheus import start_metrics_server
from bgjob.core import nats_servers
from bgjob.server import EmbeddedServer, free_port

from .conftest import ROOT, wait_until

PASSWORD = "p@ss/W0RD-planted"
TOKEN = "t0ken-planted-9f3c"


@dataclass(frozen=True)
class Secured:
    server: EmbeddedServer
    #: BGJOB_URL as a deployment sets it.
    url: str
    #: what must never be shown.
    secret: str
    #: the same URL with a wrong secret.
    wrong_url: str

    @property
    def masked(self) -> str:
        return f"nats://***@127.0.0.1:{self.server.port}"


@pytest.fixture(params=["user-password", "token"])
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Secured]:
    port = free_port()
    if request.param == "user-password":
        config = f'authorization {{ user: "app", password: "{PASSWORD}" }}'
        url, secret = f"nats://app:{PASSWORD}@127.0.0.1:{port}", PASSWORD
        wrong = f"nats://app:wr@ng/{PASSWORD[::-1]}@127.0.0.1:{port}"
    else:
        config = f'authorization {{ token: "{TOKEN}" }}'
        url, secret, wrong = f"nats://{TOKEN}@127.0.0.1:{port}", TOKEN, f"nats://{TOKEN[::-1]}@127.0.0.1:{port}"
    (tmp_path / "server.conf").write_text(config + "\n")
    server = EmbeddedServer(tmp_path / "nats", port=port, extra_args=["-c", str(tmp_path / "server.conf")])
    server.start()
    try:
        yield Secured(server, url, secret, wrong)
    finally:
        server.stop()


def _leaks(secured: Secured, text: str) -> list[str]:
    """The planted secret's pieces found in `text` (the whole, and each side of the '@' and '/' it holds)."""
    pieces = {secured.secret, *secured.secret.replace("/", "@").split("@")} - {"p"}
    pieces |= {piece[::-1] for piece in pieces}  # the wrong password of the refused login
    return sorted(piece for piece in pieces if len(piece) >= 3 and piece in text)


def _env(secured: Secured, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGJOB_")}
    return {**env, "BGJOB_URL": secured.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def test_a_password_holding_at_and_slash_connects_and_every_url_form_hands_nats_py_what_it_parses() -> None:
    assert nats_servers(f"nats://app:{PASSWORD}@h:4222") == (["nats://h:4222"], {"user": "app", "password": PASSWORD})
    assert nats_servers("nats://a/b@h:1, nats://a/b@k:2") == (["nats://h:1", "nats://k:2"], {"token": "a/b"})
    assert nats_servers("nats://app:p@ss@h:1,k:2") == (["nats://app:p@ss@h:1", "k:2"], {})  # urlparse reads these
    with pytest.raises(bgjob.ConfigurationError) as error:
        nats_servers("nats://a:x/1@h:1,nats://a:x/2@k:2")
    assert "x/1" not in str(error.value) and "x/2" not in str(error.value)


def test_bgjob_status_and_worker_show_no_credentials(secured: Secured, prefix: str, tmp_path: Path) -> None:
    env = _env(secured, prefix)
    status = subprocess.run([sys.executable, "-m", "bgjob", "status"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == f"server: {secured.masked}"
    assert not _leaks(secured, status.stdout + status.stderr)

    (tmp_path / "credjobs.py").write_text("import bgjob\nmux = bgjob.Mux()\n")
    for log_format in ("text", "json"):
        worker = subprocess.Popen([sys.executable, "-m", "bgjob", "--log-level", "DEBUG", "--log-format", log_format,
                                   "worker", "credjobs"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            first = worker.stdout.readline()
            assert first.rstrip("\n") == f"server: {secured.masked}", worker.stderr.read() if not first else first
            with bgjob.Client(bgjob.Settings(url=secured.url, prefix=prefix)) as client:
                # The worker directory entry, read raw from its bucket: what any reader of the account sees.
                entries = wait_until(lambda: _directory_values(client), message="the worker's directory entry")
            assert not _leaks(secured, json.dumps(entries)), entries
        finally:
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert not _leaks(secured, first + out + err), err


def _directory_values(client: bgjob.Client) -> list[str]:
    async def read(core) -> list[str]:
        kv = await directory._bucket(core, create=False)
        if kv is None:
            return []
        try:
            keys = await kv.keys()
        except Exception:  # noqa: BLE001 - nats-py's "no keys" is an exception
            return []
        return [(await kv.get(key)).value.decode() for key in keys]

    return client.run(read)


def test_manage_py_bgjob_status_shows_no_credentials(secured: Secured, prefix: str) -> None:
    env = {**_env(secured, prefix), "DJANGO_SETTINGS_MODULE": "tests.django.settings"}
    done = subprocess.run([sys.executable, "-m", "django", "bgjob_status"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"server: {secured.masked}"
    assert not _leaks(secured, done.stdout + done.stderr)


def test_disconnect_and_reconnect_warnings_show_no_credentials(
    secured: Secured, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in issue 13: `nats: reconnected to app:<password>@host:port` on every reconnect."""
    settings = bgjob.Settings(url=secured.url, prefix=prefix)
    with caplog.at_level(logging.DEBUG, logger="bgjob"), bgjob.Client(settings) as client:
        client.queues()
        secured.server.restart()
        wait_until(lambda: "reconnected to" in caplog.text, timeout=30, message="the reconnect warning")
        client.queues()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"nats: disconnected from {secured.masked}; reconnecting" in warnings
    assert f"nats: reconnected to {secured.masked}" in warnings
    assert not _leaks(secured, caplog.text)


def test_a_refused_login_says_so_without_the_credentials(secured: Secured, prefix: str) -> None:
    settings = bgjob.Settings(url=secured.wrong_url, prefix=prefix, retry_for=5.0, connect_timeout=2.0)
    with pytest.raises(bgjob.ConnectionError) as error:
        bgjob.Client(settings).connect()
    message = str(error.value)
    assert secured.masked in message and "authorization" in message.lower(), message
    assert not _leaks(secured, message + repr(error.value)), message


def test_reprs_of_settings_and_client_show_no_credentials(secured: Secured, prefix: str) -> None:
    settings = bgjob.Settings(url=secured.url, prefix=prefix,
                              nats_options={"user": "app", "password": secured.secret, "token": secured.secret})
    assert not _leaks(secured, repr(settings)), repr(settings)
    with bgjob.Client(bgjob.Settings(url=secured.url, prefix=prefix)) as client:
        assert client.url == secured.masked
        assert not _leaks(secured, repr(client) + str(client) + client.url)


def test_metrics_show_no_credentials(secured: Secured, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    with bgjob.Client(bgjob.Settings(url=secured.url, prefix=prefix)) as client:
        client.send_job("charge", None)
        httpd, _ = start_metrics_server(0, client=client, registry=CollectorRegistry())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{httpd.server_port}/metrics", timeout=10) as response:
                text = response.read().decode()
        finally:
            httpd.shutdown()
            httpd.server_close()
    assert 'bgjob_queue_pending{queue="default"} 1.0' in text, text
    assert not _leaks(secured, text + caplog.text)


URLS_WITH_SECRETS = [
    f"nats://app:{PASSWORD}@h:abc",  # urllib: "Port could not be cast to integer value as 'ss/W0RD-planted@h:abc'"
    f"nats://app:{PASSWORD}@h:99999",
    f"nats://app:{PASSWORD}@:4222",
    f"http://app:{PASSWORD}@h:4222",
    f"nats://ok:4222,nats://app:{PASSWORD}@h:abc",
    f"nats://{PASSWORD}@h:abc",
]


@pytest.mark.parametrize("url", URLS_WITH_SECRETS)
def test_the_django_check_of_a_malformed_url_never_quotes_its_user_info(url: str) -> None:
    from bgjob_django import conf

    problems = conf.problems({"URL": url})
    assert [p.id for p in problems] == ["bgjob_django.E003"], problems
    text = " ".join(f"{p.msg} {p.hint}" for p in problems)
    for piece in ("p@ss", "ss/W0RD", "W0RD-planted", PASSWORD):
        assert piece not in text, text


def test_the_django_check_accepts_a_password_holding_at_and_slash() -> None:
    from bgjob_django import conf

    assert conf.problems({"URL": f"nats://app:{PASSWORD}@h:4222"}) == []

