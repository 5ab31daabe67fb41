"""BGJOB['QUEUES'] entries that carry a queue's configuration: checked by `manage.py check`, applied only by
`manage.py bgjob_queue configure --from-settings`, never by a worker or producer start, and never undone by one."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

import bgjob
from bgjob_django import conf, send_job
from bgjob_django.conf import problems

from ..conftest import wait_until


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def configured(settings, bgjob_settings: dict) -> dict:
    settings.BGJOB = {**bgjob_settings, "QUEUES": ["default", {"name": "mail", "max_entries": 2, "max_age": 3600,
                                                                "max_deliveries": 5}]}  # fmt: skip
    conf.reset()
    return settings.BGJOB


def test_a_queue_entry_with_limits_is_a_queue_to_serve_and_a_configuration(configured) -> None:
    assert problems() == []
    config = conf.get_config()
    assert config.queues == ("default", "mail")
    assert config.queue_configs == (("mail", {"max_entries": 2, "max_age": 3600, "max_deliveries": 5}),)


def test_the_settings_configuration_is_applied_only_by_from_settings(configured, bgjob_client, run_worker) -> None:
    run_worker(queues=("default", "mail"))  # a worker start applies nothing
    send_job("mail.send", None, queue="mail")
    config = bgjob_client.queue_config("mail")
    assert (config.max_entries, config.max_age, config.max_deliveries) == (None, None, None)

    out = run("bgjob_queue", "configure", "--from-settings")
    assert out.splitlines() == ["queue mail: max_entries unset -> 2", "queue mail: max_age unset -> 3600s",
                                "queue mail: max_deliveries unset -> 5"]  # fmt: skip
    assert "queue mail: nothing changed" in run("bgjob_queue", "configure", "--from-settings")
    config = bgjob_client.queue_config("mail")
    assert (config.max_entries, config.max_age, config.max_deliveries) == (2, 3600.0, 5)


def test_a_process_with_default_queues_never_undoes_the_configuration(configured, settings, bgjob_settings,
                                                                       run_worker) -> None:  # fmt: skip
    run("bgjob_queue", "configure", "--from-settings")
    settings.BGJOB = {**bgjob_settings, "QUEUES": ["default", "mail"]}  # another process: no configuration
    conf.reset()
    send_job("mail.send", None, queue="mail")
    send_job("mail.send", None, queue="mail")
    with pytest.raises(bgjob.QueueFull):  # this process's producer is held to the queue's max_entries of 2
        send_job("mail.send", None, queue="mail")
    run_worker(queues=("default", "mail"))  # and its workers leave the configuration alone
    wait_until(lambda: conf.get_client().queue_config("mail").consumer, message="the worker's consumer")
    config = conf.get_client().queue_config("mail")
    assert (config.max_entries, config.max_age, config.max_deliveries) == (2, 3600.0, 5)
    assert "no BGJOB['QUEUES'] entry carries a configuration" in run("bgjob_queue", "configure", "--from-settings")


@pytest.mark.parametrize(("entry", "says"), [
    ({"name": "mail", "max_entries": -5}, "entry 'mail' is invalid: max_entries must be between 1"),
    ({"name": "mail", "max_age": "1h"}, "entry 'mail' is invalid: max_age must be seconds"),
    ({"name": "mail", "max_deliveries": 1}, "max_deliveries must be between 2"),
    ({"name": "mail", "max_entires": 10}, "entry 'mail' has unknown keys: max_entires"),
    ({"max_entries": 10}, "invalid queue name None"),
    ({"name": "Mail Queue"}, "invalid queue name 'Mail Queue'"),
])  # fmt: skip
def test_manage_py_check_names_what_is_wrong_with_a_queue_entry(settings, bgjob_settings, entry, says) -> None:
    settings.BGJOB = {**bgjob_settings, "QUEUES": ["default", entry]}
    found = problems()
    assert [p.id for p in found] == ["bgjob_django.E005"] and says in found[0].msg, found
    with pytest.raises(Exception, match="E005"):
        call_command("check")


def test_from_settings_takes_no_queue_and_configure_still_needs_one(configured) -> None:
    with pytest.raises(CommandError, match="takes no QUEUE"):
        run("bgjob_queue", "configure", "mail", "--from-settings")
    with pytest.raises(CommandError, match=r"configure needs a QUEUE \(or --from-settings\)"):
        run("bgjob_queue", "configure", "--max-entries", "3")
