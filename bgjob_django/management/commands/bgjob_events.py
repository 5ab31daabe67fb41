"""`manage.py bgjob_events`: jobs' lifecycle events (BGJOB["EVENTS"]), and a job's state by id."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

import bgjob
from bgjob.cli import add_events_arguments, events_command, job_status_dict, job_status_lines, json_text
from bgjob_django.conf import interactive_client


class Command(BaseCommand):
    help = (
        "Jobs' lifecycle events (enqueued, started, succeeded, retry_scheduled, dead_lettered, ...), oldest "
        "first, filtered by queue, type and job id; --follow prints new ones until interrupted; --status ID "
        "prints one job's state and events. The same as `bgjob events` and `bgjob job ID`."
    )
    requires_system_checks: tuple[str, ...] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_events_arguments(parser)
        parser.add_argument("--status", metavar="ID", help="one job's state, progress and events (as `bgjob job ID`; "
                            "with --json as `bgjob job ID --json`)")  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            client = interactive_client()
            if options.get("status") and options.get("json"):
                found = job_status_dict(client, options["status"])
                self.stdout.write(json_text(found))
                if found["state"] == "unknown":
                    raise CommandError(f"job {options['status']}: unknown")  # exit 1, as without --json
                return
            if options.get("status"):
                lines = job_status_lines(client, options["status"])
                if lines[0].startswith(f"job {options['status']}: unknown"):
                    raise CommandError(lines[0])  # exit 1: scripts can tell a job nothing is known of
                for line in lines:
                    self.stdout.write(line)
                return
            events_command(client, options, out=self.stdout.write)
        except bgjob.BgjobError as exc:
            raise CommandError(str(exc)) from exc
        except BrokenPipeError:  # `manage.py bgjob_events | head`: the reader is gone; end quietly, as bgjob does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
