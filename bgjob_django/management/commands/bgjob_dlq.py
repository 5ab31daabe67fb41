"""`manage.py bgjob_dlq list|show|retry|delete|purge|find|erase`: the dead-letter queue from the command line.

The same implementation as `bgjob dlq` (bgjob.cli.add_dlq_arguments, dlq_command), through the project's
client. Dead letters are shown masked (sensitive arg keys, sensitive headers, quotes of their values)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import bgjob
from bgjob.cli import add_dlq_arguments, dlq_command
from bgjob_django.conf import interactive_client
from bgjob_django.management.subcommands import common_options_after_subcommands


class Command(BaseCommand):
    help = "Browse the dead-letter queue; retry, delete or purge dead letters; find or erase them by arg content."
    requires_system_checks: tuple[str, ...] = ()

    def add_arguments(self, parser: CommandParser) -> None:
        add_dlq_arguments(parser)
        common_options_after_subcommands(parser)  # manage.py bgjob_dlq list --settings=X

    def handle(self, *args: Any, **options: Any) -> None:
        problems: list[str] = []
        try:
            # "CommandError: " starts what Django prints: no "error: " after it
            status = dlq_command(interactive_client().dlq, options, out=self.stdout.write,
                                 err=lambda line: problems.append(line.removeprefix("error: ")))
        except bgjob.BgjobError as exc:
            raise CommandError(str(exc)) from exc
        if status:
            # every problem line in the error (CommandError's text goes to stderr), and the exit status
            raise CommandError("\n".join(problems), returncode=status)
