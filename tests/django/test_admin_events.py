"""The admin's "Find a job by id" box (bgjob.events, BGJOB["EVENTS"]) against a real nats-server."""

from __future__ import annotations

import re

import pytest

from bgjob.events import JobState
from bgjob.redaction import MASK

from ..conftest import wait_until

OVERVIEW = "/admin/bgjob_django/queue/"


@pytest.mark.django_db
def test_find_a_job_by_id_shows_its_state_and_events_escaped_and_masked(admin_client, settings, bgjob_settings,
                                                                         run_worker) -> None:  # fmt: skip
    settings.BGJOB = {**bgjob_settings, "EVENTS": True, "MAX_ATTEMPTS": 1}
    from bgjob_django import get_client

    client = get_client()
    assert client.settings.events
    run_worker()
    secret = "s3cret-<b>pass</b>-value"
    job_id = client.send_job("fail", {"password": secret, "msg": "<script>alert(1)</script>"}, sensitive=["password"])
    wait_until(lambda: client.job_status(job_id).state is JobState.DEAD_LETTERED, message="dead-lettered")

    html = admin_client.get(OVERVIEW, {"job": job_id}).content.decode()
    state = re.search(r'<p data-job="state">(.*?)</p>', html, re.S).group(1)
    assert f"<code>{job_id}</code>: <strong>dead_lettered</strong>" in state and "attempt 1" in state
    assert re.findall(r'<tr data-event="([a-z_]+)">', html) == ["enqueued", "started", "dead_lettered"]
    assert secret not in html and "s3cret" not in html and "<script>alert" not in html
    row = re.search(r'<tr data-event="dead_lettered">(.*?)</tr>', html, re.S).group(1)
    assert "<td>max_attempts</td>" in row or "<td>handler</td>" in row
    link = re.search(r'<a href="([^"]+)" id="bgjob-job-dead-letter">', html).group(1)  # where to retry it
    assert link == f"/admin/bgjob_django/deadletter/{job_id}/change/" and admin_client.get(link).status_code == 200

    unknown = admin_client.get(OVERVIEW, {"job": "no-such-job"}).content.decode()
    assert "<strong>unknown</strong>" in unknown and "data-event" not in unknown
    bad = admin_client.get(OVERVIEW, {"job": "<img src=x>"}).content.decode()
    assert 'data-job="error"' in bad and "<img src=x>" not in bad
    assert MASK not in unknown


@pytest.mark.django_db
def test_the_box_says_when_events_are_off(admin_client) -> None:
    html = admin_client.get(OVERVIEW, {"job": "abc"}).content.decode()
    assert "<strong>unknown</strong>" in html and 'BGJOB["EVENTS"] is off here' in html


@pytest.mark.django_db
def test_manage_bgjob_events_mirrors_bgjob_events(settings, bgjob_settings) -> None:
    import io

    from django.core.management import call_command

    settings.BGJOB = {**bgjob_settings, "EVENTS": True}
    from bgjob_django import get_client

    job_id = get_client().send_job("report", {"user": 1}, queue="mail")
    wait_until(lambda: get_client().job_status(job_id).state is JobState.READY, message="the event")
    out = io.StringIO()
    call_command("bgjob_events", "--queue", "mail", stdout=out)
    assert [line.split()[2:6] for line in out.getvalue().splitlines()] == [["enqueued", "mail", "report", job_id]]
    out = io.StringIO()
    call_command("bgjob_events", "--status", job_id, stdout=out)
    assert out.getvalue().startswith(f"job {job_id}: ready (attempt 0, last event enqueued at ")
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="job nope: unknown") as info:
        call_command("bgjob_events", "--status", "nope", stdout=io.StringIO())
    assert info.value.returncode == 1


def test_events_settings_are_checked() -> None:
    from bgjob_django import conf

    problems = conf.problems({"EVENTS": "yes", "EVENTS_MAX_AGE": "3d"})
    assert [p.msg for p in problems] == ["BGJOB['EVENTS'] is invalid: events must be True or False, not 'yes'",
                                         "BGJOB['EVENTS_MAX_AGE'] is invalid: events_max_age must be seconds > 0, "
                                         "not '3d'"]  # fmt: skip
    assert "86400 for a day" in problems[1].hint
    assert conf.problems({"EVENTS": True, "EVENTS_MAX_AGE": 86400}) == []
