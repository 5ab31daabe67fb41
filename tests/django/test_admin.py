"""The admin pages: dead letters (list, filters, search, paging, detail, retry, delete, purge) and the queues
overview, with their permissions and CSRF, against a real nats-server."""

from __future__ import annotations

import json
import re
import time

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import Client

from bgjob_django import send_job

from ..conftest import wait_until

DLQ = "/admin/bgjob_django/deadletter/"


def staff(django_user_model, *perms: str) -> Client:
    user = django_user_model.objects.create_user(f"staff-{'-'.join(perms) or 'none'}", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="bgjob_django", codename__in=perms))
    client = Client()
    client.force_login(user)
    return client


def job_ids(html: str) -> list[str]:
    return re.findall(r'data-job-id="([^"]+)"', html)


@pytest.mark.django_db
def test_admin_index_shows_the_app_with_dead_letters_and_queues(admin_client) -> None:
    html = admin_client.get("/admin/").content.decode()
    assert "Background jobs" in html
    assert f'href="{DLQ}"' in html and 'href="/admin/bgjob_django/queue/"' in html
    assert "/admin/bgjob_django/deadletter/add/" not in html


@pytest.mark.django_db
def test_list_is_newest_first_with_filters_by_queue_type_and_reason(admin_client, dead) -> None:
    html = admin_client.get(DLQ).content.decode()
    assert job_ids(html) == dead[::-1]
    assert "Dead letters 1&ndash;4 of 4, newest first" in html and "By queue" in html and "By reason" in html
    assert job_ids(admin_client.get(DLQ, {"queue": "mail"}).content.decode()) == [dead[3]]
    assert job_ids(admin_client.get(DLQ, {"queue": "default", "type": "fail", "reason": "handler"}).content.decode()) \
        == dead[2::-1]
    assert job_ids(admin_client.get(DLQ, {"reason": "max_attempts"}).content.decode()) == []
    bad = admin_client.get(DLQ, {"queue": "Not A Queue"}).content.decode()
    assert "Ignored the invalid queue" in bad and job_ids(bad) == dead[::-1]


@pytest.mark.django_db
def test_search_finds_a_dead_letter_by_its_job_id(admin_client, dead) -> None:
    assert job_ids(admin_client.get(DLQ, {"q": dead[1]}).content.decode()) == [dead[1]]
    assert job_ids(admin_client.get(DLQ, {"q": dead[1], "queue": "mail"}).content.decode()) == []
    assert "No dead letter has job id" in admin_client.get(DLQ, {"q": "nope"}).content.decode()


@pytest.mark.django_db
def test_pages_go_older_with_before(admin_client, dead, monkeypatch) -> None:
    monkeypatch.setattr("bgjob_django.admin_views.PAGE_SIZE", 3)
    first = admin_client.get(DLQ).content.decode()
    assert job_ids(first) == dead[:0:-1]
    older = re.search(r'href="([^"]+)" id="bgjob-older"', first).group(1).replace("&amp;", "&")
    second = admin_client.get(DLQ + older).content.decode()
    assert job_ids(second) == [dead[0]] and 'id="bgjob-older"' not in second and 'id="bgjob-newest"' in second


@pytest.mark.django_db
def test_detail_shows_payload_headers_error_traceback_and_times(admin_client, dead) -> None:
    html = admin_client.get(f"{DLQ}{dead[0]}/change/").content.decode()
    payload = re.search(r'<pre class="bgjob-pre" id="bgjob-payload">(.*?)</pre>', html, re.S).group(1)
    assert json.loads(payload.replace("&quot;", '"')) == {"n": 0, "text": "ünïcode"}
    assert "\n  " in payload  # indented
    assert "cannot handle {&#x27;n&#x27;: 0" in html  # the error, escaped
    assert "Bgjob-Request-Id" in html and "req-0" in html and "Last failure" in html and "Traceback" in html
    assert 'id="bgjob-retry"' in html and "deletelink" in html
    gone = admin_client.get(f"{DLQ}nope/change/")
    assert gone.status_code == 302 and gone["Location"] == DLQ  # like the admin for a missing object
    assert "There is no dead letter with job id “nope”" in admin_client.get(DLQ).content.decode()


@pytest.mark.django_db
def test_retry_sends_the_job_back_to_its_queue_and_logs_it(admin_client, dead, bgjob_client, admin_user) -> None:
    response = admin_client.post(f"{DLQ}{dead[0]}/retry/")
    assert response.status_code == 302 and response["Location"] == DLQ
    assert bgjob_client.dlq.count() == 3 and bgjob_client.queue_stats().pending == 1
    assert LogEntry.objects.get(object_id=dead[0]).change_message == "Retried: sent back to its queue."
    assert admin_client.get(f"{DLQ}{dead[0]}/retry/").status_code == 302  # gone: back to the list, saying so
    follow = admin_client.post(f"{DLQ}{dead[0]}/retry/", follow=True).content.decode()
    assert "is gone" in follow
    ask = admin_client.get(f"{DLQ}{dead[1]}/retry/").content.decode()  # GET asks first; only POST retries
    assert f"Send job {dead[1]} (fail) back to queue default?" in ask and 'value="Yes, retry it"' in ask
    assert bgjob_client.dlq.count() == 3


@pytest.mark.django_db
def test_retry_and_delete_selected_actions(admin_client, dead, bgjob_client) -> None:
    admin_client.post(DLQ, {"action": "retry_selected", "_selected_action": [dead[0], dead[1]]})
    assert bgjob_client.dlq.count() == 2 and bgjob_client.queue_stats().pending == 2
    confirm = admin_client.post(DLQ, {"action": "delete_selected", "_selected_action": [dead[2]]})
    assert confirm.status_code == 200 and "Delete this dead letter? It cannot be" in confirm.content.decode()
    assert bgjob_client.dlq.count() == 2
    admin_client.post(DLQ, {"action": "delete_selected", "_selected_action": [dead[2]], "post": "yes"})
    assert [e.id for e in bgjob_client.dlq.list()] == [dead[3]]


@pytest.mark.django_db
def test_delete_one_asks_first(admin_client, dead, bgjob_client) -> None:
    page = admin_client.get(f"{DLQ}{dead[1]}/delete/").content.decode()
    assert "Delete the dead letter of job" in page and 'name="csrfmiddlewaretoken"' in page
    assert bgjob_client.dlq.count() == 4
    assert admin_client.post(f"{DLQ}{dead[1]}/delete/", {"post": "yes"}).status_code == 302
    assert dead[1] not in [e.id for e in bgjob_client.dlq.list()]


@pytest.mark.django_db
def test_purge_removes_only_the_filtered_dead_letters_after_confirmation(admin_client, dead, bgjob_client) -> None:
    page = admin_client.get(f"{DLQ}purge/", {"queue": "default"}).content.decode()
    assert "Delete all 3 dead letters (queue default)?" in page
    assert bgjob_client.dlq.count() == 4
    up_to = re.search(r'name="up_to" value="(\d+)"', page).group(1)
    done = admin_client.post(f"{DLQ}purge/", {"queue": "default", "post": "yes", "up_to": up_to})
    assert done["Location"] == f"{DLQ}?queue=default"
    assert [e.id for e in bgjob_client.dlq.list()] == [dead[3]]


@pytest.mark.django_db
def test_staff_need_the_dead_letter_permissions(django_user_model, dead, bgjob_client) -> None:
    nobody = staff(django_user_model)
    assert nobody.get(DLQ).status_code == 403
    assert nobody.get(f"{DLQ}{dead[0]}/change/").status_code == 403

    viewer = staff(django_user_model, "view_deadletter")
    html = viewer.get(DLQ).content.decode()
    assert job_ids(html) == dead[::-1] and 'name="action"' not in html and "bgjob-purge" not in html
    assert 'id="bgjob-retry"' not in viewer.get(f"{DLQ}{dead[0]}/change/").content.decode()
    assert viewer.post(f"{DLQ}{dead[0]}/retry/").status_code == 403
    assert viewer.post(f"{DLQ}{dead[0]}/delete/", {"post": "yes"}).status_code == 403
    assert viewer.post(f"{DLQ}purge/", {"post": "yes"}).status_code == 403
    viewer.post(DLQ, {"action": "retry_selected", "_selected_action": [dead[0]]})
    assert bgjob_client.dlq.count() == 4

    retrier = staff(django_user_model, "view_deadletter", "change_deadletter")
    assert retrier.post(f"{DLQ}{dead[0]}/retry/").status_code == 302
    assert retrier.post(f"{DLQ}{dead[1]}/delete/", {"post": "yes"}).status_code == 403
    retrier.post(DLQ, {"action": "delete_selected", "_selected_action": [dead[1]], "post": "yes"})
    assert bgjob_client.dlq.count() == 3

    deleter = staff(django_user_model, "view_deadletter", "delete_deadletter")
    assert deleter.post(f"{DLQ}{dead[1]}/retry/").status_code == 403
    assert deleter.post(f"{DLQ}{dead[1]}/delete/", {"post": "yes"}).status_code == 302
    assert bgjob_client.dlq.count() == 2


@pytest.mark.django_db
def test_non_staff_users_are_sent_to_the_login_page(django_user_model, dead) -> None:
    user = django_user_model.objects.create_user("plain", password="pw")
    client = Client()
    client.force_login(user)
    response = client.get(DLQ)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert Client().post(f"{DLQ}{dead[0]}/retry/").status_code == 302


@pytest.mark.django_db
def test_changes_need_a_csrf_token(admin_user, dead, bgjob_client) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(f"{DLQ}{dead[0]}/retry/").status_code == 403
    assert client.post(f"{DLQ}{dead[0]}/delete/", {"post": "yes"}).status_code == 403
    assert client.post(f"{DLQ}purge/", {"post": "yes"}).status_code == 403
    action = {"action": "delete_selected", "_selected_action": [dead[0]], "post": "yes"}
    assert client.post(DLQ, action).status_code == 403
    assert bgjob_client.dlq.count() == 4
    page = client.get(f"{DLQ}{dead[0]}/change/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert client.post(f"{DLQ}{dead[0]}/retry/", {"csrfmiddlewaretoken": token}).status_code == 302
    assert bgjob_client.dlq.count() == 3


@pytest.mark.django_db
def test_queues_overview_shows_counts_schedules_and_live_workers(admin_client, dead, bgjob_client, run_worker) -> None:
    bgjob_client.schedule("nightly", "0 3 * * *", "report", tz="Europe/Berlin")
    send_job("report", {"user": 1}, queue="mail")  # no worker runs: pending
    run_worker(queues=("other",))
    # Wait for this worker's entry: the `dead` fixture's worker may still be listed, about to withdraw.
    worker = wait_until(lambda: next((w for w in bgjob_client.workers() if w.queues == ("other",)), None),
                        message="the worker in the directory")  # fmt: skip
    html = admin_client.get("/admin/bgjob_django/queue/").content.decode()
    row = re.search(r'<tr data-queue="mail">(.*?)</tr>', html, re.S).group(1)
    # pending, in flight, retrying, scheduled, dead letters
    assert re.findall(r'<td class="bgjob-num">(?:<a href="[^"]*">)?(\d+)', row) == ["1", "0", "0", "0", "1"]
    assert f'href="{DLQ}?queue=mail"' in html
    assert "nightly" in html and "Europe/Berlin" in html and "0 3 * * *" in html
    assert worker.id in html


@pytest.mark.django_db
def test_pages_say_so_when_nats_is_unreachable(admin_client, settings, bgjob_settings) -> None:
    settings.BGJOB = {**bgjob_settings, "URL": "nats://127.0.0.1:1", "RETRY_FOR": 0.5, "CONNECT_TIMEOUT": 0.5}
    response = admin_client.get(DLQ)
    assert response.status_code == 503 and "cannot connect to NATS" in response.content.decode()


@pytest.mark.django_db
def test_the_list_stays_fast_with_100k_dead_letters(admin_client, bgjob_client) -> None:
    from .dlq_fill import fill_dlq

    rare_ids = fill_dlq(bgjob_client, 100_000, rare_every=10_000)
    timings = {}
    for name, params in {
        "newest": {},
        "filtered by queue": {"queue": "mail"},
        "rare type": {"type": "rare"},
        "reason": {"reason": "max_attempts"},
        "search": {"q": rare_ids[0]},
    }.items():
        start = time.monotonic()
        html = admin_client.get(DLQ, params).content.decode()
        timings[name] = time.monotonic() - start
        if name == "rare type":
            assert job_ids(html) == rare_ids[::-1]
            assert f"Dead letters 1&ndash;{len(rare_ids)} of {len(rare_ids)} matching" in html
        elif name == "search":
            assert job_ids(html) == [rare_ids[0]]
        else:
            assert len(job_ids(html)) == 50
    assert "Dead letters 1&ndash;50 of 100000, newest first" in admin_client.get(DLQ).content.decode()
    print("admin page timings with 100k dead letters:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})
    assert max(timings.values()) < 3.0, timings
