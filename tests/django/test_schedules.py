"""bgjob_django's start-up declaration of periodic jobs: it prunes only what it declared, as it declared it."""

from __future__ import annotations

import bgjob
from bgjob_django.conf import ScheduleSpec
from bgjob_django.worker import DECLARED_HEADER, declare_schedules

NIGHTLY = ScheduleSpec("nightly", "0 3 * * *", "report", {"kind": "daily"})


def names(client: bgjob.Client) -> list[tuple[str, str]]:
    return [(p.queue, p.name) for p in client.schedules()]


def test_a_schedule_no_longer_declared_is_pruned_at_start(bgjob_client) -> None:
    declare_schedules(bgjob_client, [NIGHTLY], ["default"])
    [declared] = bgjob_client.schedules()
    assert declared.headers == {DECLARED_HEADER: "1"}
    declare_schedules(bgjob_client, [], ["default"])
    assert names(bgjob_client) == []


def test_a_schedule_redeclared_by_hand_with_the_same_values_is_not_pruned(bgjob_client) -> None:
    declare_schedules(bgjob_client, [NIGHTLY], ["default"])
    assert bgjob_client.schedule("nightly", "0 3 * * *", "report", {"kind": "daily"}) is True, "the marker goes"
    declare_schedules(bgjob_client, [], ["default"])
    [kept] = bgjob_client.schedules()
    assert (kept.name, kept.headers) == ("nightly", {})


def test_pruning_spares_a_schedule_redeclared_after_it_was_read(bgjob_client) -> None:
    declare_schedules(bgjob_client, [NIGHTLY], ["default"])
    [read] = bgjob_client.schedules()
    bgjob_client.schedule("nightly", "0 4 * * *", "report", {"kind": "daily"})  # by hand, between read and prune
    assert bgjob_client.unschedule("nightly", queue="default", revision=read.revision) is False
    assert [p.cron for p in bgjob_client.schedules()] == ["0 4 * * *"]


def test_a_spec_moved_to_another_queue_leaves_its_old_queue(bgjob_client) -> None:
    declare_schedules(bgjob_client, [NIGHTLY], ["default"])
    moved = ScheduleSpec("nightly", "0 3 * * *", "report", {"kind": "daily"}, queue="reports")
    declare_schedules(bgjob_client, [moved], ["reports"])
    assert names(bgjob_client) == [("reports", "nightly")]


def test_a_hand_made_schedule_of_the_same_name_on_another_queue_is_left_alone(bgjob_client, caplog) -> None:
    bgjob_client.schedule("nightly", "0 5 * * *", "report", queue="reports")
    declare_schedules(bgjob_client, [NIGHTLY], ["default", "reports"])
    assert [(p.queue, p.cron) for p in bgjob_client.schedules()] == [("reports", "0 5 * * *")]
    assert "names are unique across queues" in caplog.text
