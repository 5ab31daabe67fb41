"""Dead letters in the admin and manage.py bgjob_dlq: masked without `view_deadletter_payload`, unmasked with it
(and for superusers); "Erase data matching" needs delete_deadletter, POST and CSRF, and confirms first."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command
from django.test import Client

from .conftest import manage
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
    deleter = staff(django_user_model, "view_deadletter", "delete_deadletter", "view_deadletter_payload")
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


@pytest.mark.django_db
def test_without_the_payload_permission_erase_is_no_oracle_for_a_masked_value(
        django_user_model, admin_client, bgjob_client, secret_letters) -> None:  # fmt: skip
    """Matching on content reads it: the confirmation lists who holds a guessed value, so erase needs
    view_deadletter_payload as well as delete_deadletter (the attack: guess a masked PIN until job-seven shows)."""
    deleter = staff(django_user_model, "view_deadletter", "delete_deadletter")
    assert 'id="bgjob-erase"' not in deleter.get(DLQ).content.decode()
    assert deleter.get(f"{DLQ}erase/").status_code == 403
    for data in ({"path": "card", "value": f'"{CARD}"'}, {"path": "card", "value": CARD},
                 {"path": "customer_id", "value": "7"}, {"path": "card", "value": f'"{CARD}"', "post": "yes"}):
        response = deleter.post(f"{DLQ}erase/", data)
        assert response.status_code == 403 and job_ids(response.content.decode()) == []
    assert bgjob_client.dlq.count() == 2
    reader = staff(django_user_model, "view_deadletter", "view_deadletter_payload")
    assert reader.post(f"{DLQ}erase/", {"path": "card", "value": CARD}).status_code == 403
    for allowed in (staff(django_user_model, "view_deadletter", "delete_deadletter", "view_deadletter_payload"),
                    admin_client):  # fmt: skip
        assert 'id="bgjob-erase"' in allowed.get(DLQ).content.decode()
        confirm = allowed.post(f"{DLQ}erase/", {"path": "card", "value": CARD}).content.decode()
        assert job_ids(confirm) == ["job-seven"]


HOSTILE_PATHS = ["card.²", "items.٣", "items.½", "a." + "9" * 5000, "a" * 201, ".".join(["a"] * 501)]


@pytest.mark.django_db
@pytest.mark.parametrize("data, error", [*[({"path": p, "value": "1"}, "invalid match path") for p in HOSTILE_PATHS],
                                         ({"path": "card", "value": "[" * 100_000}, "too long"),
                                         ({"path": "card", "value": "7" * 10_001}, "too long")])  # fmt: skip
def test_a_hostile_erase_path_or_value_is_a_form_error_not_a_server_error(
        admin_client, bgjob_client, secret_letters, data, error) -> None:  # fmt: skip
    for post in ({}, {"post": "yes"}):
        response = admin_client.post(f"{DLQ}erase/", {**data, **post})
        assert response.status_code == 400 and error in response.content.decode()
    assert bgjob_client.dlq.count() == 2


@pytest.mark.django_db
def test_a_value_nested_too_deeply_for_json_is_matched_as_text(admin_client, secret_letters) -> None:
    response = admin_client.post(f"{DLQ}erase/", {"path": "card", "value": "[" * 5000})
    assert response.status_code == 200 and "Erase the 0 dead letters" in response.content.decode()


@pytest.fixture
def unreadable_letter(bgjob_client) -> None:
    """Customer 7's dead letter encrypted with key k1, which this project's client does not have."""
    store_dead_letter(bgjob_client, "job-locked", {"customer_id": 7}, headers={"Bgjob-Encryption": "aes256gcm;k1;id"})


WARNING = ("1 dead letters could not be checked: encrypted with key k1 this client does not have; set "
           "BGJOB_ENCRYPTION_KEYS")


@pytest.mark.django_db
def test_the_erase_confirmation_and_result_say_which_dead_letters_could_not_be_checked(
        admin_client, bgjob_client, secret_letters, unreadable_letter) -> None:  # fmt: skip
    confirm = admin_client.post(f"{DLQ}erase/", {"path": "customer_id", "value": "7"}).content.decode()
    assert 'id="bgjob-unreadable"' in confirm and WARNING in confirm and "job-locked" in confirm
    assert job_ids(confirm) == ["job-seven"]
    done = admin_client.post(f"{DLQ}erase/", {"path": "customer_id", "value": "7", "post": "yes"}, follow=True)
    page = done.content.decode()
    assert "Erased 1 dead letters" in page and WARNING in page
    assert sorted(e.id for e in bgjob_client.dlq.list()) == ["job-eight", "job-locked"]
    clean = admin_client.post(f"{DLQ}erase/", {"path": "customer_id", "value": "8"}).content.decode()
    assert 'id="bgjob-unreadable"' in clean  # job-locked is scanned by every search: it may hold anything


def test_bgjob_dlq_find_and_erase_warn_and_exit_1_when_a_dead_letter_could_not_be_checked(
        bgjob_client, secret_letters, unreadable_letter, worker_env) -> None:  # fmt: skip
    from django.core.management import CommandError

    for action in (("find",), ("erase", "--yes")):
        out = io.StringIO()
        with pytest.raises(CommandError, match=WARNING) as raised:
            call_command("bgjob_dlq", *action, "--match", "customer_id=7", stdout=out)
        assert raised.value.returncode == 1
        assert ("job-seven" in out.getvalue()) if action == ("find",) else ("erased 1" in out.getvalue())
    assert sorted(e.id for e in bgjob_client.dlq.list()) == ["job-eight", "job-locked"]
    done = manage(worker_env, "bgjob_dlq", "find", "--match", "customer_id=7")
    assert done.returncode == 1 and WARNING in done.stderr and "0 matching" in done.stdout


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

    with pytest.raises(CommandError, match="would erase 1 dead letter"):
        run("bgjob_dlq", "erase", "--match", "customer_id=7")
    assert "erased 1 dead letter" in run("bgjob_dlq", "erase", "--match", "customer_id=7", "--yes")
    assert [e.id for e in bgjob_client.dlq.list()] == ["job-eight"]
