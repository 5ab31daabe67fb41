"""The embedded server refuses a data dir, state file or config file it cannot trust (like ssh's StrictModes):
another local user who created them first could swap the state file and make bgjob start a second server on
the same store. The cross-user tests run as root only (they create files as uid 65534); skipped otherwise."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

import bgjob
from bgjob.server import EmbeddedServer, ensure_embedded_server, private_dir, stop_embedded_server

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="switches a child process to uid 65534: needs root")


def as_nobody(*argv: str) -> None:
    """Run the command `argv` as uid/gid 65534 (the other local user)."""

    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    subprocess.run(list(argv), check=True, preexec_fn=drop, timeout=30, cwd="/")


@pytest.fixture
def shared_tmp() -> Iterator[pathlib.Path]:
    """A world-writable sticky directory, like /tmp, where another user can create things first."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="bgjob-datadir-"))
    base.chmod(0o755)
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    try:
        yield shared
    finally:
        shutil.rmtree(base)


def _refused(directory: pathlib.Path) -> str:
    """The ConfigurationError ensure_embedded_server raises for `directory` (a server it started anyway is
    stopped before the test fails)."""
    try:
        ensure_embedded_server(directory)
    except bgjob.ConfigurationError as exc:
        return str(exc)
    stop_embedded_server(directory)
    raise AssertionError(f"a server was started on {directory}")


@as_root
@pytest.mark.parametrize("mode", [0o777, 0o755, 0o700])
def test_a_data_dir_another_user_created_is_refused_naming_it_its_owner_and_mode(
    shared_tmp: pathlib.Path, mode: int
) -> None:
    data_dir = shared_tmp / "dd"
    as_nobody("mkdir", "-m", f"{mode:o}", str(data_dir))
    message = _refused(data_dir)
    assert str(data_dir) in message and "uid 65534" in message and oct(mode) in message
    assert "BGJOB_DATA_DIR" in message
    # Nothing was started or written there, and the directory was left as it was.
    assert sorted(os.listdir(data_dir)) == []
    assert data_dir.stat().st_uid == NOBODY and data_dir.stat().st_mode & 0o777 == mode
    server = EmbeddedServer(data_dir)
    try:
        with pytest.raises(bgjob.ConfigurationError):
            server.start()
    finally:
        server.stop()


@as_root
def test_the_attack_a_foreign_0777_data_dir_whose_state_file_is_swapped_never_gets_a_second_server(
    shared_tmp: pathlib.Path,
) -> None:
    """The reported sequence: nobody pre-creates the dir 0777, bgjob ran a server there, nobody swaps
    server.json for '{}' so that bgjob starts another server on the same store. Now the first step is refused."""
    data_dir = shared_tmp / "dd"
    as_nobody("mkdir", "-m", "777", str(data_dir))
    _refused(data_dir)
    as_nobody("sh", "-c", 'echo "{}" > "$0"', str(data_dir / "server.json"))
    _refused(data_dir)
    assert not (data_dir / "jetstream").exists()


def test_a_group_or_world_writable_data_dir_of_ours_is_tightened_not_refused(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "dd"
    data_dir.mkdir(mode=0o777)
    data_dir.chmod(0o777)
    assert private_dir(data_dir) == data_dir
    assert data_dir.stat().st_mode & 0o777 == 0o700


@as_root
@pytest.mark.parametrize("name", ["server.json", "nats-server.conf", "server.lock", "nats-server.log"])
def test_a_file_another_user_owns_in_our_data_dir_is_refused(tmp_path: pathlib.Path, name: str) -> None:
    data_dir = private_dir(tmp_path / "dd")
    planted = data_dir / name
    planted.write_text('{"pid": 1, "port": 4222, "url": "nats://127.0.0.1:4222"}' if name == "server.json" else "x")
    os.chown(planted, NOBODY, NOBODY)
    message = _refused(data_dir)
    assert str(planted) in message and "uid 65534" in message
    assert not (data_dir / "jetstream").exists()


@pytest.mark.parametrize("name", ["server.json", "nats-server.conf", "server.lock", "nats-server.log"])
def test_a_symlinked_file_in_the_data_dir_is_refused_not_followed(tmp_path: pathlib.Path, name: str) -> None:
    data_dir = private_dir(tmp_path / "dd")
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    (data_dir / name).symlink_to(target)
    message = _refused(data_dir)
    assert str(data_dir / name) in message and "symbolic link" in message
    assert target.read_text() == "untouched"
    assert not (data_dir / "jetstream").exists()


def test_a_data_dir_of_ours_still_runs_its_server(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "dd"
    try:
        url = ensure_embedded_server(data_dir)
        assert ensure_embedded_server(data_dir) == url
        assert data_dir.stat().st_mode & 0o777 == 0o700
    finally:
        stop_embedded_server(data_dir)
