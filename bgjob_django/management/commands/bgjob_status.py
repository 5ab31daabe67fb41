"""`manage.py bgjob_status`: queues, the outbox, periodic jobs and workers at a glance."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

import bgjob
from bgjob.cli import status_lines
from bgjob_django.conf import interactive_client
from bgjob_django.relay import backlog


class Command(BaseCommand):
    help = ("Per queue: pending, in-flight, retrying, scheduled and dead jobs; the outbox backlog; the periodic jobs; "
            "the live workers. The same as `bgjob status`, plus the outbox.")
    requires_system_checks: tuple[str, ...] = ()

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            lines = status_lines(interactive_client(), outbox_line=_outbox_line())
        except bgjob.BgjobError as exc:
            raise CommandError(str(exc)) from exc
        for line in lines:
            self.stdout.write(line)


def _outbox_line() -> str:
    """`outbox: N waiting, oldest Xs, F failed`, or why the outbox cannot be read (e.g. not migrated)."""
    try:
        return backlog().line()
    except Exception as exc:  # noqa: BLE001 - the rest of the status is still worth printing
        return f"outbox: unreadable ({type(exc).__name__}: {str(exc).strip()}; run manage.py migrate?)"
