"""`manage.py bgjob_queue show [QUEUE] | configure QUEUE --ack-wait S ... | configure --from-settings`: `bgjob
queue` with the project's settings (the same code: bgjob.cli.add_queue_arguments and queue_command), plus the
one place BGJOB['QUEUES'] entries' configurations are applied."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import bgjob
from bgjob.cli import add_queue_arguments, queue_command
from bgjob.provisioning import QUEUE_OPTIONS, show_value
from bgjob_django.conf import get_config, interactive_client
from bgjob_django.management.subcommands import common_options_after_subcommands


class Command(BaseCommand):
    help = (
        "Show a queue's configuration as the server has it, or change it (limits, ack wait, max ack pending, "
        "replicas, duplicate window); configure --from-settings applies BGJOB['QUEUES'] entries' configurations. "
        "Workers read ack wait, max age and max deliveries when they start."
    )
    requires_system_checks: tuple[str, ...] = ()

    def add_arguments(self, parser: CommandParser) -> None:
        add_queue_arguments(parser, from_settings="apply the configuration of each BGJOB['QUEUES'] entry that "
                            'carries one ({"name": "mail", "max_entries": 10000, "max_age": 3600}); nothing '
                            "else ever applies them")  # fmt: skip
        common_options_after_subcommands(parser)  # manage.py bgjob_queue show --settings=X

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options.get("from_settings"):
                if options.get("queue") or any(options.get(k) is not None for k in QUEUE_OPTIONS):
                    raise CommandError("--from-settings takes no QUEUE and no other option")
                for line in self._from_settings():
                    self.stdout.write(line)
                return
            for line in queue_command(interactive_client(), options):
                self.stdout.write(line)
        except bgjob.BgjobError as exc:
            raise CommandError(str(exc)) from exc

    def _from_settings(self) -> list[str]:
        """configure_queue for each configured QUEUES entry; the lines saying what changed."""
        configs = get_config().queue_configs
        if not configs:
            return ["no BGJOB['QUEUES'] entry carries a configuration: nothing to apply"]
        client, lines = interactive_client(), []
        for queue, changes in configs:
            changed = client.configure_queue(queue, **changes)
            lines += [f"queue {queue}: {name} {show_value(old)} -> {show_value(new)}"
                      for name, (old, new) in changed.items()] or [f"queue {queue}: nothing changed"]  # fmt: skip
        return lines
