"""Optional ed25519 job signing: unsigned or tampered jobs never reach a handler."""

from __future__ import annotations

import queue

import pytest

import bgjob
from bgjob.client import Core
from bgjob.signing import generate_keypair
from bgjob.topology import PARTITIONS, partition_of

from .conftest import drain, wait_until

pytest.importorskip("nacl")


@pytest.fixture
def keys() -> tuple[str, str]:
    return generate_keypair()


def test_signed_jobs_run_and_unsigned_or_tampered_ones_are_dead_lettered(make_client, start_worker, keys) -> None:
    signing_key, verify_key = keys
    producer = make_client(signing_key=signing_key)
    stranger = make_client(signing_key=generate_keypair()[0])
    unsigned = make_client()
    worker_client = make_client(verify_keys=(verify_key,), signing_key=signing_key)
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("pay", lambda job: ran.put(job.arg) or bgjob.Complete())
    start_worker(worker_client, mux)

    producer.send_job("pay", {"amount": 1})
    unsigned_id = unsigned.send_job("pay", {"amount": 2})
    stranger_id = stranger.send_job("pay", {"amount": 3})

    async def tamper(core: Core) -> str:
        # A valid signature moved onto another body, published straight onto the job subject.
        subject, _, headers, job_id = bgjob.client.prepare_job(producer.settings, "pay", {"amount": 4})
        await core.js.publish(subject, b'{"amount":4000}', headers=headers)
        return job_id

    tampered_id = producer.run(tamper)
    assert drain(ran, 1) == [{"amount": 1}]
    wait_until(lambda: worker_client.dlq.count(reason="signature") == 3, message="three refused jobs")
    refused = {e.id: e.error for e in worker_client.dlq.list(reason="signature")}
    assert set(refused) == {unsigned_id, stranger_id, tampered_id}
    assert "not signed" in refused[unsigned_id]
    assert "does not verify" in refused[stranger_id] and "does not verify" in refused[tampered_id]
    assert ran.empty()


def test_rescheduled_jobs_are_signed_again_by_the_worker(make_client, start_worker, keys) -> None:
    signing_key, verify_key = keys
    client = make_client(signing_key=signing_key, verify_keys=(verify_key,))
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("count")
    def count(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.arg)
        return bgjob.Reschedule(bgjob.ByAfterTime(0.05), arg=job.arg + 1) if job.arg < 2 else bgjob.Complete()

    start_worker(client, mux)
    client.send_job("count", 0)
    assert drain(runs, 3) == [0, 1, 2]
    assert client.dlq.count() == 0


def test_bad_keys_are_refused_clearly() -> None:
    with pytest.raises(bgjob.BgjobError, match="32 bytes"):
        bgjob.signing.Signer("c2hvcnQ=")


@pytest.fixture
def routed(make_client, start_worker, keys) -> tuple[bgjob.Client, bgjob.Client, queue.Queue]:
    """(a signing producer, a verifying worker's client, what the worker ran): the worker holds claims
    "primary" and "other" and runs "pay" (placed) and "ordered" (partitioned) jobs."""
    signing_key, verify_key = keys
    producer, worker_client = make_client(signing_key=signing_key), make_client(verify_keys=(verify_key,))
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("pay", lambda job: ran.put(job.arg) or bgjob.Complete())
    mux.handle("ordered", lambda job: ran.put(job.arg) or bgjob.Complete(), partitioned=True)
    start_worker(worker_client, mux, claims=["primary", "other"])
    return producer, worker_client, ran


def publish_signed(producer: bgjob.Client, job_type: str, arg: object, *, subject: str | None = None,
                   change: dict[str, str | None] | None = None, **options: str) -> str:  # fmt: skip
    """Publish a job signed by `producer` as a holder of the stream could: its headers changed by `change` (None:
    removed) after signing, on `subject` (default: where its headers route it). Returns its id."""
    _, body, headers, job_id = bgjob.client.prepare_job(producer.settings, job_type, arg, **options)
    for name, value in (change or {}).items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    headers["Nats-Msg-Id"] = job_id
    where = subject or producer._ensure()[1].topology.ready_subject("default", job_type, headers)

    async def publish(core: Core) -> None:
        await core.js.publish(where, body, headers=headers)

    producer.run(publish)
    return job_id


def test_a_placed_or_partitioned_job_re_routed_in_the_stream_fails_verification(routed) -> None:
    """The signature covers Bgjob-Target and Bgjob-Partition-Key: a holder of the stream who moves a signed job to
    another claim or key (or strips or adds either header) gets it dead-lettered, never run."""
    producer, worker_client, ran = routed
    producer.send_job("pay", "honest", target="primary")
    producer.send_job("ordered", "honest-key", partition_key="k1")
    assert sorted(drain(ran, 2)) == ["honest", "honest-key"]
    tampered = {
        publish_signed(producer, "pay", "moved", change={"Bgjob-Target": "other"}, target="primary"),
        publish_signed(producer, "pay", "stripped", change={"Bgjob-Target": None}, target="primary"),
        publish_signed(producer, "pay", "added", change={"Bgjob-Target": "other"}),
        publish_signed(producer, "ordered", "rekeyed", change={"Bgjob-Partition-Key": "k2"}, partition_key="k1"),
        publish_signed(producer, "ordered", "unkeyed", change={"Bgjob-Partition-Key": None}, partition_key="k1"),
    }
    wait_until(lambda: worker_client.dlq.count(reason="signature") == len(tampered), message="re-routed jobs refused")
    refused = {e.id: e.error for e in worker_client.dlq.list(reason="signature")}
    assert set(refused) == tampered
    assert all("does not verify" in error for error in refused.values()), refused
    assert ran.empty()


def test_a_signed_job_published_again_on_another_route_with_its_headers_untouched_is_refused(routed) -> None:
    """The subject is not signed: a holder of the stream who publishes a signed placed or partitioned job again,
    signature and headers untouched, on another claim's or partition's subject or on `job.<type>` (where any
    worker would run it) gets it dead-lettered (reason signature), never run."""
    producer, worker_client, ran = routed
    topology = producer._ensure()[1].topology
    key = "k1"
    other_partition = (partition_of(key) + 1) % PARTITIONS
    moved = {
        publish_signed(producer, "pay", "other claim", subject=topology.target_subject("default", "other", "pay"),
                       target="primary"),
        publish_signed(producer, "pay", "main subject", subject=topology.job_subject("default", "pay"),
                       target="primary"),
        publish_signed(producer, "ordered", "other partition", partition_key=key,
                       subject=topology.partition_subject("default", other_partition, "ordered")),
        publish_signed(producer, "ordered", "main subject", subject=topology.job_subject("default", "ordered"),
                       partition_key=key),
    }  # fmt: skip
    honest = publish_signed(producer, "pay", "honest", subject=topology.target_subject("default", "primary", "pay"),
                            target="primary")  # fmt: skip
    assert drain(ran, 1) == ["honest"]
    wait_until(lambda: worker_client.dlq.count(reason="signature") == len(moved), message="moved jobs refused")
    refused = {e.id: e.error for e in worker_client.dlq.list(reason="signature")}
    assert set(refused) == moved and honest not in refused
    assert all("but its signed headers route it to" in error for error in refused.values()), refused
    assert ran.empty()


def test_a_signature_made_before_targets_were_covered_still_verifies(keys) -> None:
    """A job without Bgjob-Target or Bgjob-Partition-Key is signed and verified as bgjob-v1, exactly as before."""
    import base64

    import nacl.signing

    signing_key, verify_key = keys
    headers = {"Bgjob-Id": "j1", "Bgjob-Type": "pay", "Content-Type": "application/json"}
    key = nacl.signing.SigningKey(base64.urlsafe_b64decode(signing_key))
    old = key.sign(b"bgjob-v1\ndefault\nj1\npay\napplication/json\n" + b'{"amount":1}').signature
    verifier = bgjob.signing.Verifier([verify_key])
    assert verifier.check("default", {**headers, "Bgjob-Signature": base64.urlsafe_b64encode(old).decode()},
                          b'{"amount":1}') is None  # fmt: skip
    signed = dict(headers)
    bgjob.signing.Signer(signing_key).sign("default", signed, b'{"amount":1}')
    assert signed["Bgjob-Signature"] == base64.urlsafe_b64encode(old).decode()  # ed25519 is deterministic
    # with a target, the v1 signature no longer does
    assert "does not verify" in verifier.check("default", {**signed, "Bgjob-Target": "primary"}, b'{"amount":1}')
