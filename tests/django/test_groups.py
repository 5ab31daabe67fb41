"""Worker groups in bgjob_django: `@handler(..., group=)` and `manage.py bgjob_worker --group NAME / --claim NAME`."""

from __future__ import annotations

import io
import queue

import pytest
from django.core.management import CommandError, call_command

import bgjob

from ..conftest import drain


def test_handler_passes_group_through() -> None:
    from bgjob_django.registry import Registry, handler

    mux = Registry()
    handler("render-pdf", mux=mux, group="reports")(lambda job: bgjob.Complete())
    assert mux.options("render-pdf").group == "reports"
    with pytest.raises(bgjob.HandlerError, match="group= cannot be combined with singleton"):
        handler("other", mux=mux, group="reports", singleton=True)(lambda job: bgjob.Complete())


def test_bgjob_worker_refuses_a_group_without_handlers_and_a_bad_claim() -> None:
    from bgjob_django import conf

    with pytest.raises(CommandError, match="group 'nope': no handler"):
        call_command("bgjob_worker", "--group", "nope", "--no-relay", "--no-schedules", stdout=io.StringIO())
    conf.reset()  # the command closed the project's client
    with pytest.raises(CommandError, match=r"invalid claim 'a\.b'"):
        call_command("bgjob_worker", "--claim", "a.b", "--no-relay", "--no-schedules", stdout=io.StringIO())


def test_a_worker_group_with_groups_runs_only_its_group(bgjob_client) -> None:
    from bgjob_django.conf import get_client, get_config
    from bgjob_django.registry import Registry
    from bgjob_django.worker import WorkerGroup

    ran: queue.Queue = queue.Queue()

    def make(label: str) -> Registry:
        mux = Registry()
        mux.handle("render-pdf", lambda job: ran.put((label, job.type)) or bgjob.Complete(), group="reports")
        mux.handle("plain", lambda job: ran.put((label, job.type)) or bgjob.Complete())
        return mux

    groups = [WorkerGroup(get_client(), make("default"), ["default"], get_config(), relay=False),
              WorkerGroup(get_client(), make("reports"), ["default"], get_config(), relay=False,
                          groups=["reports"])]  # fmt: skip
    try:
        for group in groups:
            for worker in group.workers:
                worker.fetch_timeout = 0.5
            group.start()
        bgjob_client.send_jobs([("render-pdf", 1), ("plain", 2)])
        assert sorted(drain(ran, 2)) == [("default", "plain"), ("reports", "render-pdf")]
    finally:
        for group in groups:
            group.stop()
        assert all(group.join(timeout=30) for group in groups)
