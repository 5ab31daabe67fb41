"""`manage.py bgjob_status`: queues, periodic jobs and workers at a glance."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

import bgjob
from bgjob.cli import queue_table, server_line
from bgjob_django.conf import get_client
from bgjob_django.display import live_workers
from bgjob_django.relay import backlog


class Command(BaseCommand):
    help = ("Per queue: pending, in-flight, retrying, scheduled and dead jobs; the outbox backlog; the periodic jobs; "
            "the live workers.")
    requires_system_checks: tuple[str, ...] = ()

    def handle(self, *args: Any, **options: Any) -> None:
        client = get_client()
        try:
            self.stdout.write(server_line(client))
            for line in queue_table(client):
                self.stdout.write(line)
            self.stdout.write("\n" + _outbox_line())
            periodic = client.schedules()
            if periodic:
                self.stdout.write(f"\n{'SCHEDULE':24} {'QUEUE':16} {'TYPE':24} {'CRON':18} {'TZ':16} NEXT RUN (UTC)")
                for p in periodic:
                    next_run = p.next_run().strftime("%Y-%m-%d %H:%M:%S")
                    self.stdout.write(f"{p.name:24} {p.queue:16} {p.job_type:24} {p.cron:18} {p.tz:16} {next_run}")
            workers = live_workers(client)
            self.stdout.write(f"\nworkers: {len(workers)}")
            for w in workers:
                beat = w.last_beat.strftime("%H:%M:%S") if w.last_beat else "-"
                self.stdout.write(f"  {w.id:40} queues {','.join(w.queues):24} concurrency {w.concurrency:<4} "
                                  f"in-flight {w.in_flight:<4} processed {w.processed:<8} beat {beat}")  # fmt: skip
        except bgjob.BgjobError as exc:
            raise CommandError(str(exc)) from exc


def _outbox_line() -> str:
    """`outbox: N waiting, oldest Xs, F failed`, or why the outbox cannot be read (e.g. not migrated)."""
    try:
        return backlog().line()
    except Exception as exc:  # noqa: BLE001 - the rest of the status is still worth printing
        return f"outbox: unreadable ({type(exc).__name__}: {str(exc).strip()}; run manage.py migrate?)"
