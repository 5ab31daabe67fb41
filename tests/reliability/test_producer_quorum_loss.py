"""Issue 12, faults 2-4 under quorum loss: a 3-node cluster, replicas=3, two nodes SIGKILLed. A send_job with a job id
then meets err 10158 ("duplicate message id is in process") or no answer: it waits that out for retry_for and raises
bgjob.ConnectionError carrying the job id within retry_for plus one request timeout, never a raw nats-py APIError;
once the nodes are back, sending again with that id is the retry and the stream holds the job once."""

from __future__ import annotations

import time

import pytest

import bgjob

from ..conftest import stream_ids, wait_until
from ..test_producer_faults import MARGIN, timed
from .support import Cluster, full_run_only

pytestmark = [pytest.mark.reliability, pytest.mark.slow, full_run_only]


def test_send_job_without_quorum_raises_connection_error_with_the_job_id_and_resending_it_stores_it_once(
    cluster: Cluster, prefix: str
) -> None:
    client = bgjob.Client(bgjob.Settings(url=cluster.url, prefix=prefix, replicas=3, retry_for=3,
                                         request_timeout=1)).connect()  # fmt: skip
    try:
        client.send_job("work", {}, job_id="before")
        for node in cluster.nodes[1:]:
            node.kill()
        for n in range(3):
            _, error, seconds = timed(lambda n=n: client.send_job("work", {"n": n}, job_id=f"during-{n}"))
            assert isinstance(error, bgjob.ConnectionError), error
            assert error.job_id == f"during-{n}" and "may have been stored" in str(error)
            assert seconds <= 3 + 1 + MARGIN, f"send_job took {seconds:.2f}s"
        for node in cluster.nodes[1:]:
            node.start(timeout=30)
        start = time.monotonic()

        def resent() -> bool:
            try:
                return all(client.send_job("work", {"n": n}, job_id=f"during-{n}") for n in range(3))
            except bgjob.ConnectionError:
                return False

        wait_until(resent, timeout=60, message="the re-sends to be confirmed after quorum returned")
        ids = wait_until(lambda: stream_ids(client), timeout=10, message="the stream to be readable")
        assert sorted(ids) == ["before", "during-0", "during-1", "during-2"], ids
        print(f"re-sends confirmed {time.monotonic() - start:.1f}s after the nodes were started again")
    finally:
        client.close()
