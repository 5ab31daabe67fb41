"""Sending inside the database transaction: on_commit validates and reads the arg at the call and never loses a
job NATS refuses at commit (it goes to the outbox table); outbox=True writes the job with the data (issue 14)."""

from __future__ import annotations

import json
import logging

import django
import pytest
from django.db import connection, transaction

import bgjob
from bgjob.server import free_port
from bgjob_django import send_job, send_jobs
from bgjob_django.models import OutboxMessage

from ..conftest import wait_until
from .testapp.models import Marker

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


def stream_args(client: bgjob.Client, queue: str = "default") -> dict[str, object]:
    """Bgjob-Id -> arg of every ready job in the queue's stream."""
    import nats.js.errors

    async def read(core) -> dict[str, object]:
        stream, subject, found, seq = core.topology.queue_stream(queue), core.topology.job_filter(queue), {}, 1
        while True:
            try:
                msg = await core.js.get_msg(stream, seq=seq, next=True, subject=subject)
            except nats.js.errors.NotFoundError:
                return found
            found[msg.headers["Bgjob-Id"]] = json.loads(msg.data)
            seq = msg.seq + 1

    return client.run(read)


def outbox_ids() -> list[str]:
    return list(OutboxMessage.objects.order_by("id").values_list("job_id", flat=True))


@pytest.fixture
def unreachable(settings, bgjob_settings: dict) -> dict:
    """BGJOB pointed at a port nobody listens on: any NATS round trip would fail (after RETRY_FOR)."""
    settings.BGJOB = {**bgjob_settings, "URL": f"nats://127.0.0.1:{free_port()}", "RETRY_FOR": 1.0}
    return settings.BGJOB


def not_connected() -> bool:
    from bgjob_django import get_client

    client = get_client()
    return client._core is None and client._runtime is None


# -- on_commit: issue 14 items 1-3 -------------------------------------------------------------------------------
def test_on_commit_refuses_a_too_large_arg_at_the_call_and_the_rows_roll_back(bgjob_client) -> None:
    with pytest.raises(bgjob.InvalidJob, match="bytes"), transaction.atomic():
        Marker.objects.create(name="order")
        send_job("mark", "x" * 2_000_000, on_commit=True)
    assert not Marker.objects.exists() and not OutboxMessage.objects.exists()
    assert stream_args(bgjob_client) == {}


def test_on_commit_send_jobs_refuses_a_bad_job_at_the_call_naming_its_index(bgjob_client) -> None:
    with pytest.raises(bgjob.InvalidJob, match=r"job 1: .*nothing was sent"), transaction.atomic():
        Marker.objects.create(name="order")
        send_jobs([("mark", "a"), ("mark", "x" * 2_000_000)], on_commit=True)
    assert not Marker.objects.exists() and stream_args(bgjob_client) == {}


@pytest.mark.parametrize("later", [2, {1, 2}], ids=["changed", "unencodable"])
def test_on_commit_reads_the_arg_at_the_call(bgjob_client, later) -> None:
    arg = {"v": 1}
    with transaction.atomic():
        Marker.objects.create(name="order")
        job_id = send_job("mark", arg, on_commit=True)
        arg["v"] = later
    assert Marker.objects.count() == 1
    assert stream_args(bgjob_client) == {job_id: {"v": 1}}


def test_on_commit_with_nats_down_at_commit_commits_and_puts_the_job_in_the_outbox(
    settings, bgjob_settings, own_server, caplog
) -> None:
    from bgjob_django import get_client

    settings.BGJOB = {**bgjob_settings, "URL": own_server.url, "RETRY_FOR": 1.0}
    get_client().connect()
    with transaction.atomic():
        Marker.objects.create(name="order")
        job_id = send_job("mark", {"v": 1}, on_commit=True)
        own_server.stop()
    assert Marker.objects.count() == 1
    row = OutboxMessage.objects.get()
    assert (row.job_id, row.queue, row.failed_at, row.attempts) == (job_id, "default", None, 0)
    prepared = bgjob.PreparedJob.from_record(row.record)
    assert prepared.job_id == job_id and json.loads(prepared.body) == {"v": 1}
    assert any(r.levelno == logging.WARNING and job_id in r.getMessage() and "relay" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_on_commit_send_jobs_with_nats_unreachable_keeps_every_job_in_order(unreachable, caplog) -> None:
    with transaction.atomic():
        Marker.objects.create(name="order")
        ids = send_jobs([("mark", n) for n in range(5)], on_commit=True)
    assert Marker.objects.count() == 1
    assert outbox_ids() == ids
    assert any(r.levelno == logging.WARNING and ids[0] in r.getMessage() for r in caplog.records)


def test_on_commit_without_the_outbox_table_logs_the_job_ids_and_raises(unreachable, caplog) -> None:
    with connection.schema_editor() as editor:
        editor.delete_model(OutboxMessage)
    try:
        with pytest.raises(bgjob.ConnectionError), transaction.atomic():
            Marker.objects.create(name="order")
            job_id = send_job("mark", "a", on_commit=True)
        assert Marker.objects.count() == 1  # committed before the hook ran
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(OutboxMessage)
    assert any(r.levelno == logging.ERROR and job_id in r.getMessage() and "NOT sent" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_on_commit_outside_a_transaction_publishes_at_once(bgjob_client) -> None:
    job_id = send_job("mark", "now", on_commit=True)
    assert stream_args(bgjob_client) == {job_id: "now"}


# -- outbox=True ---------------------------------------------------------------------------------------------------
def test_outbox_writes_one_row_per_job_with_the_data_and_never_touches_nats(unreachable) -> None:
    with transaction.atomic():
        Marker.objects.create(name="order")
        first = send_job("mark", {"v": 1}, outbox=True, queue="mail")
        second = send_job("mark", {"v": 2}, outbox=True, delay=60)
        assert outbox_ids() == [first, second]  # visible inside the transaction
    assert not_connected()
    rows = list(OutboxMessage.objects.order_by("id"))
    assert [(r.job_id, r.queue) for r in rows] == [(first, "mail"), (second, "default")]
    jobs = [bgjob.PreparedJob.from_record(r.record) for r in rows]
    assert [json.loads(j.body) for j in jobs] == [{"v": 1}, {"v": 2}]
    assert jobs[0].headers["Nats-Msg-Id"] == first and jobs[1].due is not None


def test_outbox_refuses_a_bad_job_at_the_call_without_connecting(unreachable) -> None:
    with pytest.raises(bgjob.InvalidJob), transaction.atomic():
        Marker.objects.create(name="order")
        send_job("mark", "x" * 2_000_000, outbox=True)
    assert not Marker.objects.exists() and not OutboxMessage.objects.exists() and not_connected()


def test_outbox_rows_roll_back_with_an_exception(unreachable) -> None:
    with pytest.raises(Boom), transaction.atomic():
        Marker.objects.create(name="order")
        send_job("mark", "a", outbox=True)
        raise Boom
    assert not Marker.objects.exists() and not OutboxMessage.objects.exists()


def test_outbox_rows_roll_back_with_set_rollback(unreachable) -> None:
    with transaction.atomic():
        send_job("mark", "a", outbox=True)
        transaction.set_rollback(True)
    assert not OutboxMessage.objects.exists()


def test_outbox_rows_of_a_rolled_back_savepoint_go_while_the_outer_block_commits(unreachable) -> None:
    with transaction.atomic():
        kept = send_job("mark", "kept", outbox=True)
        with pytest.raises(Boom), transaction.atomic():
            send_job("mark", "dropped", outbox=True)
            raise Boom
    assert outbox_ids() == [kept]


def test_outbox_send_jobs_inserts_every_row_in_order(unreachable) -> None:
    with transaction.atomic():
        ids = send_jobs([("mark", n) for n in range(50)] + [bgjob.JobSpec("report", {"user": 1}, queue="mail")],
                        outbox=True)  # fmt: skip
    assert outbox_ids() == ids and len(set(ids)) == 51
    assert OutboxMessage.objects.get(job_id=ids[-1]).queue == "mail"
    assert not_connected()


def test_outbox_send_jobs_refuses_a_bad_job_and_writes_nothing(unreachable) -> None:
    with pytest.raises(bgjob.InvalidJob, match="job 2"):
        send_jobs([("mark", 1), ("mark", 2), ("bad type!", 3)], outbox=True)
    assert not OutboxMessage.objects.exists()


def test_outbox_outside_a_transaction_commits_at_once(unreachable) -> None:
    job_id = send_job("mark", "a", outbox=True)
    with transaction.atomic():
        transaction.set_rollback(True)
    assert outbox_ids() == [job_id]


def test_outbox_wins_over_on_commit(unreachable) -> None:
    with transaction.atomic():
        job_id = send_job("mark", "a", outbox=True, on_commit=True)
        assert outbox_ids() == [job_id]
    assert not_connected()


def test_the_job_carries_the_request_id_and_unique_for(unreachable) -> None:
    from bgjob_django.request_id import request_id_context

    with request_id_context("req-7"):
        job_id = send_job("mark", "a", outbox=True, job_id="order-7", unique_for=60)
    job = bgjob.PreparedJob.from_record(OutboxMessage.objects.get().record)
    assert job_id == "order-7" and job.unique_for == 60 and job.headers["Bgjob-Request-Id"] == "req-7"


# -- BGJOB["OUTBOX"] ----------------------------------------------------------------------------------------------
def test_bgjob_outbox_setting_makes_the_outbox_the_default(settings, unreachable) -> None:
    settings.BGJOB = {**unreachable, "OUTBOX": True}
    with transaction.atomic():
        first = send_job("mark", "a")
        more = send_jobs([("mark", "b")])
    assert outbox_ids() == [first, *more] and not_connected()
    with transaction.atomic():
        send_job("mark", "c")
        transaction.set_rollback(True)
    assert outbox_ids() == [first, *more]


@pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks exists from Django 6.0 on")
def test_a_task_enqueued_in_a_rolled_back_transaction_leaves_nothing(settings, unreachable) -> None:
    from .testapp import tasks

    settings.BGJOB = {**unreachable, "OUTBOX": True}
    with transaction.atomic():
        result = tasks.add.enqueue(2, 3)
        assert outbox_ids() == [result.id]
        transaction.set_rollback(True)
    assert not OutboxMessage.objects.exists() and not_connected()


@pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks exists from Django 6.0 on")
def test_a_task_enqueued_with_the_outbox_is_a_row_committed_with_the_data(settings, unreachable) -> None:
    from .testapp import tasks

    settings.BGJOB = {**unreachable, "OUTBOX": True}
    with transaction.atomic():
        Marker.objects.create(name="order")
        result = tasks.add.enqueue(2, 3)
    row = OutboxMessage.objects.get()
    assert row.job_id == result.id and row.queue == "default"
    assert json.loads(bgjob.PreparedJob.from_record(row.record).body)["args"] == [2, 3]


def test_outbox_rows_become_jobs_when_published_as_prepared(bgjob_client) -> None:
    """What the relay does with a row: publish_prepared of the record stores the job as it was at the call."""
    with transaction.atomic():
        job_id = send_job("mark", {"v": 1}, outbox=True)
    job = bgjob.PreparedJob.from_record(OutboxMessage.objects.get().record)
    assert bgjob_client.publish_prepared([job]) == [job_id]
    wait_until(lambda: stream_args(bgjob_client) == {job_id: {"v": 1}}, message="the job in the stream")


# -- routing: target= and partition_key= -------------------------------------------------------------------------
def routed(client: bgjob.Client) -> dict[str, tuple[str, str | None, str | None]]:
    """Bgjob-Id -> (subject, Bgjob-Target, Bgjob-Partition-Key) of every message in the default queue's stream."""
    import nats.js.errors

    async def read(core) -> dict[str, tuple[str, str | None, str | None]]:
        stream, found, seq = core.topology.queue_stream("default"), {}, 1
        while True:
            try:
                msg = await core.js.get_msg(stream, seq=seq, next=True)
            except nats.js.errors.NotFoundError:
                return found
            headers = msg.headers or {}
            found[headers["Bgjob-Id"]] = (msg.subject, headers.get("Bgjob-Target"), headers.get("Bgjob-Partition-Key"))
            seq = msg.seq + 1

    return client.run(read)


def test_target_and_partition_key_go_through_the_outbox_and_the_relay_unchanged(bgjob_client) -> None:
    from bgjob.topology import partition_of
    from bgjob_django.relay import Relay

    prefix = bgjob_client.settings.prefix
    with transaction.atomic():
        placed = send_job("mark", "p", outbox=True, target="region/eu")
        keyed = send_job("mark", "k", outbox=True, partition_key="customer-7")
        more = send_jobs([bgjob.JobSpec("mark", "s", target="primary"),
                          bgjob.JobSpec("mark", "t", partition_key="customer-8")], outbox=True)  # fmt: skip
    records = {row.job_id: bgjob.PreparedJob.from_record(row.record) for row in OutboxMessage.objects.all()}
    assert records[placed].headers["Bgjob-Target"] == "region/eu"
    assert records[keyed].headers["Bgjob-Partition-Key"] == "customer-7"
    assert Relay(bgjob_client).run_once() == 4 and not OutboxMessage.objects.exists()
    assert routed(bgjob_client) == {
        placed: (f"{prefix}.default.target.region/eu.mark", "region/eu", None),
        keyed: (f"{prefix}.default.part.{partition_of('customer-7')}.mark", None, "customer-7"),
        more[0]: (f"{prefix}.default.target.primary.mark", "primary", None),
        more[1]: (f"{prefix}.default.part.{partition_of('customer-8')}.mark", None, "customer-8"),
    }


def test_target_and_partition_key_direct_and_on_commit(bgjob_client) -> None:
    prefix = bgjob_client.settings.prefix
    direct = send_job("mark", "d", target="primary")
    with transaction.atomic():
        at_commit = send_job("mark", "c", on_commit=True, target="primary")
        assert at_commit not in routed(bgjob_client)
    wait_until(lambda: at_commit in routed(bgjob_client), message="the job published at commit")
    jobs = routed(bgjob_client)
    assert jobs[direct] == jobs[at_commit] == (f"{prefix}.default.target.primary.mark", "primary", None)


def test_target_timeout_goes_through_the_outbox_direct_and_on_commit(bgjob_client) -> None:
    from datetime import datetime, timedelta, timezone

    from bgjob.job import parse_time
    from bgjob_django.relay import Relay

    from ..test_placement_claims import waiting_placed

    before = datetime.now(timezone.utc)
    with transaction.atomic():
        boxed = send_job("mark", "o", outbox=True, target="primary", target_timeout=600)
        at_commit = send_job("mark", "c", on_commit=True, target="primary", target_timeout=timedelta(minutes=10))
    direct = send_job("mark", "d", target="primary", target_timeout=600.0)
    [row] = OutboxMessage.objects.all()
    until = bgjob.PreparedJob.from_record(row.record).headers["Bgjob-Target-Until"]
    assert Relay(bgjob_client).run_once() == 1
    placed = wait_until(lambda: len(found := waiting_placed(bgjob_client)) == 3 and found, message="3 placed jobs")
    assert placed[boxed]["Bgjob-Target-Until"] == until  # relayed as prepared: counted from the call
    for job_id in (boxed, at_commit, direct):
        moment = parse_time(placed[job_id]["Bgjob-Target-Until"])
        assert before + timedelta(seconds=599) <= moment <= datetime.now(timezone.utc) + timedelta(seconds=601)


@pytest.mark.parametrize("mode", [{"outbox": True}, {"on_commit": True}, {}])
def test_a_bad_target_or_partition_key_is_refused_at_the_call_without_connecting(unreachable, mode) -> None:
    bad = (
        ({"target": "a.b"}, "invalid claim"),
        ({"partition_key": ""}, "invalid partition_key"),
        ({"target": "primary", "partition_key": "k"}, "cannot have both a target and a partition_key"),
        ({"target": "primary", "target_timeout": 0}, "target_timeout must be more than 0 seconds"),
        ({"target_timeout": 60}, "target_timeout needs a target"),
    )
    for options, match in bad:
        with pytest.raises(bgjob.InvalidJob, match=match), transaction.atomic():
            Marker.objects.create(name="order")
            send_job("mark", "x", **options, **mode)
        with pytest.raises(bgjob.InvalidJob, match=f"job 1: .*{match}"), transaction.atomic():
            send_jobs([("mark", "ok"), bgjob.JobSpec("mark", "x", **options)], **mode)
    assert not Marker.objects.exists() and not OutboxMessage.objects.exists() and not_connected()
