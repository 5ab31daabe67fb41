"""The dead-letter admin against the data that actually reaches a DLQ (issue 15): ids that are not valid job ids,
types no handler knows, dead letters arriving while a purge is confirmed, times in a non-UTC zone, large
payloads; and the smaller admin behaviours (a gone dead letter, GET on retry, the purge's history entry,
redirects without a stray "?")."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from django.contrib.admin.models import DELETION, LogEntry

import bgjob
from bgjob_django import send_job

from ..conftest import wait_until

DLQ = "/admin/bgjob_django/deadletter/"


def job_ids(html: str) -> list[str]:
    return re.findall(r'data-job-id="([^"]+)"', html)


def publish_raw(client: bgjob.Client, job_type: str, body: bytes, headers: dict[str, str]) -> int:
    """A message published straight to the default queue, as any NATS client may; returns its stream sequence."""

    async def publish(core) -> int:
        await core.ensure_queue("default")
        return (await core.js.publish(core.topology.job_subject("default", job_type), body, headers=headers)).seq

    return client.run(publish)


@pytest.fixture
def worker(run_worker):
    group = run_worker(queues=("default",))
    yield group
    group.stop()
    group.join(30)


@pytest.mark.django_db
@pytest.mark.parametrize("raw_id", ["a/b", "<b>x</b>", "a b", "x" * 300])
def test_a_job_sent_with_an_invalid_id_is_one_dead_letter_everywhere(admin_client, bgjob_client, worker,
                                                                     raw_id) -> None:  # fmt: skip
    """Item 7: the list never 500s, and the id it shows is the one detail, search, retry and delete find."""
    seq = publish_raw(bgjob_client, "fail", b"{}", {"Bgjob-Id": raw_id})
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the dead letter")
    page = admin_client.get(DLQ)
    assert page.status_code == 200
    [shown] = job_ids(page.content.decode())
    assert shown == f"seq-{seq}"
    detail = admin_client.get(f"{DLQ}{shown}/change/").content.decode()
    assert "Sent with id" in detail and "<b>x</b>" not in detail  # the header value is shown escaped
    assert job_ids(admin_client.get(DLQ, {"q": shown}).content.decode()) == [shown]
    assert admin_client.post(f"{DLQ}{shown}/retry/").status_code == 302
    wait_until(lambda: [e.id for e in bgjob_client.dlq.list()] == [shown], message="dead-lettered again, same id")
    admin_client.post(f"{DLQ}{shown}/delete/", {"post": "yes"})
    assert bgjob_client.dlq.count() == 0


@pytest.mark.django_db
def test_a_message_bgjob_did_not_store_in_the_dlq_breaks_no_page(admin_client, bgjob_client) -> None:
    async def publish(core) -> int:
        await core.ensure_dlq()
        ack = await core.js.publish(f"{core.topology.prefix}.dlq.x", b"\xff", headers={"Bgjob-Dlq-Attempts": "?"})
        return ack.seq

    seq = bgjob_client.run(publish)
    assert job_ids(admin_client.get(DLQ).content.decode()) == [f"dlq-seq-{seq}"]
    assert admin_client.get(f"{DLQ}dlq-seq-{seq}/change/").status_code == 200
    refused = admin_client.post(f"{DLQ}dlq-seq-{seq}/retry/", follow=True).content.decode()
    assert "cannot be retried, only deleted" in refused and bgjob_client.dlq.count() == 1


@pytest.mark.django_db
def test_the_job_type_and_reason_filters_offer_what_is_in_the_dlq(admin_client, bgjob_client, worker) -> None:
    """Item 4: unknown types and task: types fail most; they can be picked, and filtered by in the URL."""
    send_job("fail", {})
    send_job("task:reports.tasks.gone", {})
    send_job("nobody.handles-this", {})
    wait_until(lambda: bgjob_client.dlq.count() == 3, message="3 dead letters")
    html = admin_client.get(DLQ).content.decode()
    types = re.search(r'data-filter-title="job type".*?</details>', html, re.S).group(0)
    for job_type in ("fail", "task:reports.tasks.gone", "nobody.handles-this"):
        assert f">{job_type}</a>" in types
    assert ">report</a>" not in types  # a handled type that never failed is not offered
    reasons = re.search(r'data-filter-title="reason".*?</details>', html, re.S).group(0)
    assert ">unknown_handler</a>" in reasons and ">handler</a>" in reasons and ">decode</a>" not in reasons
    filtered = admin_client.get(DLQ, {"type": "task:reports.tasks.gone"}).content.decode()
    assert "Ignored the invalid" not in filtered and len(job_ids(filtered)) == 1


@pytest.mark.django_db
def test_purge_deletes_what_was_confirmed_and_keeps_what_arrived_after(admin_client, bgjob_client, worker) -> None:
    """Item 6: 3 confirmed, 7 more arrive before the POST: 3 purged, 7 kept, and the message says so."""
    for _ in range(3):
        send_job("race-type", {})
    wait_until(lambda: bgjob_client.dlq.count() == 3, message="3 dead letters")
    page = admin_client.get(f"{DLQ}purge/", {"type": "race-type"}).content.decode()
    assert "Delete all 3 dead letters (job type race-type)?" in page
    up_to = re.search(r'name="up_to" value="(\d+)"', page).group(1)
    for _ in range(7):
        send_job("race-type", {})
    wait_until(lambda: bgjob_client.dlq.count() == 10, message="10 dead letters")
    done = admin_client.post(f"{DLQ}purge/", {"type": "race-type", "post": "yes", "up_to": up_to}, follow=True)
    text = done.content.decode()
    assert "Purged 3 dead letters (job type race-type). 7 dead letters that arrived after the confirmation page " \
        "was shown were kept." in text
    assert bgjob_client.dlq.count() == 7
    entry = LogEntry.objects.get(action_flag=DELETION)
    assert entry.object_repr == "Purge of 3 dead letters (job type race-type)" and entry.object_id is None
    unconfirmed = admin_client.post(f"{DLQ}purge/", {"type": "race-type", "post": "yes"}, follow=True)
    assert "was not confirmed" in unconfirmed.content.decode() and bgjob_client.dlq.count() == 7


@pytest.mark.django_db
@pytest.mark.parametrize("use_tz", [True, False], ids=["USE_TZ", "USE_TZ=False"])
def test_times_are_in_the_active_time_zone_and_say_so(admin_client, bgjob_client, worker, settings, use_tz) -> None:
    """Item 3: one convention, Django's time zone, labelled; Last failure with its year and zone. A project with
    USE_TZ = False too: its templates do not convert aware times, which were shown in UTC under a TIME_ZONE label."""
    settings.TIME_ZONE = "America/New_York"
    settings.USE_TZ = use_tz
    bgjob_client.schedule("nightly", "0 2 * * *", "report", {}, tz="UTC")
    [job_id] = [send_job("fail", {})]
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the dead letter")
    overview = admin_client.get("/admin/bgjob_django/queue/").content.decode()
    assert "Next run (America/New_York)" in overview and "(UTC)" not in overview
    next_run = re.search(r"<td>(\d{4}-\d\d-\d\d \d\d:\d\d [A-Z]{3})</td></tr>", overview).group(1)
    assert next_run.endswith(("EST", "EDT")) and next_run[11:13] in ("21", "22")  # 02:00 UTC
    detail = admin_client.get(f"{DLQ}{job_id}/change/").content.decode()
    year = datetime.now(timezone.utc).year
    assert "Times are in America/New_York." in detail
    listed = admin_client.get(DLQ).content.decode()
    assert re.search(r"<span>\d{4}-\d\d-\d\d</span> <span>\d\d:\d\d:\d\d E[SD]T</span>", listed)
    assert re.search(rf"<th scope=\"row\">First failure</th><td>(?:{year - 1}|{year})-\d\d-\d\d [\d:.]+ E[SD]T</td>",
                     detail)  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["json", "bytes"])
def test_a_large_payload_is_cut_by_one_rule_and_says_so(admin_client, bgjob_client, worker, kind) -> None:
    """Item 10: a 1 MB JSON payload was shown whole while bytes were cut; both are cut, saying how to see all."""
    arg = {"blob": "x" * 1_000_000} if kind == "json" else b"\x00" * 1_000_000
    job_id = send_job("fail", arg)
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the dead letter")
    html = admin_client.get(f"{DLQ}{job_id}/change/").content.decode()
    payload = re.search(r'id="bgjob-payload">(.*?)</pre>', html, re.S).group(1)
    assert 60_000 < len(payload) < 300_000
    assert f"manage.py bgjob_dlq show {job_id}" in html and 'id="bgjob-payload-cut"' in html


@pytest.mark.django_db
def test_redirects_have_no_stray_question_mark(admin_client, bgjob_client, worker) -> None:
    job_id = send_job("fail", {})
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the dead letter")
    response = admin_client.post(DLQ, {"action": "retry_selected", "_selected_action": [job_id]})
    assert response["Location"] == DLQ
    filtered = admin_client.post(DLQ + "?queue=default", {"action": "retry_selected", "_selected_action": ["gone"]})
    assert filtered["Location"] == DLQ + "?queue=default"
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the retried job dead-lettered again")
    oldest = bgjob_client.dlq.list()[-1].seq
    links = admin_client.get(DLQ, {"before": oldest}).content.decode()  # past the oldest: it links the newest
    for link in (f'href="{DLQ}purge/" class="deletelink"', f'href="{DLQ}erase/" class="deletelink"',
                 f'href="{DLQ}" id="bgjob-newest"'):  # fmt: skip
        assert link in links, link


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["²", "9" * 5000, "18446744073709551615", "99999999999999999999", "-1", "abc", ""])
def test_hostile_sequences_in_urls_and_forms_never_500(admin_client, bgjob_client, worker, value) -> None:
    """Attacker review: before/after/up_to and dlq-seq-<n> ids that look like numbers but are not sequences."""
    job_id = send_job("fail", {})
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the dead letter")
    for params in ({"before": value}, {"after": value}, {"after": value, "queue": "default"}):
        assert admin_client.get(DLQ, params).status_code == 200, params
    purge = admin_client.post(f"{DLQ}purge/", {"post": "yes", "up_to": value})
    assert purge.status_code == 302 and bgjob_client.dlq.count() == 1
    for view in ("change", "retry", "delete"):
        assert admin_client.get(f"{DLQ}dlq-seq-{value}/{view}/").status_code in (302, 404), view
    admin_client.post(DLQ, {"action": "retry_selected", "_selected_action": [f"dlq-seq-{value}"]})
    assert [e.id for e in bgjob_client.dlq.list()] == [job_id]


@pytest.mark.django_db
def test_a_purge_with_an_invalid_filter_purges_nothing(admin_client, bgjob_client, worker) -> None:
    """A tampered purge form must not widen to everything: it is refused."""
    send_job("fail", {})
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the dead letter")
    done = admin_client.post(f"{DLQ}purge/", {"post": "yes", "up_to": "1000", "type": "<x>"}, follow=True)
    assert "Nothing was purged" in done.content.decode() and bgjob_client.dlq.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("subject", ["default.<b>r</b>.<i>id</i>.<u>type</u>", "déf.händ.ïd.tÿpe",
                                     f"default.handler.{'x' * 300}.fail", "x"])  # fmt: skip
def test_dead_letters_under_subjects_bgjob_never_writes_are_shown_and_deletable(admin_client, bgjob_client,
                                                                                 subject) -> None:  # fmt: skip
    async def publish(core) -> int:
        await core.ensure_dlq()
        return (await core.js.publish(f"{core.topology.prefix}.dlq.{subject}", b"{}")).seq

    seq = bgjob_client.run(publish)
    html = admin_client.get(DLQ).content.decode()
    assert job_ids(html) == [f"dlq-seq-{seq}"] and "<b>r</b>" not in html and "<i>id</i>" not in html
    admin_client.post(DLQ, {"action": "delete_selected", "_selected_action": [f"dlq-seq-{seq}"], "post": "yes"})
    assert bgjob_client.dlq.count() == 0


@pytest.mark.django_db
def test_confirmations_keep_the_active_filters(admin_client, bgjob_client, worker) -> None:
    """New-user review: "Delete selected" and the purge's "No, take me back" returned to the unfiltered list."""
    job_id = send_job("fail", {})
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the dead letter")
    listed = DLQ + "?type=fail"
    confirm = admin_client.post(listed, {"action": "delete_selected", "_selected_action": [job_id]}).content.decode()
    assert 'action="/admin/bgjob_django/deadletter/?type=fail"' in confirm
    assert 'href="/admin/bgjob_django/deadletter/?type=fail" class="button cancel-link"' in confirm
    done = admin_client.post(listed, {"action": "delete_selected", "_selected_action": [job_id], "post": "yes"})
    assert done["Location"] == listed and bgjob_client.dlq.count() == 0
    purge = admin_client.get(f"{DLQ}purge/", {"reason": "handler"}).content.decode()
    assert 'href="/admin/bgjob_django/deadletter/?reason=handler" class="button cancel-link"' in purge


@pytest.mark.django_db
def test_a_dead_letter_whose_type_is_not_a_valid_type_is_found_by_its_id(admin_client, bgjob_client) -> None:
    """The worker dead-letters a raw message under its subject's type token as published (`é`, HTML): listed
    under its job id, shown escaped, found and deleted by that id."""

    async def publish(core) -> None:
        await core.ensure_dlq()
        await core.js.publish(f"{core.topology.prefix}.dlq.default.unknown_handler.job-9.<u>é</u>", b"{}")

    bgjob_client.run(publish)
    html = admin_client.get(DLQ).content.decode()
    assert job_ids(html) == ["job-9"] and "<u>é</u>" not in html and "&lt;u&gt;é&lt;/u&gt;" in html
    assert admin_client.get(f"{DLQ}job-9/change/").status_code == 200
    admin_client.post(f"{DLQ}job-9/delete/", {"post": "yes"})
    assert bgjob_client.dlq.count() == 0
