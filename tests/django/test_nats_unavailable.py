"""NATS unreachable: the admin pages and the management commands say so within a couple of seconds (their
client's retries are bounded: conf.interactive_client), with one clear message, however long retry_for is."""

from __future__ import annotations

import logging
import time

import pytest
from django.core.management import CommandError, call_command

from bgjob.server import free_port

from .conftest import manage
from .test_admin import DLQ, staff

PAGES = (DLQ, f"{DLQ}0123456789abcdef0123456789abcdef/change/", "/admin/bgjob_django/queue/")


@pytest.fixture
def unreachable(settings, bgjob_settings) -> str:
    """settings.BGJOB pointed at a free port (nothing listens) with bgjob's default retry_for (15 s)."""
    url = f"nats://127.0.0.1:{free_port()}"
    rest = {k: v for k, v in bgjob_settings.items() if k not in ("RETRY_FOR", "CONNECT_TIMEOUT")}
    settings.BGJOB = {**rest, "URL": url}
    return url


@pytest.mark.django_db
@pytest.mark.parametrize("page", PAGES)
def test_admin_pages_answer_503_at_once_when_nats_is_unreachable(unreachable, django_user_model, page,
                                                                 capsys) -> None:  # fmt: skip
    browser = staff(django_user_model, "view_deadletter", "view_queue")
    started = time.monotonic()
    response = browser.get(page)
    took = time.monotonic() - started
    with capsys.disabled():
        print(f"\n{page}: 503 after {took:.2f}s")
    assert response.status_code == 503
    html = response.content.decode()
    assert "Background jobs are unavailable" in html and "cannot connect to NATS" in html
    assert took < 10, f"{page} took {took:.1f}s"


@pytest.mark.django_db
def test_bgjob_status_dlq_and_queue_fail_at_once_with_one_message(unreachable, settings, caplog, capsys) -> None:
    settings.BGJOB = {**settings.BGJOB, "QUEUES": ["default", {"name": "mail", "max_entries": 100}]}  # --from-settings
    for command in (
        ("bgjob_status",),
        ("bgjob_dlq", "list"),
        ("bgjob_queue", "show"),
        ("bgjob_queue", "configure", "default", "--ack-wait", "9"),
        ("bgjob_queue", "configure", "--from-settings"),
    ):
        caplog.clear()
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG), pytest.raises(CommandError, match="cannot connect to NATS"):
            call_command(*command)
        took = time.monotonic() - started
        with capsys.disabled():
            print(f"\n{command[0]}: error after {took:.2f}s")
        assert took < 10, f"{command} took {took:.1f}s"
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) <= 1, [r.getMessage() for r in warnings]


def test_manage_py_bgjob_status_exits_nonzero_with_one_clear_line(worker_env) -> None:
    env = {**worker_env, "BGJOB_URL": f"nats://127.0.0.1:{free_port()}"}
    out = manage(env, "bgjob_status")
    assert out.returncode != 0
    lines = out.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("CommandError:")] == [lines[-1]], out.stderr
    assert "cannot connect to NATS" in lines[-1]
    assert len([ln for ln in lines if " WARNING " in ln]) <= 1, out.stderr
    assert len(lines) <= 2, out.stderr
