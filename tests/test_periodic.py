"""Periodic jobs on server-native cron schedules."""

from __future__ import annotations

import queue
import threading

import pytest

import bgjob

from .conftest import drain


def test_schedule_fires_every_tick_with_its_arg_and_distinct_job_ids(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("tick", lambda job: runs.put((job.id, job.arg, job.queue)) or bgjob.Complete())
    start_worker(client, mux, queue="cron")
    assert client.schedule("every-second", "* * * * * *", "tick", {"a": 1}, queue="cron") is True
    got = drain(runs, 3, timeout=10)
    assert [(arg, q) for _, arg, q in got] == [({"a": 1}, "cron")] * 3
    ids = [job_id for job_id, _, _ in got]
    assert len(set(ids)) == 3 and all(i.startswith("every-second-") for i in ids)
    assert client.unschedule("every-second", queue="cron") is True
    assert client.schedules() == []


def test_declaring_the_same_schedule_again_changes_nothing(client) -> None:
    assert client.schedule("nightly", "0 3 * * *", "report", {"kind": "daily"}, tz="Europe/Berlin") is True
    assert client.schedule("nightly", "0 3 * * *", "report", {"kind": "daily"}, tz="Europe/Berlin") is False
    [periodic] = client.schedules()
    assert (periodic.name, periodic.queue, periodic.job_type, periodic.cron, periodic.tz, periodic.arg) == (
        "nightly", "default", "report", "0 3 * * *", "Europe/Berlin", {"kind": "daily"}
    )  # fmt: skip
    assert periodic.next_run().minute == 0
    assert client.schedule("nightly", "30 3 * * *", "report", {"kind": "daily"}, tz="Europe/Berlin") is True
    assert [p.cron for p in client.schedules()] == ["30 3 * * *"]
    assert client.queue_stats().scheduled == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cron": "every day"}, bgjob.InvalidSchedule, "invalid cron"),
        ({"tz": "Nowhere/City"}, bgjob.InvalidSchedule, "time zone"),
        ({"name": "has space"}, bgjob.InvalidSchedule, "schedule name"),
        ({"job_type": "a b"}, bgjob.InvalidJob, "job type"),
        ({"arg": {1, 2}}, bgjob.InvalidJob, "JSON"),
    ],
)
def test_bad_schedules_are_refused_and_store_nothing(client, kwargs, error, match) -> None:
    args = {"name": "n", "cron": "0 * * * *", "job_type": "report", "arg": None, "tz": "UTC", **kwargs}
    with pytest.raises(error, match=match):
        client.schedule(args.pop("name"), args.pop("cron"), args.pop("job_type"), args.pop("arg"), **args)
    assert client.schedules() == []


def test_unschedule_of_an_unknown_name_says_so(client) -> None:
    assert client.unschedule("nope") is False
    assert client.unschedule("nope", queue="never-used") is False
    assert "never-used" not in client.queues(), "looking for a schedule creates no queue"


def test_unschedule_finds_a_schedule_on_any_queue_and_it_stops_firing(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("tick", lambda job: runs.put(job.id) or bgjob.Complete())
    start_worker(client, mux, queue="u")
    assert client.schedule("t", "* * * * * *", "tick", {}, queue="u") is True
    drain(runs, 1, timeout=10)
    assert client.unschedule("t") is True
    assert client.schedules() == [] and client.queue_stats("u").scheduled == 0, "no schedule is left to fire"
    assert client.unschedule("t") is False


def test_unschedule_with_a_queue_looks_only_on_that_queue(client) -> None:
    client.schedule("t", "0 3 * * *", "tick", queue="u")
    assert client.unschedule("t", queue="default") is False
    assert [(p.name, p.queue) for p in client.schedules()] == [("t", "u")]
    assert client.unschedule("t", queue="u") is True
    assert client.schedules() == []


def test_a_schedule_name_declared_on_another_queue_is_refused_naming_that_queue(client) -> None:
    client.schedule("t", "0 3 * * *", "tick", {"v": 1}, queue="u")
    with pytest.raises(bgjob.InvalidSchedule, match="schedule 't' already exists on queue 'u'"):
        client.schedule("t", "0 3 * * *", "tick", {"v": 1})
    with pytest.raises(bgjob.InvalidSchedule, match="queue 'u'"):
        client.schedule("t", "0 4 * * *", "other", queue="v")
    assert [(p.name, p.queue, p.cron) for p in client.schedules()] == [("t", "u", "0 3 * * *")]
    assert client.unschedule("t") is True
    assert client.schedule("t", "0 3 * * *", "tick", {"v": 1}) is True, "moved once removed"


BASE = {"cron": "0 3 * * *", "job_type": "tick", "arg": {"v": 1}, "tz": "UTC", "headers": {"X-Tenant": "old"}}


@pytest.mark.parametrize(
    "change",
    [
        {"headers": None},  # a header left out
        {"headers": {}},
        {"headers": {"X-Tenant": "old", "X-Extra": "1"}},  # one added
        {"headers": {"X-Tenant": "new"}},
        {"headers": {"x-tenant": "old"}},  # header names as given
        {"arg": {"v": 1, "w": 2}},
        {"arg": None},
        {"arg": b"raw"},
        {"cron": "0 4 * * *"},
        {"tz": "Europe/Berlin"},
        {"job_type": "tock"},
    ],
)
def test_a_declaration_replaces_the_whole_schedule_and_compares_everything_stored(client, change) -> None:
    def declare(values: dict) -> bool:
        return client.schedule("s", values["cron"], values["job_type"], values["arg"], tz=values["tz"],
                               headers=values["headers"])  # fmt: skip

    wanted = {**BASE, **change}
    assert declare(BASE) is True
    assert declare(wanted) is True, "a difference in any part is a change"
    [stored] = client.schedules()
    assert (stored.cron, stored.job_type, stored.arg, stored.tz, dict(stored.headers)) == (
        wanted["cron"], wanted["job_type"], wanted["arg"], wanted["tz"], wanted["headers"] or {}
    )  # fmt: skip
    assert declare(wanted) is False, "the same declaration again changes nothing"
    assert declare(BASE) is True


def test_a_header_left_out_of_a_redeclaration_is_no_longer_sent(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("tick", lambda job: runs.put(dict(job.headers)) or bgjob.Complete())
    client.schedule("s", "* * * * * *", "tick", {"v": 1}, headers={"X-Tenant": "old"})
    assert client.schedule("s", "* * * * * *", "tick", {"v": 1}) is True
    start_worker(client, mux)
    assert "X-Tenant" not in drain(runs, 1, timeout=10)[0]
    client.unschedule("s")


def test_unschedule_of_a_revision_spares_a_schedule_declared_again_since(client) -> None:
    client.schedule("s", "0 3 * * *", "tick", headers={"X-Owner": "tool"})
    [seen] = client.schedules()
    assert client.schedule("s", "0 3 * * *", "tick") is True  # redeclared by hand in between
    assert client.unschedule("s", queue="default", revision=seen.revision) is False
    [now] = client.schedules()
    assert now.headers == {} and now.revision != seen.revision
    assert client.schedule("s", "0 3 * * *", "tick") is False, "firing or reading never changes the revision"
    assert client.unschedule("s", queue="default", revision=now.revision) is True
    with pytest.raises(bgjob.InvalidSchedule, match="needs the queue"):
        client.unschedule("s", revision=now.revision)


def test_concurrent_declarations_with_different_values_end_with_one_whole_declaration(make_client) -> None:
    clients = [make_client() for _ in range(4)]
    declarations = [({"n": i}, {f"X-From-{i}": str(i)} if i % 2 else None) for i in range(12)]
    barrier = threading.Barrier(len(declarations))
    errors: list[BaseException] = []

    def declare(i: int) -> None:
        arg, headers = declarations[i]
        barrier.wait()
        try:
            clients[i % len(clients)].schedule("s", "0 3 * * *", "tick", arg, headers=headers)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=declare, args=(i,)) for i in range(len(declarations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    [stored] = clients[0].schedules()
    winner = stored.arg["n"]
    assert dict(stored.headers) == (declarations[winner][1] or {}), "never a mix of two declarations"
    assert clients[0].schedule("s", "0 3 * * *", "tick", *declarations[winner][:1],
                               headers=declarations[winner][1]) is False  # fmt: skip


WORKER = r"""
import json, os, sys, bgjob
url, prefix, log = sys.argv[1:4]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix))
mux = bgjob.Mux()

@mux.handler("tick")
def tick(job):
    with open(log, "a") as f:
        f.write(json.dumps([job.id, job.enqueued_at.timestamp(), os.getpid()]) + "\n")
    return bgjob.Complete()

client.schedule("every-second", "* * * * * *", "tick")   # both processes declare it at start-up
bgjob.Worker(client, mux, concurrency=4).run()
"""


def test_two_worker_processes_run_each_tick_once(nats_server, prefix, tmp_path, make_client) -> None:
    import itertools
    import json
    import signal

    from .conftest import python_process, wait_until

    log = tmp_path / "ticks.jsonl"
    workers = [python_process(WORKER, nats_server.url, prefix, str(log)) for _ in range(2)]
    try:
        wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 5, timeout=30, message="5 ticks")
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            assert proc.wait(20) == 0
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    ids = [job_id for job_id, _, _ in runs]
    assert len(set(ids)) == len(ids), "a fired job ran twice"
    fired = sorted(at for _, at, _ in runs)
    gaps = [b - a for a, b in itertools.pairwise(fired)]
    assert all(gap > 0.5 for gap in gaps), f"two firings within one tick: {gaps}"
    assert len(make_client().schedules()) == 1


def test_listings_read_every_page_when_the_account_holds_hundreds_of_other_streams(own_server) -> None:
    """The server answers at most 256 streams a request: queues and schedules must come from every page."""
    import asyncio

    import nats

    async def fill() -> None:
        nc = await nats.connect(own_server.url)
        js = nc.jetstream()
        await asyncio.gather(*(js.add_stream(name=f"FOREIGN_{n}", subjects=[f"foreign.{n}.>"]) for n in range(300)))
        await nc.close()

    asyncio.run(fill())
    client = bgjob.Client(bgjob.Settings(url=own_server.url, prefix="paged")).connect()
    try:
        client.schedule("nightly", "0 3 * * *", "report", None, queue="late")
        client.send_job("report", None, queue="mail")
        assert client.queues() == ["late", "mail"]
        assert [(p.name, p.queue) for p in client.schedules()] == [("nightly", "late")]
    finally:
        client.close()
