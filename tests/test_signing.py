"""Optional ed25519 job signing: unsigned or tampered jobs never reach a handler."""

from __future__ import annotations

import queue

import pytest

import bgjob
from bgjob.client import Core
from bgjob.signing import generate_keypair

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
