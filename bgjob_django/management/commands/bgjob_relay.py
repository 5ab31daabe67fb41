"""`manage.py bgjob_relay`: publish the outbox table's rows to NATS (the relay, on its own)."""

from __future__ import annotations

import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections

import bgjob
from bgjob.cli import server_line
from bgjob.worker.signals import install_drain_signals
from bgjob_django.conf import get_client
from bgjob_django.management.commands.bgjob_worker import _configure_logging
from bgjob_django.relay import POLL, Relay


class Command(BaseCommand):
    help = (
        "Run outbox relays: publish the jobs sent with outbox=True (the bgjob_outbox table) in insertion order, "
        "deleting each row after its PubAck. bgjob_worker runs one already (unless --no-relay). SIGTERM/SIGINT "
        "finish the current round (a second signal exits at once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="the database whose outbox is relayed")
        parser.add_argument("--relays", type=int, default=1, help="relay threads in this process (default 1)")
        parser.add_argument("--batch", type=int, default=100, help="rows per round (default 100)")
        parser.add_argument("--poll", type=float, default=POLL, help=f"seconds between looks at an idle outbox "
                            f"(default {POLL})")  # fmt: skip
        parser.add_argument("--lease", type=float, help="seconds a relay holds the rows it claimed (default: a third "
                            "of DUPLICATE_WINDOW; at most half of it)")  # fmt: skip
        parser.add_argument("--log-level", default="INFO", help="used when the project's LOGGING sets no root handler")
        parser.add_argument("--log-format", choices=["text", "json"], default="text",
                            help="used when the project's LOGGING sets no root handler")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["relays"] < 1:
            raise CommandError("--relays must be >= 1")
        if options["database"] not in connections:
            raise CommandError(f"--database {options['database']!r} is not in DATABASES")
        _configure_logging(options["log_level"], options["log_format"])
        client = get_client()
        try:
            relays = [Relay(client, using=options["database"], batch=options["batch"], poll=options["poll"],
                            lease=options["lease"]) for _ in range(options["relays"])]  # fmt: skip
            try:
                server = server_line(client)
            except bgjob.ConnectionError as exc:  # the relays keep the rows and try again until NATS answers
                server = f"server: not reachable yet ({exc}); the relays keep trying"
        except bgjob.BgjobError as exc:
            client.close()
            raise CommandError(str(exc)) from exc
        stop = threading.Event()
        restore = install_drain_signals(stop.set, describe=lambda: "the current outbox round")
        try:
            threads = [relay.start(stop) for relay in relays]
            self.stdout.write(server)
            self.stdout.write(f"bgjob relay: database {options['database']!r}, {len(relays)} relay(s), batch "
                              f"{options['batch']}, lease {relays[0].lease:g}s ({', '.join(r.id for r in relays)})")
            self.stdout.flush()
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(0.5)  # short joins: the signal handler runs in between
        finally:
            restore()
            stop.set()
            client.close()
