"""Time limits in a Django project: BGJOB['TIME_LIMIT'] (checked by `manage.py check`) and
`manage.py bgjob_worker --time-limit` give the workers their default; a handler's own time_limit wins."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError

import bgjob
from bgjob_django import checks, conf
from bgjob_django.management.commands import bgjob_worker


def test_time_limit_setting_is_seconds_or_none() -> None:
    assert conf.parse({}).time_limit is None
    assert conf.parse({"TIME_LIMIT": 300}).time_limit == 300.0
    assert conf.parse({"TIME_LIMIT": 2.5}).time_limit == 2.5


@pytest.mark.parametrize("value", [0, -1, "300", True, float("nan")])
def test_a_bad_time_limit_setting_is_a_check_error_naming_it(settings, value) -> None:
    settings.BGJOB = {**settings.BGJOB, "TIME_LIMIT": value}
    with pytest.raises(SystemCheckError) as info:
        call_command("check", tags=[checks.TAG], stdout=io.StringIO(), stderr=io.StringIO())
    assert "bgjob_django.E006" in str(info.value) and "BGJOB['TIME_LIMIT'] is invalid" in str(info.value)


class _Started(Exception):
    pass


@pytest.fixture
def worker_options(monkeypatch) -> dict:
    """What bgjob_worker passes to its WorkerGroup (which hands it to every bgjob.Worker); the group never runs."""
    seen: dict = {}

    def group(client, mux, queues, config, **options):
        seen.update(options)
        raise bgjob.BgjobError("stopped by the test")

    monkeypatch.setattr(bgjob_worker, "WorkerGroup", group)
    return seen


def test_bgjob_worker_time_limit_option_wins_over_the_setting(settings, worker_options) -> None:
    settings.BGJOB = {**settings.BGJOB, "TIME_LIMIT": 300}
    with pytest.raises(CommandError, match="stopped by the test"):
        call_command("bgjob_worker", "--no-schedules", "--no-relay", stdout=io.StringIO())
    assert worker_options["time_limit"] == 300.0
    conf.reset()  # the command closed the project's client
    with pytest.raises(CommandError, match="stopped by the test"):
        call_command("bgjob_worker", "--no-schedules", "--no-relay", "--time-limit", "2.5", stdout=io.StringIO())
    assert worker_options["time_limit"] == 2.5


def test_bgjob_worker_refuses_a_time_limit_that_is_not_seconds(worker_options) -> None:
    with pytest.raises(CommandError, match="--time-limit"):
        call_command("bgjob_worker", "--time-limit", "0", stdout=io.StringIO())
    assert worker_options == {}


def test_a_worker_group_gives_its_workers_the_time_limit_setting(bgjob_client) -> None:
    """BGJOB['TIME_LIMIT'] reaches WorkerGroup's workers whoever builds the group, not only manage.py bgjob_worker;
    a time_limit given to the group wins."""
    from bgjob_django.registry import registry
    from bgjob_django.worker import WorkerGroup

    config = conf.parse({"TIME_LIMIT": 30})
    group = WorkerGroup(bgjob_client, registry, ["default"], config, relay=False)
    assert [w.time_limit for w in group.workers] == [30.0]
    group = WorkerGroup(bgjob_client, registry, ["default"], config, relay=False, time_limit=5)
    assert [w.time_limit for w in group.workers] == [5.0]
