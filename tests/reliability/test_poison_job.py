"""Scenario 9: a poison job, whose handler ends its own worker process (SIGKILL as an OOM kill would, or
`os._exit(3)` as a C extension calling exit() would), among a steady stream of ordinary jobs; a supervisor (this
test) restarts the worker each time it dies. With max_attempts=3 the poison job runs at attempts 1, 2 and 3, its
4th delivery is dead-lettered without running, no other job is lost, and the worker then stays up."""

from __future__ import annotations

import random
import subprocess
import threading
from pathlib import Path

import pytest

import bgjob

from ..conftest import wait_until
from .conftest import WorkerProcesses
from .support import Scenario, consumer_counts, done_ids, full_run_only, read_records, scale, tally

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

#: poison jobs sent one after another (each once the one before is dead-lettered), ordinary jobs flowing meanwhile.
POISONS = scale(1, 3)
#: ordinary jobs sent at once after the last poison job, which the last worker must run without dying.
AFTERWARDS = scale(300, 2000)
#: ordinary jobs per producer tick (one tick every 0.1 s while the poison jobs crash workers); they run 20-200 ms,
#: so about five are in flight beside the poison job whenever it strikes (concurrency 8).
PER_TICK = 5
#: how a worker the poison job ended exits (os._exit(3) rather than 1, which is also Python's uncaught-error status).
EXIT_CODES = {"sigkill": -9, "exit": 3}


class Supervisor:
    """Restarts the worker whenever it dies, as systemd or Kubernetes would, and keeps each exit code."""

    def __init__(self, workers: WorkerProcesses, config: dict) -> None:
        self.workers = workers
        self.config = config
        self.exit_codes: list[int] = []
        self.current: subprocess.Popen = workers.start(**config)

    def check(self) -> None:
        code = self.current.poll()
        if code is not None:
            self.exit_codes.append(code)
            self.current = self.workers.start(**self.config)

    def other_deaths(self, expected: int) -> str:
        """The log tails of workers that exited other than with `expected`, for a failure message."""
        odd = [i for i, code in enumerate(self.exit_codes) if code != expected]
        return "\n".join(
            f"--- worker-{i}.log (exit {self.exit_codes[i]})\n"
            + (self.workers.logs / f"worker-{i}.log").read_text(errors="replace")[-2000:]
            for i in odd
        )


def dead_letter(client: bgjob.Client, job_id: str) -> bgjob.DeadLetter | None:
    try:
        return client.dlq.get(job_id)
    except bgjob.DeadLetterNotFound:
        return None


def starts(record: Path, job_id: str) -> list[int]:
    """The attempts at which job_id's handler started, in the order they started."""
    return [r["attempt"] for r in read_records(record) if r["id"] == job_id and r["ev"] == "start"]


@pytest.mark.timeout(scale(150, 600))
@pytest.mark.parametrize("how", ["sigkill", pytest.param("exit", marks=full_run_only)])  # exit: also in tests/
def test_a_job_that_kills_its_worker_runs_three_times_then_is_dead_lettered_and_no_other_job_is_lost(
    nats_server, prefix, workers, how
) -> None:
    scenario = Scenario(f"9 poison job ({'SIGKILL' if how == 'sigkill' else 'os._exit(3)'}) x{POISONS}")
    rng = random.Random(9)
    config = {"url": nats_server.url, "prefix": prefix, "ack_wait": 2.0, "concurrency": 8, "max_attempts": 3}
    client = bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix, ack_wait=2.0)).connect()
    ordinary: list[str] = []
    stop = threading.Event()

    def produce() -> None:  # ordinary jobs keep coming while the poison job takes workers down
        n = 0
        while not stop.is_set():
            specs = [bgjob.JobSpec("work", {"ms": rng.randint(20, 200)}, job_id=f"o-{n + i}") for i in range(PER_TICK)]
            ordinary.extend(client.send_jobs(specs))
            n += PER_TICK
            stop.wait(0.1)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        supervisor = Supervisor(workers, config)
        producer.start()
        poison_ids = []
        for k in range(POISONS):
            wait_until(lambda n=50 * (k + 1): supervisor.check() or len(done_ids(workers.record)) >= n, timeout=60,
                       message="jobs flowing")  # fmt: skip
            poison_ids.append(client.send_job("poison", {"how": how}, job_id=f"poison-{k}"))

            def poison_dead_lettered(job_id: str = poison_ids[-1]) -> bool:
                supervisor.check()
                return dead_letter(client, job_id) is not None

            wait_until(poison_dead_lettered, timeout=60, message=f"poison job {k + 1} in the DLQ")
        stop.set()
        producer.join(30)
        assert not producer.is_alive(), "the producer hangs"

        # Jobs in flight beside the poison job in all three of its crashes used up their attempts as well (a
        # worker cannot tell which of its jobs killed it): each is dead-lettered the same way, never lost.
        def settled() -> set[str]:
            supervisor.check()
            beside = {e.id for e in client.dlq.list(job_type="work", limit=10_000)}
            return set(done_ids(workers.record)) | beside

        wait_until(lambda: settled() >= set(ordinary), timeout=60, message="every ordinary job done or dead-lettered")
        beside = client.dlq.list(job_type="work", limit=10_000)
        crashes = len(supervisor.exit_codes)

        # Afterwards the worker that runs now stays up through a batch of ordinary jobs.
        last = supervisor.current
        after = client.send_jobs([bgjob.JobSpec("work", {"ms": 1}, job_id=f"a-{i}") for i in range(AFTERWARDS)])

        def after_done() -> bool:
            assert last.poll() is None, "the worker died afterwards:\n" + workers.log_tail()
            return set(done_ids(workers.record)) >= set(after)

        wait_until(after_done, timeout=60, message="the jobs sent afterwards")
        wait_until(lambda: (c := consumer_counts(nats_server.url, prefix)).pending + c.ack_pending == 0,
                   timeout=30, message="an empty queue")  # fmt: skip
        result = tally(ordinary + after, done_ids(workers.record) + [e.id for e in beside])
        scenario.report(result, note=f"{crashes} crashes; in flight beside it in all 3: {len(beside)}, "
                                     f"dead-lettered (max_attempts); then {AFTERWARDS} jobs on one worker")  # fmt: skip

        assert not result.lost, result.lost_message() + "\n" + workers.log_tail()
        for job_id in poison_ids:
            assert starts(workers.record, job_id) == [1, 2, 3], "the poison handler runs at attempts 1, 2, 3 only"
            entry = client.dlq.get(job_id)
            assert (entry.reason, entry.attempts) == ("max_attempts", 4)
            assert "most likely died" in entry.error and "max_attempts=3" in entry.error, entry.error
        assert supervisor.exit_codes == [EXIT_CODES[how]] * (3 * POISONS), (
            "only the poison job ended workers\n" + supervisor.other_deaths(EXIT_CODES[how])
        )
        for entry in beside:
            assert (entry.reason, entry.attempts) == ("max_attempts", 4), entry
            assert "most likely died" in entry.error, entry.error
        assert client.dlq.count() == POISONS + len(beside), "the DLQ holds the poison jobs and those beside them"
        assert supervisor.current is last and last.poll() is None, "the worker died afterwards:\n" + workers.log_tail()
    finally:
        stop.set()
        client.close()
