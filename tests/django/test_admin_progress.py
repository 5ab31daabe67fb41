"""The admin's "Find a job by id" box shows the job's latest progress (job.report_progress): readable, masked
without view_deadletter_payload, and never broken by a hostile stored value; `manage.py bgjob_events --status`
prints it. Against a real nats-server and a real worker."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.management import call_command

import bgjob
from bgjob import long_running
from bgjob.events import JobState
from bgjob.headers import SENSITIVE_KEYS
from bgjob.job_results import result_key
from bgjob.redaction import MASK
from bgjob.topology import PROGRESS_BUCKET
from bgjob_django import admin_views
from bgjob_django.registry import Registry

from ..conftest import wait_until
from .test_admin import staff

OVERVIEW = "/admin/bgjob_django/queue/"
CARD, TOKEN = "4111111111111111", "tok-SECRET-123"


def progress_of(html: str) -> str | None:
    """The box's progress paragraph, or None when it shows none."""
    found = re.search(r'<p data-job="progress">(.*?)</p>', html, re.S)
    return found.group(1) if found else None


@pytest.mark.django_db
def test_the_box_shows_a_running_jobs_progress_readably_and_masked(admin_client, django_user_model, settings,
                                                                    bgjob_settings, run_worker,
                                                                    monkeypatch) -> None:  # fmt: skip
    settings.BGJOB = {**bgjob_settings, "EVENTS": True}
    from bgjob_django import get_client

    client = get_client()
    mux = Registry()  # the project's registry for this test: its handler marks `token` sensitive

    def importer(job: bgjob.Job) -> bgjob.Result:
        job.report_progress({"done": 300, "total": 1000, "card": job.arg["card"], "token": TOKEN})
        job.wait_for_signal("finish", 60)
        return bgjob.Complete()

    mux.handle("import", importer, sensitive=["token"])
    monkeypatch.setattr(admin_views, "registry", mux)
    run_worker(mux=mux)
    job_id = client.send_job("import", {"card": CARD}, sensitive=["card"])  # `card` marked by the producer
    wait_until(lambda: client.job_status(job_id).progress is not None, message="the job's progress")

    viewer = staff(django_user_model, "view_queue")
    html = viewer.get(OVERVIEW, {"job": job_id}).content.decode()
    shown = progress_of(html)
    assert '<progress value="300" max="1000"></progress>' in shown and "300 / 1000 (30%)" in shown
    assert "reported at" in shown and CARD not in html and TOKEN not in html
    assert f"&quot;card&quot;: &quot;{MASK}&quot;" in shown and f"&quot;token&quot;: &quot;{MASK}&quot;" in shown
    assert "<strong>running</strong>" in html

    unmasked = progress_of(admin_client.get(OVERVIEW, {"job": job_id}).content.decode())  # a superuser
    assert CARD in unmasked and TOKEN in unmasked  # as a dead letter's arg: view_deadletter_payload unmasks

    out = io.StringIO()
    call_command("bgjob_events", "--status", job_id, stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"job {job_id}: running (attempt 1") and lines[1].startswith("  progress 300 / 1000")
    assert CARD not in out.getvalue() and TOKEN not in out.getvalue() and MASK in lines[1]
    out = io.StringIO()
    call_command("bgjob_events", "--status", job_id, "--json", stdout=out)
    found = json.loads(out.getvalue())
    assert found["state"] == "running" and found["progress"]["done"] == 300 and found["progress"]["card"] == MASK
    assert found["progress_at"] and [e["kind"] for e in found["events"]] == ["enqueued", "started"]

    client.send_signal(job_id, "finish")
    wait_until(lambda: client.job_status(job_id).state is JobState.SUCCEEDED, message="success")
    after = progress_of(viewer.get(OVERVIEW, {"job": job_id}).content.decode())
    assert "300 / 1000 (30%)" in after  # the last report, kept progress_ttl after the job ended


def _store(client: bgjob.Client, job_id: str, raw: bytes, headers: dict[str, str] | None = None) -> None:
    """`raw` as job `job_id`'s stored progress (a tag byte, then JSON or bytes), as any writer could store it."""
    client.run(long_running.put, PROGRESS_BUCKET, result_key(job_id), raw, headers)


@pytest.mark.django_db
def test_hostile_progress_never_breaks_the_box(admin_client, django_user_model, bgjob_client) -> None:
    viewer = staff(django_user_model, "view_queue")
    nested = b"j" + b"[" * 900 + b"]" * 900  # parses; too deep to show or mask inside a page render, perhaps
    cases = {
        "html": (b'j{"msg": "<script>alert(1)</script>", "done": "<b>1</b>", "total": 2}', None),
        "huge": (b'j{"done": 5, "total": 10, "rows": "' + b"x" * 900_000 + b'"}', None),
        "deep": (nested, {SENSITIVE_KEYS: "card"}),
        "unparsed": (b"j" + b"[" * 100_000, None),
        "raw-bytes": (b"b\xff\xfe\x00<script>", None),
        "not-utf8-json": (b'j"\xff\xfe"', None),
        "surrogate": (b'j{"name": "\\ud800<i>"}', None),
        "overflow": (b'j{"done": 1e308, "total": 1e-308}', None),
        "odd-header": (b'j{"card": "' + CARD.encode() + b'"}', {SENSITIVE_KEYS: "card,,<b>x</b>"}),
    }
    for job_id, (raw, headers) in cases.items():
        _store(bgjob_client, job_id, raw, headers)
        for user in (viewer, admin_client):
            response = user.get(OVERVIEW, {"job": job_id})
            assert response.status_code == 200, job_id
            shown = progress_of(response.content.decode())
            assert shown is not None and len(shown) < 1500, job_id
            assert "<script>" not in shown and "<b>" not in shown and "<i>" not in shown, job_id
        if job_id == "html":
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown and "<progress" not in shown
        elif job_id == "huge":
            assert "5 / 10 (50%)" in shown and "…" in shown
        elif job_id == "raw-bytes":
            assert f"&lt;{len(raw) - 1} bytes&gt;" in shown  # a bytes value: its size (after the tag)
        elif job_id in ("unparsed", "not-utf8-json"):
            assert f"&lt;{len(raw)} bytes&gt;" in shown  # what does not decode: the stored bytes' size
        elif job_id == "surrogate":
            assert "\\ud800&lt;i&gt;" in shown
        elif job_id == "overflow":
            assert "<progress" not in shown and "1e+308" in shown
    masked = progress_of(viewer.get(OVERVIEW, {"job": "odd-header"}).content.decode())
    assert CARD not in masked and MASK in masked
    deep = progress_of(viewer.get(OVERVIEW, {"job": "deep"}).content.decode())
    assert "[[[[" in deep or "nested too deeply" in deep
