"""Long-running jobs (bgjob.long_running, from dagnats): checkpoints across SIGKILLs, pauses, signals, progress."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
from pathlib import Path

import pytest

import bgjob
from bgjob import long_running
from bgjob.cli import job_status_lines
from bgjob.job_results import result_key
from bgjob.topology import CHECKPOINTS_BUCKET

from .conftest import drain, python_process, wait_until

IMPORTER = r"""
import json, os, sys, time
import bgjob

url, prefix, workdir, kill_at = sys.argv[1:5]
kill_at = {int(k) for k in kill_at.split(",") if k}
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=2.0))
mux = bgjob.Mux()

def append(name, line):
    with open(os.path.join(workdir, name), "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())

@mux.handler("import")
def import_rows(job):
    rows, size = job.arg["rows"], job.arg["batch"]
    state = job.load_checkpoint() or {"next": 0}
    for batch in range(state["next"], rows // size):
        append("starts.jsonl", json.dumps({"batch": batch, "attempt": job.attempt, "pid": os.getpid()}))
        ids = list(range(batch * size, (batch + 1) * size))
        marker = os.path.join(workdir, f"killed-{batch}")
        if batch in kill_at and not os.path.exists(marker):
            open(marker, "w").close()  # mid-batch: nothing of this batch is committed yet
            time.sleep(600)  # the test SIGKILLs this process now
        append("rows.jsonl", json.dumps(ids))  # the batch's commit: one line
        job.checkpoint({"next": batch + 1})
        job.report_progress({"done": (batch + 1) * size, "total": rows})
    return bgjob.Complete(rows)

bgjob.Worker(client, mux, fetch_timeout=0.5).run()
client.close()
"""


def _lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _checkpoint(client: bgjob.Client, job_id: str) -> bytes | None:
    return client.run(long_running.get, CHECKPOINTS_BUCKET, result_key(job_id))


@pytest.fixture
def importer(nats_server, prefix, tmp_path):
    started: list[subprocess.Popen] = []

    def start(kill_at: str = "") -> subprocess.Popen:
        proc = python_process(IMPORTER, nats_server.url, prefix, str(tmp_path), kill_at)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_checkpointed_import_killed_three_times_imports_every_row_exactly_once(client, importer, tmp_path) -> None:
    kills = [3, 9, 15]
    job_id = client.send_job("import", {"rows": 10_000, "batch": 500}, job_id="import-10k")
    for batch in kills:
        proc = importer(",".join(map(str, kills)))
        wait_until(lambda b=batch: (tmp_path / f"killed-{b}").exists(), timeout=60, message=f"batch {batch}")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    survivor = importer()
    wait_until(lambda: client.queue_stats().pending + client.queue_stats().in_flight == 0 and
               len(_lines(tmp_path / "rows.jsonl")) == 20, timeout=60, message="the import to finish")  # fmt: skip

    rows = [row for batch in _lines(tmp_path / "rows.jsonl") for row in batch]
    assert len(rows) == 10_000 and sorted(rows) == list(range(10_000))  # every row, exactly once
    starts = [(s["batch"], s["attempt"]) for s in _lines(tmp_path / "starts.jsonl")]
    # Each run resumed at the batch it was killed in, never at batch 0 again.
    assert [b for b, _ in starts] == [*range(0, 4), *range(3, 10), *range(9, 16), *range(15, 20)]
    assert sorted({a for _, a in starts}) == [1, 2, 3, 4]
    wait_until(lambda: _checkpoint(client, job_id) is None, message="the checkpoint deleted after success")
    assert client.progress(job_id) == {"done": 10_000, "total": 10_000}
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(20) == 0


def test_pause_gives_the_slot_back_and_costs_no_attempt(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("pausing")
    def pausing(job: bgjob.Job) -> bgjob.Result:
        state = job.load_checkpoint()
        runs.put(("pausing", job.attempt, state))
        if state is None:
            return bgjob.Pause(2.0, checkpoint={"step": 1})
        if state == {"step": 1}:
            job.pause(0.2, checkpoint={"step": 2})  # raises: the same as returning Pause
        return bgjob.Complete(state)

    mux.handle("quick", lambda job: runs.put(("quick", job.attempt, None)) or bgjob.Complete())
    # One slot, and one attempt: a pause counted as an attempt would dead-letter the job.
    start_worker(client, mux, concurrency=1)
    job_id = client.send_job("pausing", None, max_attempts=1)
    assert drain(runs, 1) == [("pausing", 1, None)]
    client.send_job("quick", None)
    assert drain(runs, 3) == [("quick", 1, None), ("pausing", 1, {"step": 1}), ("pausing", 1, {"step": 2})]
    wait_until(lambda: client.queue_stats().pending + client.queue_stats().in_flight + client.queue_stats().scheduled
               == 0, message="the job done")  # fmt: skip
    assert client.dlq.count() == 0
    wait_until(lambda: _checkpoint(client, job_id) is None, message="the checkpoint deleted after success")


def test_checkpoint_deleted_when_the_job_is_dead_lettered(client, start_worker) -> None:
    mux = bgjob.Mux()

    @mux.handler("gives-up")
    def gives_up(job: bgjob.Job) -> bgjob.Result:
        job.checkpoint(b"\x00raw")
        assert job.load_checkpoint() == b"\x00raw"
        return bgjob.MoveToDlq("no")

    start_worker(client, mux)
    job_id = client.send_job("gives-up", None)
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    wait_until(lambda: _checkpoint(client, job_id) is None, message="the checkpoint deleted")


def test_signals_before_and_during_the_wait_and_a_timeout(make_client, start_worker) -> None:
    client = make_client(ack_wait=1.5)
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("waiter")
    def waiter(job: bgjob.Job) -> bgjob.Result:
        seen.put(("waiting", job.id, job.attempt))
        try:
            data = job.wait_for_signal("go", job.arg["timeout"])
        except bgjob.SignalTimeout as exc:
            seen.put(("timeout", job.id, str(exc)))
            return bgjob.Complete()
        seen.put(("signal", job.id, data))
        return bgjob.Complete()

    client.send_signal("early", "go", {"n": 1})  # before the job even exists
    start_worker(client, mux)
    client.send_job("waiter", {"timeout": 30}, job_id="early")
    assert drain(seen, 2) == [("waiting", "early", 1), ("signal", "early", {"n": 1})]

    client.send_job("waiter", {"timeout": 60}, job_id="late")
    assert drain(seen, 1) == [("waiting", "late", 1)]
    # Waiting longer than ack_wait (1.5 s): the lease is kept, the job is not delivered again meanwhile.
    wait_until(lambda: client.queue_stats().in_flight == 1, message="the job in flight")
    with pytest.raises(queue.Empty):
        seen.get(timeout=4.0)
    client.send_signal("late", "go", b"bytes too")
    assert drain(seen, 1) == [("signal", "late", b"bytes too")]

    client.send_job("waiter", {"timeout": 0.5}, job_id="never")
    got = drain(seen, 2)
    assert got[0] == ("waiting", "never", 1)
    assert got[1][:2] == ("timeout", "never") and "no signal 'go'" in got[1][2]


def test_a_signal_is_consumed_once_and_a_second_wait_times_out(client, start_worker) -> None:
    """A taken signal leaves a deleted key behind: a second wait for the same name waits and times out."""
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("twice")
    def twice(job: bgjob.Job) -> bgjob.Result:
        seen.put(job.wait_for_signal("go", 30))
        try:
            job.wait_for_signal("go", 0.5)
        except bgjob.SignalTimeout:
            seen.put("second wait timed out")
        return bgjob.Complete()

    client.send_signal("twice-1", "go", "once")
    start_worker(client, mux)
    client.send_job("twice", None, job_id="twice-1")
    assert drain(seen, 2) == ["once", "second wait timed out"]


def test_an_uncaught_signal_timeout_dead_letters_the_job_at_once(client, start_worker) -> None:
    """A retry would only wait all over again (a new user saw six full waits): the job is dead-lettered after its
    first timed-out wait, reason non_retryable, whatever attempts its retry policy has left."""
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("approval", retry_policy=bgjob.RetryPolicy(max_attempts=5, base_delay=0.1, jitter=0))
    def approval(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.attempt)
        job.wait_for_signal("decision", 0.3)
        return bgjob.Complete()

    start_worker(client, mux)
    job_id = client.send_job("approval", None)
    entry = wait_until(lambda: next(iter(client.dlq.list(limit=5)), None), message="the dead letter")
    assert (entry.id, entry.reason, entry.attempts) == (job_id, "non_retryable", 1)
    assert entry.error.startswith("SignalTimeout: ") and "no signal 'decision' within 0.3s" in entry.error
    assert _drain_all(runs) == [1]


def test_wait_for_signal_pausing_holds_no_slot(client, start_worker) -> None:
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("approval")
    def approval(job: bgjob.Job) -> bgjob.Result:
        seen.put(("run", job.attempt))
        data = job.wait_for_signal("approved", 60, pause=True, recheck=0.3)
        seen.put(("approved", data))
        return bgjob.Complete()

    start_worker(client, mux, concurrency=1)
    job_id = client.send_job("approval", None, max_attempts=1)
    assert drain(seen, 2) == [("run", 1), ("run", 1)]  # paused, came back, paused again: no attempt counted
    client.send_signal(job_id, "approved", "yes")
    wait_until(lambda: ("approved", "yes") in _drain_all(seen), message="the signal")
    assert client.dlq.count() == 0


def _drain_all(q: queue.Queue) -> list:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


def test_progress_seen_from_another_client(make_client, start_worker) -> None:
    worker_client, watcher = make_client(), make_client()
    mux = bgjob.Mux()

    @mux.handler("steps")
    def steps(job: bgjob.Job) -> bgjob.Result:
        for done in range(1, 6):
            job.report_progress({"done": done, "total": 5})
            job.wait_for_signal("next", 30)  # the test steps it
        return bgjob.Complete()

    assert watcher.progress("nosuchjob") is None
    start_worker(worker_client, mux)
    job_id = watcher.send_job("steps", None)
    seen: list = []
    updates = watcher.watch_progress(job_id, timeout=60)
    for value in updates:
        seen.append(value)
        if value["done"] == 5:
            break
        watcher.send_signal(job_id, "next", None)
    updates.close()
    assert seen == [{"done": n, "total": 5} for n in range(1, 6)]
    assert watcher.progress(job_id) == {"done": 5, "total": 5}
    assert job_status_lines(watcher, job_id)[1].startswith("  progress 5 / 5 (100%) (at ")  # `bgjob job ID`
    watcher.send_signal(job_id, "next", None)


def test_outside_a_worker_the_methods_say_so() -> None:
    job = bgjob.Job(id="x", type="t", arg=None, queue="default")
    with pytest.raises(RuntimeError, match="only in a bgjob worker"):
        job.checkpoint({"a": 1})
    with pytest.raises(RuntimeError, match="only in a bgjob worker"):
        job.wait_for_signal("go", 1)
    job.report_progress({"done": 1})  # a no-op, as heartbeat()
    with pytest.raises(bgjob.InvalidResult):
        bgjob.Pause(-1)


def test_a_checkpoint_survives_retries_and_a_pause_until_a_datetime_and_lives_in_a_bucket_with_its_ttl(
    make_client, start_worker
) -> None:
    """Issue 18: the state survives retries (a Retry result and a raised exception), a Pause until an aware
    datetime brings the job back with it, and the bucket's max age is Settings.checkpoint_ttl."""
    from datetime import datetime, timedelta, timezone

    client = make_client(checkpoint_ttl=3600.0)
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("steps", retry_policy=bgjob.RetryPolicy(max_attempts=3, base_delay=0.05, jitter=0))
    def steps(job: bgjob.Job) -> bgjob.Result:
        state = job.load_checkpoint()
        runs.put((job.attempt, state))
        if state is None:
            job.checkpoint({"step": 1})
            return bgjob.Retry(0.05)
        if state == {"step": 1}:
            job.checkpoint({"step": 2})
            raise RuntimeError("fails after saving")
        if state == {"step": 2}:
            return bgjob.Pause(datetime.now(timezone.utc) + timedelta(seconds=0.3), checkpoint={"step": 3})
        return bgjob.Complete(state)

    start_worker(client, mux)
    job_id = client.send_job("steps", None)
    assert drain(runs, 4) == [(1, None), (2, {"step": 1}), (3, {"step": 2}), (3, {"step": 3})]

    async def max_age(core) -> float:
        info = await core.js.stream_info(f"KV_{core.topology.stream_prefix}{CHECKPOINTS_BUCKET}")
        return info.config.max_age

    assert client.run(max_age) == 3600.0
    wait_until(lambda: _checkpoint(client, job_id) is None, message="the checkpoint deleted after success")
    assert client.dlq.count() == 0


def test_a_pausing_wait_times_out_at_its_first_calls_deadline(client, start_worker) -> None:
    """wait_for_signal(..., pause=True): the deadline is remembered across pauses; when it passes the wait
    raises SignalTimeout (caught here: the job completes) and its stored deadline is deleted."""
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("approval")
    def approval(job: bgjob.Job) -> bgjob.Result:
        runs.put(("run", job.attempt))
        try:
            job.wait_for_signal("approved", 1.0, pause=True, recheck=0.2)
        except bgjob.SignalTimeout as exc:
            runs.put(("timeout", str(exc)))
            return bgjob.Complete()
        runs.put(("approved", None))
        return bgjob.Complete()

    start_worker(client, mux)
    job_id = client.send_job("approval", None, max_attempts=1)
    seen = [drain(runs, 1, timeout=30)[0]]
    while seen[-1][0] == "run" and len(seen) < 30:  # about 1.0 / 0.2 looks; a deadline reset each run: for ever
        seen.append(drain(runs, 1, timeout=30)[0])
    assert seen[-1][0] == "timeout" and "no signal 'approved' within 1s (pausing)" in seen[-1][1]
    # paused and looked again (each run's attempt 1), then timed out at the first call's deadline
    assert 3 <= len(seen) < 30 and all(item == ("run", 1) for item in seen[:-1])
    assert client.run(long_running.get, CHECKPOINTS_BUCKET, long_running.wait_key(job_id, "approved")) is None
    assert client.dlq.count() == 0
