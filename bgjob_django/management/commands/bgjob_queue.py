"""`manage.py bgjob_queue show [QUEUE] | configure QUEUE --ack-wait S ...`: `bgjob queue` with the project's
settings (the same code: bgjob.cli.add_queue_arguments and queue_command)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import bgjob
from bgjob.cli import add_queue_arguments, queue_command
from bgjob_django.conf import get_client


class Command(BaseCommand):
    help = (
        "Show a queue's configuration as the server has it, or change it (ack wait, max ack pending, replicas, "
        "duplicate window). Workers pick a new ack wait up at their next start."
    )
    requires_system_checks: tuple[str, ...] = ()

    def add_arguments(self, parser: CommandParser) -> None:
        add_queue_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            for line in queue_command(get_client(), options):
                self.stdout.write(line)
        except bgjob.BgjobError as exc:
            raise CommandError(str(exc)) from exc
