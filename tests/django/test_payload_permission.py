"""Dead letters in the admin and manage.py bgjob_dlq: masked without `view_deadletter_payload`, unmasked with it
(and for superusers); "Erase data matching" needs delete_deadletter, POST and CSRF, and confirms first."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command
from django.test import Client

from .dlq_fill import store_dead_letter
from .test_admin import DLQ, job_ids, staff

CARD, TOKEN = "4111111111111111", "tok-SECRET-123"


@pytest.fixture
def secret_letters(bgjob_client) -> None:
    """Two dead letters: customer 7's with a sensitive card, an Authorization header and texts quoting both
    (unscrubbed, as an old worker may have stored them), and customer 8's."""
    store_dead_letter(bgjob_client, "job-seven", {"card": CARD, "customer_id": 7},
                      headers={"Bgjob-Sensitive": "card", "Authorization": f"Bearer {TOKEN}"},
                      error=f"declined {CARD} ({TOKEN})", traceback=f"ValueError: card {CARD} {TOKEN}")  # fmt: skip
    store_dead_letter(bgjob_client, "job-eight", {"customer_id": 8})


def leaks(html: str) -> bool:
    return CARD in html or TOKEN in html


@pytest.mark.django_db
def test_without_the_payload_permission_list_and_detail_are_masked(django_user_model, secret_letters) -> None:
    viewer = staff(django_user_model, "view_deadletter")
    listing = viewer.get(DLQ).content.decode()
    assert job_ids(listing) == ["job-eight", "job-seven"] and not leaks(listing) and "declined" in listing
    detail = viewer.get(f"{DLQ}job-seven/change/").content.decode()
    assert not leaks(detail) and "********" in detail and 'id="bgjob-masked"' in detail
    assert "Authorization" in detail and "customer_id" in detail


@pytest.mark.django_db
def test_with_the_payload_permission_and_for_superusers_the_detail_is_unmasked(django_user_model, admin_client,
                                                                             secret_letters) -> None:  # fmt: skip
    reader = staff(django_user_model, "view_deadletter", "view_deadletter_payload")
    for client in (reader, admin_client):
        detail = client.get(f"{DLQ}job-seven/change/").content.decode()
        payload = re.search(r'id="bgjob-payload">(.*?)</pre>', detail, re.S).group(1)
        traceback = re.search(r'id="bgjob-traceback">(.*?)</pre>', detail, re.S).group(1)
        assert CARD in payload and CARD in traceback and f"Bearer {TOKEN}" in detail
        assert 'id="bgjob-masked"' not in detail
        assert CARD in client.get(DLQ).content.decode()  # the list's error column


@pytest.mark.django_db
def test_the_payload_permission_alone_shows_nothing(django_user_model, secret_letters) -> None:
    assert staff(django_user_model, "view_deadletter_payload").get(f"{DLQ}job-seven/change/").status_code == 403


@pytest.mark.django_db
def test_erase_data_matching_confirms_masked_then_erases_only_the_matches(django_user_model, bgjob_client,
                                                                         secret_letters) -> None:  # fmt: skip
    deleter = staff(django_user_model, "view_deadletter", "delete_deadletter")
    assert 'id="bgjob-erase"' in deleter.get(DLQ).content.decode()
    form = deleter.get(f"{DLQ}erase/").content.decode()
    assert 'name="path"' in form and 'name="csrfmiddlewaretoken"' in form
    confirm = deleter.post(f"{DLQ}erase/", {"path": "customer_id", "value": "7"}).content.decode()
    assert "Erase the 1 dead letters whose arg matches customer_id = 7" in confirm
    assert job_ids(confirm) == ["job-seven"] and not leaks(confirm) and bgjob_client.dlq.count() == 2
    done = deleter.post(f"{DLQ}erase/", {"path": "customer_id", "value": "7", "post": "yes"})
    assert done.status_code == 302 and [e.id for e in bgjob_client.dlq.list()] == ["job-eight"]
    bad = deleter.post(f"{DLQ}erase/", {"path": "a..b", "value": "7"})
    assert bad.status_code == 400 and "invalid match path" in bad.content.decode()


@pytest.mark.django_db
def test_erase_needs_delete_permission_post_and_csrf(django_user_model, admin_user, bgjob_client,
                                                     secret_letters) -> None:  # fmt: skip
    viewer = staff(django_user_model, "view_deadletter", "change_deadletter", "view_deadletter_payload")
    assert 'id="bgjob-erase"' not in viewer.get(DLQ).content.decode()
    assert viewer.get(f"{DLQ}erase/").status_code == 403
    assert viewer.post(f"{DLQ}erase/", {"path": "customer_id", "value": "7", "post": "yes"}).status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin_user)
    assert strict.post(f"{DLQ}erase/", {"path": "customer_id", "value": "7", "post": "yes"}).status_code == 403
    assert strict.get(f"{DLQ}erase/", {"path": "customer_id", "value": "7", "post": "yes"}).status_code == 200
    assert bgjob_client.dlq.count() == 2


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_bgjob_dlq_show_list_and_find_are_masked_and_erase_erases(bgjob_client, secret_letters) -> None:
    for output in (run("bgjob_dlq", "show", "job-seven"), run("bgjob_dlq", "list"), run("bgjob_dlq", "list", "--json"),
                   run("bgjob_dlq", "find", "--match", "customer_id=7"),
                   run("bgjob_dlq", "find", "--match", "customer_id=7", "--json")):  # fmt: skip
        assert not leaks(output) and "job-seven" in output
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="would erase 1 dead letters"):
        run("bgjob_dlq", "erase", "--match", "customer_id=7")
    assert "erased 1 dead letters" in run("bgjob_dlq", "erase", "--match", "customer_id=7", "--yes")
    assert [e.id for e in bgjob_client.dlq.list()] == ["job-eight"]
