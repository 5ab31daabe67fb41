"""`manage.py bgjob_dlq list|show|retry|delete|purge|find|erase`: the dead-letter queue from the command line.

Dead letters are shown masked (sensitive arg keys, sensitive headers, quotes of their values)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import bgjob
from bgjob.cli import add_match_arguments, match_command
from bgjob_django.conf import get_client
from bgjob_django.display import entry_details, entry_summary


class Command(BaseCommand):
    help = "Browse the dead-letter queue; retry, delete or purge dead letters; find or erase them by arg content."
    requires_system_checks: tuple[str, ...] = ()

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="list|show|retry|delete|purge|find|erase")

        def filters(p: Any) -> None:
            p.add_argument("--queue")
            p.add_argument("--type", dest="job_type", metavar="TYPE")
            p.add_argument("--reason")

        p = sub.add_parser("list", help="dead letters, newest first")
        filters(p)
        p.add_argument("--limit", type=int, default=50)
        p.add_argument("--before", type=int, metavar="SEQ", help="entries older than this seq (the next page)")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("show", help="one dead letter with its arg, headers, error and traceback")
        p.add_argument("id")
        p = sub.add_parser("retry", help="send dead letters back to their queues")
        p.add_argument("ids", nargs="*", metavar="id")
        p.add_argument("--all", action="store_true", help="every dead letter matching the filters")
        filters(p)
        p = sub.add_parser("delete", help="delete dead letters")
        p.add_argument("ids", nargs="+", metavar="id")
        p = sub.add_parser("purge", help="delete all dead letters (matching the filters)")
        filters(p)
        p.add_argument("--yes", action="store_true", help="really purge")
        p = sub.add_parser("find", help="dead letters whose arg matches --match PATH=VALUE (bounded scan), masked")
        add_match_arguments(p)
        p = sub.add_parser("erase", help="delete the dead letters whose arg matches (a data-subject request)")
        add_match_arguments(p)

    def handle(self, *args: Any, **options: Any) -> None:
        dlq = get_client().dlq
        action = options["action"]
        try:
            getattr(self, f"do_{action}")(dlq, options)
        except bgjob.DeadLetterNotFound as exc:
            raise CommandError(str(exc)) from exc
        except bgjob.BgjobError as exc:
            raise CommandError(str(exc)) from exc

    @staticmethod
    def _filters(options: dict[str, Any]) -> dict[str, Any]:
        return {"queue": options["queue"], "job_type": options["job_type"], "reason": options["reason"]}

    def do_list(self, dlq: bgjob.DeadLetters, options: dict[str, Any]) -> None:
        entries = dlq.list(limit=options["limit"], before=options["before"], **self._filters(options))
        if options["json"]:
            self.stdout.write(json.dumps([entry_summary(e) for e in entries], indent=2, default=str))
            return
        self.stdout.write(f"{'SEQ':>8} {'ID':34} {'QUEUE':12} {'TYPE':24} {'REASON':16} {'ATTEMPTS':>8}  "
                          f"{'LAST FAILURE':20} ERROR")  # fmt: skip
        for e in entries:
            last = e.last_failure_at.strftime("%Y-%m-%d %H:%M:%S") if e.last_failure_at else "-"
            error = e.masked_error.splitlines()[0][:60] if e.error else ""
            self.stdout.write(f"{e.seq:>8} {e.id:34} {e.queue:12} {e.type:24} {e.reason:16} {e.attempts:>8}  "
                              f"{last:20} {error}")  # fmt: skip
        total = dlq.count(**self._filters(options))
        more = f"; next page: --before {entries[-1].seq}" if entries and len(entries) < total else ""
        self.stdout.write(f"({len(entries)} shown of {total}{more})")

    def do_show(self, dlq: bgjob.DeadLetters, options: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(entry_details(dlq.get(options["id"])), indent=2, default=str))

    def do_find(self, dlq: bgjob.DeadLetters, options: dict[str, Any]) -> None:
        """find/erase; when some dead letters could not be checked (encrypted with a key this client lacks, ...),
        their warning goes to stderr and the command exits with 1 (CommandError)."""
        lines, warning = match_command(dlq, options)
        self.stdout.write("\n".join(lines))
        if warning:
            raise CommandError(f"warning: {warning}", returncode=1)

    do_erase = do_find

    def do_retry(self, dlq: bgjob.DeadLetters, options: dict[str, Any]) -> None:
        if options["all"] == bool(options["ids"]):
            raise CommandError("give dead letter ids, or --all (with --queue/--type/--reason to narrow it)")
        if options["ids"]:
            for entry_id in options["ids"]:
                dlq.retry(entry_id)
                self.stdout.write(f"retried {entry_id}")
            return
        filters = self._filters(options)
        retried, before = 0, None
        # Page downwards from the newest entry now: jobs that fail again while we retry come back above it.
        while page := dlq.list(limit=100, before=before, **filters):
            for entry in page:
                try:
                    dlq.retry(entry.id)
                except bgjob.DeadLetterNotFound:
                    continue  # retried or deleted by someone else meanwhile
                retried += 1
            before = page[-1].seq
        self.stdout.write(f"retried {retried} dead letters")

    def do_delete(self, dlq: bgjob.DeadLetters, options: dict[str, Any]) -> None:
        for entry_id in options["ids"]:
            dlq.delete(entry_id)
            self.stdout.write(f"deleted {entry_id}")

    def do_purge(self, dlq: bgjob.DeadLetters, options: dict[str, Any]) -> None:
        filters = self._filters(options)
        if not options["yes"]:
            raise CommandError(f"would purge {dlq.count(**filters)} dead letters; add --yes to do it")
        self.stdout.write(f"purged {dlq.purge(**filters)} dead letters")
