"""Fixtures of the reliability suite: worker processes that are killed and restarted (the summary table is
tests/conftest.py's: hooks of the run itself belong in an initial conftest, which pytest-xdist's controller loads)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import python_process
from .support import Cluster

WORKER_CODE = "from tests.reliability.worker_app import main; main()"


class WorkerProcesses:
    """Starts worker_app processes; every one still running is killed when the test ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.record = tmp_path / "records.jsonl"
        self.logs = tmp_path / "worker-logs"
        self.logs.mkdir()
        self.started: list[subprocess.Popen] = []
        self.killed: set[int] = set()

    def start(self, env: dict[str, str] | None = None, **config: Any) -> subprocess.Popen:
        config.setdefault("record", str(self.record))
        log = open(self.logs / f"worker-{len(self.started)}.log", "wb")  # closed below: the child keeps its copy
        proc = python_process(WORKER_CODE, json.dumps(config), env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.started.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        self.killed.add(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def all_alive(self) -> bool:
        """Whether every worker this test started and did not kill still runs."""
        return all(proc.poll() is None for proc in self.started if proc.pid not in self.killed)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of every worker's log, for failure messages."""
        out = []
        for path in sorted(self.logs.iterdir()):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.cleanup()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running 3-node JetStream cluster of this test alone (see support.Cluster); every node is killed after."""
    nodes = Cluster(tmp_path / "cluster")
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
