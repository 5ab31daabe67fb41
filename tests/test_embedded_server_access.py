"""Another local user (uid 65534) reads nothing of a user's embedded development server: not its state file, not
its data dir, not its jobs over NATS (the server requires the token only the owner can read).

Runs as root only (it switches a child process to uid/gid 65534); skipped otherwise."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

import bgjob
from bgjob.server import ensure_embedded_server, stop_embedded_server

NOBODY = 65534
CARD = "4111111111111111"

#: What the other user tries, each step recorded: an OSError's name, the server's refusal, or what it read.
INTRUDER = r"""
import asyncio, json, os, sys

data_dir = sys.argv[1]
url = sys.argv[2]
seen = {"uid": os.getuid()}

def attempt(name, fn):
    try:
        seen[name] = {"read": fn()}
    except OSError as exc:
        seen[name] = {"denied": type(exc).__name__}

attempt("state_file", lambda: open(os.path.join(data_dir, "server.json")).read())
attempt("log_file", lambda: open(os.path.join(data_dir, "nats-server.log")).read())
attempt("config_file", lambda: open(os.path.join(data_dir, "nats-server.conf")).read())
attempt("data_dir", lambda: sorted(os.listdir(data_dir)))

async def over_nats():
    import nats
    try:
        nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    except Exception as exc:
        return {"refused": str(exc)}
    read = []
    try:
        await nc.subscribe(">")
        js = nc.jetstream()
        for info in await js.streams_info():
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(info.config.name, seq=seq)
                read.append(msg.data.decode(errors="replace"))
        return {"read": read}
    finally:
        await nc.close()

seen["nats"] = asyncio.run(over_nats())
print(json.dumps(seen))
"""


def _as_nobody() -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    return []


def _drop_to_nobody() -> None:  # the fallback without setpriv: runs in the child before exec
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _readable_nats_py(base: pathlib.Path) -> pathlib.Path:
    """A copy of nats-py (pure Python) that every user can import: the other user cannot read this virtualenv
    (CI makes it in a 0700 temporary directory)."""
    import nats

    lib = base / "pylib"
    shutil.copytree(pathlib.Path(nats.__file__).parent, lib / "nats", ignore=shutil.ignore_patterns("__pycache__"))
    for path in (lib, *lib.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return lib


def _intrude(data_dir: pathlib.Path, url: str, as_nobody: bool = False) -> dict:
    """Run INTRUDER (as uid/gid 65534 when `as_nobody`) against `data_dir` and the NATS `url`; what it saw."""
    prefix = _as_nobody() if as_nobody else []
    lib = _readable_nats_py(data_dir.parent) if not (data_dir.parent / "pylib").exists() else data_dir.parent / "pylib"
    done = subprocess.run(
        [*prefix, sys.executable, "-c", INTRUDER, str(data_dir), url],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(lib)},
        preexec_fn=_drop_to_nobody if as_nobody and not prefix else None,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def shared_dir() -> Iterator[pathlib.Path]:
    """A directory every user can traverse (as a home directory often is), its server stopped afterwards."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="bgjob-access-"))
    base.chmod(0o755)
    data_dir = base / "data"
    try:
        yield data_dir
    finally:
        stop_embedded_server(data_dir)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(120)
def test_another_local_user_reads_nothing_of_the_embedded_server(shared_dir: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching a process to another user (uid 65534) needs root")
    url = ensure_embedded_server(shared_dir)
    port = int(url.rpartition(":")[2])
    with bgjob.Client(bgjob.Settings(url=url, prefix="access")) as client:
        client.send_job("charge", {"card": CARD, "password": "hunter2-planted"})
    # The owner, with the token, reads the job this way: the script can read what it is let in to.
    owner = _intrude(shared_dir, url)
    assert CARD in json.dumps(owner["nats"]["read"]), owner
    seen = _intrude(shared_dir, f"nats://127.0.0.1:{port}", as_nobody=True)
    done_stdout = json.dumps(seen)
    assert seen["uid"] == NOBODY
    assert CARD not in done_stdout and "hunter2" not in done_stdout, seen
    token = url.removeprefix("nats://").rpartition("@")[0]
    assert token not in done_stdout, "the token reached the other user"
    for what in ("state_file", "log_file", "config_file", "data_dir"):
        assert seen[what] == {"denied": "PermissionError"}, (what, seen[what])
    assert "Authorization Violation" in seen["nats"].get("refused", ""), seen["nats"]
