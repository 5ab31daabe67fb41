"""Issue 12, fault 2 under a paused server: every public function of Client and client.dlq, called while the server's
process is stopped (SIGSTOP), raises only bgjob errors, each within retry_for plus one request timeout (plus the
margin of tests/test_producer_faults.py). About 20 s: here rather than in the default run."""

from __future__ import annotations

import pytest

from ..test_producer_faults import assert_only_bgjob_errors_within_bound, client_of, paused

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_every_public_call_against_a_paused_server_raises_a_bgjob_error_within_its_bound(own_server, prefix) -> None:
    client = client_of(own_server, prefix, retry_for=0.5, request_timeout=0.5)
    client.send_job("warm-up", {}, store_result=True)
    client.dlq.count()
    with paused(own_server):
        outcomes = assert_only_bgjob_errors_within_bound(client)
    assert outcomes["send_job"] == "ConnectionError" and outcomes["send_jobs"] == "SendJobsError"
    client.close()
