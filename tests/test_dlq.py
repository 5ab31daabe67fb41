"""The dead-letter queue API: list (newest first, filtered, paged), get, retry, delete, purge, count."""

from __future__ import annotations

import queue

import pytest

import bgjob

from .conftest import drain, wait_until


@pytest.fixture
def dead(client, start_worker):
    """A worker whose `fail` handler dead-letters every job; returns a function that fails N jobs."""
    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq(f"failed {job.arg}"))
    mux.handle("other", lambda job: bgjob.MoveToDlq("other"))
    start_worker(client, mux)
    start_worker(client, mux, queue="mail")

    total = 0

    def fail(count: int, job_type: str = "fail", queue_name: str = "default") -> list[str]:
        nonlocal total
        ids = [client.send_job(job_type, i, queue=queue_name) for i in range(count)]
        total += count
        wait_until(lambda: client.dlq.count() == total, message=f"{total} dead letters")
        return ids

    return fail


def test_list_is_newest_first_and_pages_with_before(client, dead) -> None:
    ids = dead(7)
    page1 = client.dlq.list(limit=3)
    assert [e.arg for e in page1] == [6, 5, 4]
    page2 = client.dlq.list(limit=3, before=page1[-1].seq)
    page3 = client.dlq.list(limit=3, before=page2[-1].seq)
    assert [e.arg for e in page2] == [3, 2, 1] and [e.arg for e in page3] == [0]
    assert {e.id for e in page1 + page2 + page3} == set(ids)


def test_list_and_count_filter_by_queue_and_type(client, dead) -> None:
    dead(3)
    dead(2, job_type="other")
    dead(1, queue_name="mail")
    assert client.dlq.count() == 6
    assert client.dlq.count(queue="default") == 5
    assert client.dlq.count(job_type="other") == 2
    assert client.dlq.count(queue="mail", job_type="fail") == 1
    assert [e.type for e in client.dlq.list(job_type="other")] == ["other", "other"]
    assert [e.queue for e in client.dlq.list(queue="mail")] == ["mail"]


def test_filter_by_reason(client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("fail", lambda job: bgjob.MoveToDlq("x", reason="payment-declined" if job.arg else "handler"))
    start_worker(client, mux)
    client.send_job("fail", 1)
    client.send_job("fail", 0)
    client.send_job("nobody-handles-this", None)
    wait_until(lambda: client.dlq.count() == 3, message="3 dead letters")
    assert client.dlq.count(reason="payment-declined") == 1
    assert [e.reason for e in client.dlq.list(reason="unknown_handler")] == ["unknown_handler"]
    assert client.dlq.purge(reason="handler") == 1
    assert sorted(e.reason for e in client.dlq.list()) == ["payment-declined", "unknown_handler"]
    with pytest.raises(bgjob.InvalidJob, match="invalid DLQ reason"):
        client.dlq.list(reason="has space")


def test_get_by_job_id_and_not_found(client, dead) -> None:
    [job_id] = dead(1)
    entry = client.dlq.get(job_id)
    assert entry.id == job_id and entry.error == "failed 0" and entry.reason == "handler"
    assert entry.headers["Bgjob-Type"] == "fail" and entry.enqueued_at is not None
    with pytest.raises(bgjob.DeadLetterNotFound, match="no dead letter"):
        client.dlq.get("nope")


def test_retry_re_enqueues_to_the_original_queue_and_removes_the_entry(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    fixed = False
    mux = bgjob.Mux()

    @mux.handler("fragile")
    def fragile(job: bgjob.Job) -> bgjob.Result:
        runs.put((job.id, job.arg, job.attempt, job.queue))
        return bgjob.Complete() if fixed else bgjob.MoveToDlq("not yet")

    start_worker(client, mux, queue="mail")
    job_id = client.send_job("fragile", {"a": 1}, queue="mail")
    assert drain(runs, 1) == [(job_id, {"a": 1}, 1, "mail")]
    first = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    fixed = True
    assert client.dlq.retry(job_id) == job_id
    assert drain(runs, 1) == [(job_id, {"a": 1}, 1, "mail")]
    assert client.dlq.count() == 0
    assert first.first_failure_at is not None


def test_failed_again_after_retry_keeps_the_first_failure_time(client, dead) -> None:
    [job_id] = dead(1)
    first = client.dlq.get(job_id)
    client.dlq.retry(job_id)
    again = wait_until(lambda: client.dlq.list(), message="dead letter again")[0]
    assert again.id == job_id and again.seq > first.seq
    assert again.first_failure_at == first.first_failure_at
    assert again.last_failure_at >= first.last_failure_at


def test_delete_and_purge(client, dead) -> None:
    ids = dead(4)
    dead(2, queue_name="mail")
    client.dlq.delete(ids[0])
    with pytest.raises(bgjob.DeadLetterNotFound):
        client.dlq.get(ids[0])
    assert client.dlq.count() == 5
    assert client.dlq.purge(queue="mail") == 2
    assert client.dlq.count() == 3
    assert client.dlq.purge() == 3
    assert client.dlq.list() == []


def test_newer_pages_with_after_and_counts_after_a_sequence(client, dead) -> None:
    dead(7)
    page1 = client.dlq.list(limit=3)
    page2 = client.dlq.list(limit=3, before=page1[-1].seq)
    assert client.dlq.list(limit=3, after=page2[0].seq) == page1
    assert [e.arg for e in client.dlq.list(limit=2, after=page2[0].seq)] == [5, 4]  # the next newer, newest first
    assert [e.arg for e in client.dlq.list(limit=3, after=0)] == [2, 1, 0]
    assert client.dlq.list(after=page1[0].seq) == []
    assert client.dlq.count(after=page2[0].seq) == 3 and client.dlq.count(after=page1[0].seq) == 0
    assert client.dlq.count(job_type="fail", after=page2[-1].seq - 1) == 6
    with pytest.raises(ValueError, match="after must be a DLQ sequence"):
        client.dlq.count(after=-1)


def test_purge_up_to_a_sequence_leaves_the_dead_letters_stored_after_it(client, dead) -> None:
    """A confirmed purge deletes what was confirmed: dead letters arriving after it stay (issue 15 item 6)."""
    dead(3)
    confirmed = client.dlq.last_seq()
    later = dead(2)
    assert client.dlq.purge(job_type="fail", up_to=confirmed) == 3
    assert sorted(e.id for e in client.dlq.list()) == sorted(later)
    assert client.dlq.purge(up_to=client.dlq.last_seq()) == 2 and client.dlq.count() == 0
    with pytest.raises(ValueError, match="up_to must be"):
        client.dlq.purge(up_to="5")  # type: ignore[arg-type]


def test_job_types_are_the_types_present_in_the_dlq(client, dead) -> None:
    """Unknown and task: types that failed are offered too, not only the types with handlers (item 4)."""
    assert client.dlq.job_types() == []
    dead(2)
    dead(1, job_type="other", queue_name="mail")
    client.send_job("task:reports.tasks.gone", {})
    client.send_job("nobody.handles-this", None)
    wait_until(lambda: client.dlq.count() == 5, message="5 dead letters")
    assert client.dlq.job_types() == ["fail", "nobody.handles-this", "other", "task:reports.tasks.gone"]
    assert client.dlq.job_types(queue="mail") == ["other"]
    assert client.dlq.reasons() == ["handler", "unknown_handler"] and client.dlq.reasons(queue="mail") == ["handler"]
    assert client.dlq.job_types(scan_limit=1) == [client.dlq.list(limit=1)[0].type]
    assert client.dlq.count(job_type="task:reports.tasks.gone") == 1


@pytest.mark.parametrize("raw_id", ["a/b", "<b>x</b>", "", "x" * 300, "has space", "dots.in.id"])
def test_a_job_sent_with_an_invalid_id_has_one_id_everywhere(client, dead, raw_id) -> None:
    """The dead letter is listed, found, retried and deleted under the id the worker ran it with (item 7)."""

    async def publish(core) -> None:
        await core.ensure_queue("default")
        await core.js.publish(core.topology.job_subject("default", "fail"), b"1", headers={"Bgjob-Id": raw_id})

    client.run(publish)
    [entry] = wait_until(lambda: client.dlq.list(), message="the dead letter")
    assert entry.id == f"seq-{entry.id.removeprefix('seq-')}" and entry.id.removeprefix("seq-").isdigit()
    assert client.dlq.get(entry.id) == entry
    assert client.dlq.list(limit=1)[0].id == entry.id
    assert client.dlq.retry(entry.id) == entry.id
    again = wait_until(lambda: client.dlq.list(), message="dead-lettered again")[0]
    assert again.id == entry.id and again.headers["Bgjob-Id"] == entry.id  # it keeps that id from then on
    client.dlq.delete(again.id)
    assert client.dlq.count() == 0


def test_a_message_bgjob_did_not_store_in_the_dlq_is_listed_found_and_deleted_by_its_sequence(client, dead) -> None:
    """Something else publishing to the DLQ's subjects breaks no listing: the message is shown under id
    dlq-seq-<seq>, can be deleted, and a retry is refused with a named error (nothing to send it back to)."""
    [real] = dead(1)

    async def publish(core) -> int:
        ack = await core.js.publish(f"{core.topology.prefix}.dlq.not-a-dead-letter", b"{}",
                                    headers={"Bgjob-Dlq-Attempts": "many"})  # fmt: skip
        return ack.seq

    seq = client.run(publish)
    entries = client.dlq.list()
    assert [e.id for e in entries] == [f"dlq-seq-{seq}", real]
    stray = client.dlq.get(f"dlq-seq-{seq}")
    assert stray.attempts == 0 and not stray.from_bgjob and client.dlq.get(real).from_bgjob
    with pytest.raises(bgjob.InvalidJob, match="cannot be retried"):
        client.dlq.retry(stray.id)
    client.dlq.delete(stray.id)
    assert [e.id for e in client.dlq.list()] == [real]


@pytest.mark.parametrize("delays", [(0.05, 0.05), (0.05, 1.5)], ids=["nak-retries", "nak-then-schedule"])
def test_first_failure_is_the_time_of_the_first_failed_attempt(client, start_worker, delays) -> None:
    """Not the time of dead-lettering (issue 15 item 8): the retry after the first failure carries it, whether
    later retries are naks or schedules."""
    from datetime import datetime, timezone

    started: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("flaky")
    def flaky(job: bgjob.Job) -> bgjob.Result:
        started.put(datetime.now(timezone.utc))
        raise RuntimeError(f"attempt {job.attempt} failed")

    retry = bgjob.RetryPolicy(max_attempts=3, base_delay=delays[0], multiplier=delays[1] / delays[0], jitter=0)
    start_worker(client, mux, retry_policy=retry)
    job_id = client.send_job("flaky", None)
    times = drain(started, 3, timeout=30)
    entry = wait_until(lambda: client.dlq.list(), message="the dead letter")[0]
    assert entry.id == job_id and entry.attempts == 3

    def ms(moment: datetime) -> datetime:  # stored times have millisecond precision
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    assert ms(times[0]) <= entry.first_failure_at <= times[1]
    assert entry.last_failure_at >= ms(times[2])


def test_retry_into_a_queue_that_does_not_exist_is_refused(client, dead) -> None:
    """A dead letter naming a queue with no stream (published there by hand) is not sent into a new stream no
    worker reads."""

    async def publish(core) -> int:
        await core.ensure_dlq()
        return (await core.js.publish(f"{core.topology.prefix}.dlq.nosuchqueue.handler.job-1.fail", b"{}")).seq

    client.run(publish)
    with pytest.raises(bgjob.InvalidJob, match="names queue 'nosuchqueue', which does not exist"):
        client.dlq.retry("job-1")
    assert client.dlq.get("job-1").queue == "nosuchqueue" and "nosuchqueue" not in client.queues()
    with pytest.raises(ValueError, match="after must be a DLQ sequence"):
        client.dlq.list(after=2**64)
