"""BGJOB settings are translated in one place and validated by `manage.py check`."""

from __future__ import annotations

import io

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError

import bgjob
from bgjob_django import conf


def check_errors(settings, bgjob_setting) -> str:
    settings.BGJOB = bgjob_setting
    with pytest.raises(SystemCheckError) as info:
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
    return str(info.value)


def test_no_setting_at_all_means_defaults_and_the_embedded_server(settings, monkeypatch) -> None:
    monkeypatch.delenv("BGJOB_URL", raising=False)
    del settings.BGJOB
    config = conf.get_config()
    assert config.client == bgjob.Settings()
    assert config.queues == ("default",) and config.concurrency == 16 and config.max_attempts == 10
    assert config.on_commit is False and config.schedules == () and config.middleware == ()
    call_command("check", stdout=io.StringIO())


def test_keys_are_translated_into_bgjob_settings_and_worker_options() -> None:
    config = conf.parse({
        "URL": "nats://a:4222,nats://b:4222", "PREFIX": "shop", "REPLICAS": 3, "ACK_WAIT": 60,
        "OPTIONS": {"user": "u", "password": "p"}, "QUEUES": ["default", "mail"], "CONCURRENCY": 4,
        "MAX_ATTEMPTS": 5, "GRACE_PERIOD": 10, "ON_COMMIT": True,
        "MIDDLEWARE": ["tests.django.test_settings.timing"],
        "SCHEDULES": {"nightly": {"cron": "0 3 * * *", "job": "report", "arg": {"kind": "daily"},
                                  "tz": "Europe/Berlin"}},
    })  # fmt: skip
    assert config.client.url == "nats://a:4222,nats://b:4222" and config.client.prefix == "shop"
    assert config.client.replicas == 3 and config.client.ack_wait == 60
    assert config.client.nats_options == {"user": "u", "password": "p"}
    assert config.queues == ("default", "mail") and config.concurrency == 4 and config.on_commit is True
    assert config.retry_policy().max_attempts == 5 and config.grace_period == 10
    assert config.load_middleware() == [timing]
    assert config.schedules == (conf.ScheduleSpec("nightly", "0 3 * * *", "report", {"kind": "daily"}, "default",
                                                  "Europe/Berlin"),)  # fmt: skip


def test_bgjob_url_from_the_environment_is_the_fallback(monkeypatch) -> None:
    monkeypatch.setenv("BGJOB_URL", "nats://from-env:4222")
    assert conf.parse({}).client.url == "nats://from-env:4222"
    assert conf.parse({"URL": "nats://from-settings:4222"}).client.url == "nats://from-settings:4222"


def timing(job, call_next):
    return call_next(job)


def test_bad_url_is_a_check_error_with_a_hint(settings) -> None:
    out = check_errors(settings, {"URL": "http://user:secret@example.com"})
    assert "bgjob_django.E003" in out and "scheme 'http'" in out and "HINT: use nats://host:4222" in out
    assert "secret" not in out
    assert "bgjob_django.E003" in check_errors(settings, {"URL": "nats://host:notaport"})


def test_unknown_middleware_path_is_a_check_error(settings) -> None:
    out = check_errors(settings, {"MIDDLEWARE": ["tests.django.nowhere.mw"]})
    assert "bgjob_django.E007" in out and "'tests.django.nowhere.mw' cannot be imported" in out
    assert "HINT: give the dotted path of a callable" in out


def test_invalid_cron_or_time_zone_in_schedules_is_a_check_error(settings) -> None:
    out = check_errors(settings, {"SCHEDULES": {"nightly": {"cron": "0 3 * *", "job": "report"}}})
    assert "bgjob_django.E009" in out and "invalid cron expression '0 3 * *'" in out
    assert "HINT: cron has 5 fields" in out
    out = check_errors(settings, {"SCHEDULES": {"nightly": {"cron": "0 3 * * *", "job": "report", "tz": "Mars/Base"}}})
    assert "unknown time zone 'Mars/Base'" in out
    assert "bgjob_django.E008" in check_errors(settings, {"SCHEDULES": {"nightly": {"cron": "0 3 * * *"}}})


def test_unknown_keys_bad_queues_and_numbers_are_check_errors(settings) -> None:
    out = check_errors(settings, {"CONCURENCY": 4})
    assert "bgjob_django.E002" in out and "unknown key BGJOB['CONCURENCY']" in out and "CONCURRENCY" in out
    assert "did you mean 'OUTBOX'?" in check_errors(settings, {"OUTBX": True})
    assert "bgjob_django.E005" in check_errors(settings, {"QUEUES": ["Mail Queue"]})
    assert "bgjob_django.E006" in check_errors(settings, {"CONCURRENCY": 0})
    assert "bgjob_django.E004" in check_errors(settings, {"PREFIX": "Not Valid"})
    assert "bgjob_django.E001" in check_errors(settings, ["not", "a", "dict"])
    assert "use sentry_sdk.init(" in check_errors(settings, {"SENTRY": {"DSN": "x"}})


def test_get_config_refuses_a_bad_setting_with_the_same_message(settings) -> None:
    settings.BGJOB = {"URL": "ftp://x"}
    with pytest.raises(ImproperlyConfigured, match="scheme 'ftp'"):
        conf.get_config()


def test_a_scheduled_job_type_without_a_handler_is_a_warning(settings) -> None:
    settings.BGJOB = {**settings.BGJOB, "SCHEDULES": {"x": {"cron": "0 3 * * *", "job": "nobody-handles-this"}}}
    err = io.StringIO()
    call_command("check", stdout=io.StringIO(), stderr=err)
    assert "bgjob_django.W002" in err.getvalue() and "'nobody-handles-this'" in err.getvalue()


def test_changing_the_setting_gives_a_new_client(settings, bgjob_client, nats_server) -> None:
    settings.BGJOB = {**settings.BGJOB, "PREFIX": "other"}
    from bgjob_django import get_client

    assert get_client() is not bgjob_client and get_client().settings.prefix == "other"


SECRET_KEY_TEXT = "c2VjcmV0LWtleS10aGF0LWlzLTI0LWJ5"  # base64 of 24 bytes: not a key


@pytest.mark.parametrize(("setting", "expected"), [
    ({"URL": "not a url at all"}, ["bgjob_django.E003", "host 'not a url at all' is not a host name"]),
    ([], ["bgjob_django.E001", "must be a dict, got list"]),
    ({"RESULT_TTL": "1d"}, ["BGJOB['RESULT_TTL'] is invalid", "HINT: a number of seconds"]),
    ({"DLQ_MAX_AGE": "week"}, ["BGJOB['DLQ_MAX_AGE'] is invalid", "HINT: a number of seconds"]),
    ({"SIGNING_KEY": "abc"}, ["BGJOB['SIGNING_KEY'] is invalid: signing_key is not base64", "generate_keypair()"]),
    ({"SIGNING_KEY": SECRET_KEY_TEXT}, ["BGJOB['SIGNING_KEY'] is invalid: signing_key must be 32 bytes"]),
    ({"REPLICAS": 7}, ["BGJOB['REPLICAS'] is invalid: replicas must be 1 to 5", "HINT: an integer from 1 to 5"]),
    ({"VERIFY_KEYS": "abc"}, ["BGJOB['VERIFY_KEYS'] is invalid: verify key is not base64", "generate_keypair()"]),
    ({"ENCRYPTION_KEYS": [SECRET_KEY_TEXT]}, ["BGJOB['ENCRYPTION_KEYS'] is invalid", "generate_key()"]),
    ({"NAME": 5}, ["BGJOB['NAME'] is invalid: name must be a non-empty str"]),
    ({"DATA_DIR": 5}, ["BGJOB['DATA_DIR'] is invalid: data_dir must be a path"]),
    ({"RETRY_FOR": -1}, ["BGJOB['RETRY_FOR'] is invalid: retry_for must be seconds > 0"]),
    ({"REPLICAS": "three", "ACK_WAIT": "30s"}, ["BGJOB['REPLICAS'] is invalid: replicas must be an int",
                                                "BGJOB['ACK_WAIT'] is invalid: ack_wait must be seconds"]),
    ({"OPTIONS": {"servers": ["nats://x"]}}, ["BGJOB['OPTIONS'] is invalid: nats_options['servers']"]),
])  # fmt: skip
def test_settings_that_fail_at_run_time_are_check_errors_naming_their_key(settings, setting, expected) -> None:
    """Each key is validated on its own by the code that runs (bgjob.Settings, the key decoders)."""
    if isinstance(setting, dict) and "URL" not in setting:
        setting = {"URL": "nats://127.0.0.1:4222", **setting}
    out = check_errors(settings, setting)
    for text in expected:
        assert text in out
    assert SECRET_KEY_TEXT not in out


def test_a_bad_signing_key_or_url_password_is_never_quoted(settings) -> None:
    out = check_errors(settings, {"URL": "nats://user:hunter2-secret@not a host", "SIGNING_KEY": "hunter3-secret",
                                  "ENCRYPTION_KEYS": "hunter4-secret"})  # fmt: skip
    assert out.count("bgjob_django.E00") == 3
    assert "hunter" not in out


@pytest.mark.parametrize(("entry", "error", "hint"), [
    ({"cron": "0 3 * *", "job": "report"}, "invalid cron expression", "HINT: cron has 5 fields"),
    ({"cron": "0 3 * * *", "job": "report", "queue": "Mail Q"}, "invalid queue name 'Mail Q'",
     "HINT: 'queue' is a bgjob queue name"),
    ({"cron": "0 3 * * *", "job": "report", "arg": {1, 2}}, "JSON-serialisable", "HINT: 'arg' must be JSON data"),
    ({"cron": "0 3 * * *", "job": "not a type"}, "invalid job type 'not a type'", "HINT: 'job' is the job type"),
])  # fmt: skip
def test_each_schedule_problem_gets_a_hint_about_itself(settings, entry, error, hint) -> None:
    out = check_errors(settings, {"SCHEDULES": {"nightly": entry}})
    assert "bgjob_django.E009" in out and error in out and hint in out
    if "cron has" not in hint:
        assert "cron has" not in out


def test_a_bad_schedule_name_queue_and_cron_are_all_reported(settings) -> None:
    out = check_errors(settings, {"SCHEDULES": {"Night Run": {"cron": "x", "job": "report", "queue": "Q Q"}}})
    assert "invalid schedule name 'Night Run'" in out and "HINT: rename the SCHEDULES entry" in out
    assert "invalid cron expression 'x'" in out and "invalid queue name 'Q Q'" in out
