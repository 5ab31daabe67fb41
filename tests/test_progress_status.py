"""A job's latest progress (job.report_progress, bgjob.long_running) in client.job_status, client.result and
`bgjob job ID [--json]`, read with a real worker on a real nats-server; its sensitive keys masked where shown."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import bgjob
from bgjob import long_running
from bgjob.cli import job_status_dict, job_status_lines, progress_text
from bgjob.events import JobState
from bgjob.job_results import ResultStatus, result_key
from bgjob.redaction import MASK
from bgjob.topology import PROGRESS_BUCKET

from .conftest import wait_until
from .test_events import bgjob_cli

CARD = "4111111111111111"


def _stepper() -> bgjob.Mux:
    """A handler reporting 300 of 1000 (with the job's card in its progress), waiting for "finish", then 1000."""
    mux = bgjob.Mux()

    @mux.handler("import")
    def import_rows(job: bgjob.Job) -> bgjob.Result:
        job.report_progress({"done": 300, "total": 1000, "card": job.arg["card"]})
        job.wait_for_signal("finish", 60)
        job.report_progress({"done": 1000, "total": 1000})
        return bgjob.Complete("imported")

    return mux


def test_job_status_and_result_carry_the_latest_progress_while_running_and_after(
    make_client, start_worker, nats_server, prefix
) -> None:
    worker_client, client = make_client(events=True), make_client(events=True)
    before = client.job_status("nosuchjob")  # no progress bucket yet: the status call still answers
    assert before.state is JobState.UNKNOWN and before.progress is None and before.progress_at is None
    start_worker(worker_client, _stepper())
    sent_at = datetime.now(timezone.utc)
    job_id = client.send_job("import", {"card": CARD}, sensitive=["card"], store_result=True)

    running = wait_until(lambda: (s := client.job_status(job_id)).progress is not None and s, message="progress")
    assert running.state is JobState.RUNNING and running.attempt == 1
    assert running.progress == {"done": 300, "total": 1000, "card": CARD}  # the handler's own data, unmasked
    assert running.progress_sensitive == {"card"}
    assert running.masked_progress == {"done": 300, "total": 1000, "card": MASK}
    assert sent_at - timedelta(seconds=5) < running.progress_at < datetime.now(timezone.utc) + timedelta(seconds=5)
    result = client.result(job_id)
    assert result.status is ResultStatus.RUNNING and result.progress == running.progress
    assert result.progress_at == running.progress_at

    lines = job_status_lines(client, job_id)  # `bgjob job ID`: readable, masked
    assert lines[1] == f"  progress 300 / 1000 (30%) {{\"done\": 300, \"total\": 1000, \"card\": \"{MASK}\"}} (at " \
                       f"{running.progress_at.isoformat()})"  # fmt: skip
    assert CARD not in "\n".join(lines)
    out = bgjob_cli(nats_server, prefix, "job", job_id, "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout[out.stdout.index("{") :])
    assert shown["state"] == "running" and shown["progress"] == {"done": 300, "total": 1000, "card": MASK}
    assert shown["progress_at"] == running.progress_at.isoformat() and CARD not in out.stdout
    assert [e["kind"] for e in shown["events"]] == ["enqueued", "started"]

    client.send_signal(job_id, "finish")
    assert client.result(job_id, wait=60).value == "imported"
    done = wait_until(lambda: (s := client.job_status(job_id)).state is JobState.SUCCEEDED and s, message="done")
    assert done.progress == {"done": 1000, "total": 1000}  # the last report, kept progress_ttl after the end
    assert done.progress_sensitive == {"card"} and done.progress_at >= running.progress_at
    assert client.result(job_id).progress == {"done": 1000, "total": 1000}
    assert job_status_lines(client, job_id)[1].startswith("  progress 1000 / 1000 (100%) (at ")


def test_a_job_without_progress_and_a_stored_value_bgjob_did_not_write(client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("quiet", lambda job: bgjob.Complete(1))
    start_worker(client, mux)
    job_id = client.send_job("quiet", None, store_result=True)
    result = client.result(job_id, wait=60)
    assert result.value == 1 and result.progress is None and result.progress_at is None
    assert client.job_status(job_id).progress is None
    assert job_status_dict(client, job_id)["progress"] is None

    # Not JSON (or nested past the parser's depth) under a job's key: bytes, never an exception.
    for raw in (b"j{not json", b"j" + b"[" * 100_000):
        client.run(long_running.put, PROGRESS_BUCKET, result_key("odd"), raw)
        status = client.job_status("odd")
        assert status.progress == raw and client.progress("odd") == raw
        assert progress_text(status.progress) == f"<{len(raw)} bytes>"
        assert job_status_dict(client, "odd")["progress"] == {"bytes": len(raw)}


def test_progress_text_is_readable_and_bounded() -> None:
    assert progress_text({"done": 300, "total": 1000}) == "300 / 1000 (30%)"
    assert progress_text({"done": 999, "total": 1000}) == "999 / 1000 (99%)"  # never 100% before the end
    assert progress_text({"done": 2.5, "total": 10.0}) == "2.5 / 10 (25%)"
    assert progress_text({"done": 1, "total": 0}) == '{"done": 1, "total": 0}'
    assert progress_text({"done": True, "total": 2}) == '{"done": true, "total": 2}'
    assert progress_text({"done": float("nan"), "total": 2}) == '{"done": NaN, "total": 2}'
    assert progress_text(b"\xff\xfe") == "<2 bytes>"
    assert progress_text("\x1b[31mred\ud800") == '"\\u001b[31mred\\ud800"'  # JSON escapes; a lone surrogate too
    assert progress_text("\x9b2J") == '"\\x9b2J"'  # a C1 control character a terminal would act on
    assert len(progress_text({"rows": list(range(10_000))})) == 200
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    assert progress_text(nested) == "<progress nested too deeply to show>"


def test_a_job_with_progress_and_no_events_kept_is_shown_with_it_exit_0(client, start_worker, nats_server,
                                                                         prefix) -> None:  # fmt: skip
    mux = bgjob.Mux()

    @mux.handler("count")
    def count(job: bgjob.Job) -> bgjob.Result:
        job.report_progress({"done": 5, "total": 5})
        return bgjob.Complete()

    start_worker(client, mux)  # Settings.events off: no lifecycle event of the job is kept
    job_id = client.send_job("count", None, store_result=True)
    client.result(job_id, wait=60)
    lines = job_status_lines(client, job_id)
    assert lines[0] == f"job {job_id}: no lifecycle events kept (Settings.events is off, or they expired); " \
                       "progress below"  # fmt: skip
    assert lines[1].startswith("  progress 5 / 5 (100%) (at ")
    out = bgjob_cli(nats_server, prefix, "job", job_id)
    assert out.returncode == 0 and "progress below" in out.stdout, out.stdout + out.stderr
    nothing = bgjob_cli(nats_server, prefix, "job", "nosuchjob")
    assert nothing.returncode == 1 and "unknown: no event of it is kept" in nothing.stdout
