"""The `bgjob` command: worker, send, dlq, status, events, job, queue, server, demo."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .client import Client
from .core import QueueConfig
from .errors import BgjobError, ConfigurationError, DeadLetterNotFound
from .handler import Mux
from .logs import configure_logging
from .provisioning import NO_LIMIT, QUEUE_OPTIONS, show_value
from .redaction import mask_arg
from .settings import Settings


def load_mux(target: str) -> Mux:
    """Import `module[:attr]` (attr defaults to `mux`) and return the Mux it names."""
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BgjobError(f"cannot import {module_name!r}: {exc}") from exc
    obj = getattr(module, attr or "mux", None)
    if callable(obj) and not isinstance(obj, Mux):
        obj = obj()
    if not isinstance(obj, Mux):
        raise BgjobError(f"{module_name}:{attr or 'mux'} is not a bgjob.Mux (give MODULE:ATTR)")
    return obj


def _client(interactive: bool = False) -> Client:
    """A connected client from the environment's settings; `interactive` (dlq, status): bounded to about
    INTERACTIVE_BOUND seconds when NATS is unreachable (`interactive_settings`)."""
    settings = Settings.from_env()
    return Client(interactive_settings(settings) if interactive else settings).connect()


def server_line(client: Client) -> str:
    """`server: <URL without credentials>`, plus `(embedded, data dir <path>...)` when it is an embedded server
    (and whether this command started it): the line `bgjob status`/`worker` and the Django commands print first.
    Connects the client if it is not connected; raises what connecting raises (bgjob errors)."""
    from .server import embedded_use

    use = embedded_use(client._raw_url())
    return f"server: {client.url}" + (f" ({use.describe()})" if use is not None else "")


def cmd_worker(args: argparse.Namespace) -> int:
    from .logs import LogJobs
    from .middleware import Metrics, Recovery, RequestId
    from .retry_policy import RetryPolicy
    from .worker import Worker

    if args.pool == "gevent":
        _patch_gevent()
    mux = load_mux(args.target)
    client = _client()
    try:
        middleware: list[Any] = [Recovery(), RequestId(), LogJobs()]
        if args.metrics_port is not None:
            middleware.append(Metrics(_serve_metrics(client, args.metrics_addr, args.metrics_port)))
        worker = Worker(client, mux, queue=args.queue, concurrency=args.concurrency, grace_period=args.grace,
                        middleware=middleware, retry_policy=RetryPolicy(max_attempts=args.max_attempts),
                        pool=args.pool, time_limit=args.time_limit, claims=args.claims or (),
                        groups=args.groups or ())  # fmt: skip
        print(server_line(client), flush=True)
        worker.run()
    finally:
        client.close()
    return 0


def _patch_gevent() -> None:
    """Monkey-patch for --pool gevent, before the handlers' module and the client are loaded."""
    import warnings

    try:
        from gevent import monkey
    except ImportError as exc:
        raise BgjobError(f'--pool gevent needs gevent: pip install "bgjob[gevent]" ({exc})') from exc
    with warnings.catch_warnings():
        # bgjob's own imports (ssl via nats-py) came first; its runtime uses the stdlib originals anyway.
        warnings.simplefilter("ignore", monkey.MonkeyPatchWarning)
        monkey.patch_all()


def _serve_metrics(client: Client, addr: str, port: int) -> Any:
    """Start the /metrics endpoint (job metrics + queue gauges); returns the MetricStorage for Metrics."""
    try:
        from .contrib.prometheus import PrometheusMetricStorage, start_metrics_server
    except ImportError as exc:
        raise BgjobError(f'--metrics-port needs prometheus-client: pip install "bgjob[prometheus]" ({exc})') from exc
    storage = PrometheusMetricStorage()
    try:
        start_metrics_server(port, addr, client=client)
    except OSError as exc:
        raise BgjobError(f"cannot serve metrics on {addr}:{port}: {exc}") from exc
    logging.getLogger("bgjob.worker").info("Prometheus metrics on http://%s:%d/metrics", addr, port)
    return storage


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    """`--claim NAME` and `--group NAME` (each repeatable) into `claims` and `groups`: `bgjob worker`'s and
    `manage.py bgjob_worker`'s (Worker's `claims=` and `groups=`, bgjob.placement)."""
    parser.add_argument("--claim", dest="claims", action="append", metavar="NAME",
                        help="hold this placement claim: also run the jobs sent with target=NAME "
                        "(repeatable)")  # fmt: skip
    parser.add_argument("--group", dest="groups", action="append", metavar="NAME",
                        help="serve only this worker group's job types (handlers registered group=NAME; "
                        "repeatable); run a worker without --group beside it for the other types")  # fmt: skip


def cmd_send(args: argparse.Namespace) -> int:
    try:
        arg = json.loads(args.json)
    except ValueError as exc:
        raise BgjobError(f"JSON argument is not valid JSON: {exc}") from exc
    client = _client()
    try:
        print(client.send_job(args.type, arg, queue=args.queue, delay=args.delay, job_id=args.job_id,
                              target=args.target, partition_key=args.partition_key,
                              target_timeout=args.target_timeout))  # fmt: skip
    finally:
        client.close()
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    client = _client(interactive=True)
    try:
        return dlq_command(client.dlq, vars(args), out=print, err=lambda line: print(f"bgjob: {line}", file=sys.stderr))
    finally:
        client.close()


# -- bgjob dlq (also manage.py bgjob_dlq): one implementation -------------------------------------------------------
#: seconds an interactive command (bgjob dlq/status, manage.py bgjob_dlq/bgjob_status, the admin pages) waits for
#: an unreachable NATS before it says so: Settings.retry_for and connect_timeout are capped to it.
INTERACTIVE_BOUND = 2.0


def interactive_settings(settings: Settings) -> Settings:
    """`settings` with retry_for and connect_timeout capped to INTERACTIVE_BOUND: someone is waiting for the
    answer, so an unreachable NATS is reported within about two seconds instead of retried for retry_for."""
    import dataclasses

    return dataclasses.replace(settings, retry_for=min(settings.retry_for, INTERACTIVE_BOUND),
                               connect_timeout=min(settings.connect_timeout, INTERACTIVE_BOUND))  # fmt: skip


def _add_filters(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--queue", help=f"only the dead letters of this queue ({what})")
    parser.add_argument("--type", dest="job_type", metavar="TYPE", help=f"only this job type ({what})")
    parser.add_argument("--reason", help=f"only this reason: handler, max_attempts, decode, ... ({what})")


def add_dlq_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sub-commands of `bgjob dlq` to `parser` (also manage.py bgjob_dlq's): list, show, retry, delete,
    purge, find, erase. Run them with `dlq_command`."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="list|show|retry|delete|purge|find|erase")
    p = sub.add_parser("list", help="dead letters, newest first")
    _add_filters(p, "combinable")
    p.add_argument("--limit", type=int, default=50, help="show at most this many (default 50)")
    p.add_argument("--before", type=int, metavar="SEQ", help="entries older than this seq (the next page)")
    p.add_argument("--json", action="store_true", help="as JSON (masked; dates in ISO 8601)")
    p = sub.add_parser("show", help="one dead letter as JSON, masked: its arg (as JSON), headers, error and "
                       "traceback (a list of its lines)")  # fmt: skip
    p.add_argument("id")
    p = sub.add_parser("retry", help="send dead letters back to their queues")
    p.add_argument("ids", nargs="*", metavar="id", help="all are tried; each one not found is reported (exit 1)")
    p.add_argument("--all", action="store_true", help="every dead letter matching the filters")
    _add_filters(p, "with --all")
    p = sub.add_parser("delete", help="delete dead letters")
    p.add_argument("ids", nargs="+", metavar="id", help="all are tried; each one not found is reported (exit 1)")
    p = sub.add_parser("purge", help="delete all dead letters (matching the filters)")
    _add_filters(p, "combinable")
    p.add_argument("--yes", action="store_true", help="really purge")
    p.add_argument("--up-to", type=int, metavar="SEQ", dest="up_to",
                   help="only dead letters stored up to this DLQ sequence (the one a dry run printed): newer stay")
    p = sub.add_parser("find", help="dead letters whose arg matches --match PATH=VALUE (bounded scan), masked")
    add_match_arguments(p)
    p = sub.add_parser("erase", help="delete the dead letters whose arg matches (a data-subject request)")
    add_match_arguments(p)


def dlq_command(dlq: Any, options: Mapping[str, Any], *, out: Callable[[str], None],
                err: Callable[[str], None]) -> int:  # fmt: skip
    """Run the `bgjob dlq` sub-command `options["action"]` (the options `add_dlq_arguments` parsed): lines for
    the user go to `out`, problems to `err`. Returns the exit status: 0, or 1 when some ids were not found
    (retry/delete try every id and report each miss), purge lacks --yes, or find/erase could not check some dead
    letters. Raises BgjobError (DeadLetterNotFound for `show`, ConnectionError, ...) for what stops it. Dead
    letters are always shown masked (DeadLetter.masked_*)."""
    action = options["action"]
    filters = {"queue": options.get("queue"), "job_type": options.get("job_type"), "reason": options.get("reason")}
    if action == "list":
        entries = dlq.list(limit=options["limit"], before=options.get("before"), **filters)
        if options.get("json"):
            out(json.dumps([entry_dict(e) for e in entries], indent=2, ensure_ascii=False))
            return 0
        out(f"{'SEQ':>8} {'ID':34} {'QUEUE':12} {'TYPE':24} {'REASON':16} {'ATTEMPTS':>8}  "
            f"{'LAST FAILURE (UTC)':20} ERROR")
        for e in entries:
            last = e.last_failure_at.strftime("%Y-%m-%d %H:%M:%S") if e.last_failure_at else "-"
            error = cut(e.masked_error.splitlines()[0], 60) if e.error else ""
            out(f"{e.seq:>8} {cut(e.id, 200):34} {e.queue:12} {e.type:24} {e.reason:16} {e.attempts:>8}  {last:20} "
                f"{error}")  # fmt: skip
        total = dlq.count(**filters)
        more = f"; next page: --before {entries[-1].seq}" if entries and len(entries) < total else ""
        out(f"({len(entries)} shown of {total}{more})")
        return 0
    if action == "show":
        out(json.dumps(entry_dict(dlq.get(options["id"]), full=True), indent=2, ensure_ascii=False))
        return 0
    if action in ("retry", "delete"):
        if action == "retry" and options.get("all") == bool(options["ids"]):
            raise BgjobError("give dead letter ids, or --all (with --queue/--type/--reason to narrow it)")
        if options["ids"]:
            return _each_id(getattr(dlq, action), options["ids"], "retried" if action == "retry" else "deleted",
                            out, err)  # fmt: skip
        retried, before = 0, None
        # Page downwards from the newest entry now: jobs that fail again while we retry come back above it.
        while page := dlq.list(limit=100, before=before, **filters):
            for entry in page:
                try:
                    dlq.retry(entry.id)
                except DeadLetterNotFound:
                    continue  # retried or deleted by someone else meanwhile
                retried += 1
            before = page[-1].seq
        out(f"retried {dead_letters(retried)}")
        return 0
    if action == "purge":
        up_to = options.get("up_to")
        if up_to is not None and up_to < 0:
            err(f"--up-to must be a DLQ sequence (>= 0), not {up_to}")
            return 2
        if not options.get("yes"):
            bound = dlq.last_seq() if up_to is None else up_to
            count = dlq.count(**filters) - dlq.count(**filters, after=bound)
            err(f"would purge {dead_letters(count)} (up to DLQ sequence {bound}); add --yes --up-to {bound} to purge "
                "just those, or --yes for all at the time")  # fmt: skip
            return 1
        purged = dlq.purge(**filters, up_to=up_to)
        kept = dlq.count(**filters, after=up_to) if up_to is not None else 0
        out(f"purged {dead_letters(purged)}" + (f"; {kept} stored after sequence {up_to} kept" if kept else ""))
        return 0
    if action in ("find", "erase"):
        lines, warning = match_command(dlq, options)
        out("\n".join(lines))
        if warning:
            err(f"warning: {warning}")
            return 1
        return 0
    raise BgjobError(f"unknown dlq action {action!r}")


def _each_id(act: Callable[[str], Any], ids: Sequence[str], done: str, out: Callable[[str], None],
             err: Callable[[str], None]) -> int:  # fmt: skip
    """`act(id)` for every id, a miss (DeadLetterNotFound) reported and the rest still done; 1 if any missed."""
    missed = 0
    for entry_id in ids:
        try:
            act(entry_id)
        except DeadLetterNotFound as exc:
            err(f"error: {exc}")
            missed += 1
            continue
        out(f"{done} {entry_id}")
    if missed:
        err(f"error: {missed} of {len(ids)} dead letters not found ({done} {len(ids) - missed})")
    return 1 if missed else 0


def dead_letters(count: int) -> str:
    """"1 dead letter", "3 dead letters"."""
    return f"{count} dead letter{'' if count == 1 else 's'}"


def cut(text: str, width: int) -> str:
    """`text` for a terminal table cell: control characters (ESC, NUL, ...) written as escapes (`\\x1b`), so that
    stored text cannot drive the operator's terminal; shortened to `width` characters, with an ellipsis when
    something was cut."""
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= width else text[: width - 1] + "…"


#: C0 and C1 control characters and DEL: what a terminal may act on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def entry_dict(entry: Any, full: bool = False) -> dict[str, Any]:
    """A dead letter as the commands show it (`list --json`, `show`), JSON-ready: masked (DeadLetter.masked_*),
    never raw; dates in ISO 8601 (None when unknown). `full` adds the arg (as JSON; bytes as a Python literal),
    headers and traceback: a list of its lines (each printed on a line of its own, not one string of `\\n`s), or
    None."""
    data = {
        "id": entry.id, "seq": entry.seq, "queue": entry.queue, "type": entry.type, "reason": entry.reason,
        "error": entry.masked_error, "attempts": entry.attempts, "first_failure_at": _iso(entry.first_failure_at),
        "last_failure_at": _iso(entry.last_failure_at), "enqueued_at": _iso(entry.enqueued_at),
        "request_id": entry.request_id,
    }  # fmt: skip
    if full:
        arg = entry.masked_arg
        data["arg"] = arg if not isinstance(arg, bytes) else repr(arg)
        data["headers"] = dict(entry.masked_headers)
        traceback = entry.masked_traceback
        data["traceback"] = traceback.rstrip("\n").splitlines() if traceback else None
    return data



# -- bgjob dlq find|erase (also manage.py bgjob_dlq) ---------------------------------------------------------------
def add_match_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `dlq find` and `dlq erase` to `parser` (`--match PATH=VALUE` repeated, the filters,
    `--scan-limit`, `--after`, `--yes`, `--json`); run them with `match_command`."""
    from .dead_letters import DEFAULT_SCAN_LIMIT

    parser.add_argument("--match", action="append", required=True, metavar="PATH=VALUE",
                        help="a dotted JSON path into the arg and its value (JSON, else text; at most 10,000 "
                        "characters), e.g. customer.id=7; repeat to require several. Exits with 1 when some dead "
                        "letters could not be checked (encrypted with a key this client lacks)")  # fmt: skip
    parser.add_argument("--queue")
    parser.add_argument("--type", dest="job_type", metavar="TYPE")
    parser.add_argument("--reason")
    parser.add_argument("--scan-limit", type=int, default=DEFAULT_SCAN_LIMIT, metavar="N",
                        help=f"read at most N dead letters, oldest first (one server request each; default "
                        f"{DEFAULT_SCAN_LIMIT})")  # fmt: skip
    parser.add_argument("--after", type=int, metavar="SEQ", help="start after this DLQ sequence (to go on)")
    parser.add_argument("--yes", action="store_true", help="erase: really delete the matching dead letters")
    parser.add_argument("--json", action="store_true", help="find: the matches as JSON (masked)")


def match_command(dlq: Any, options: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """Run `find` or `erase` (options["action"]) with the options `add_match_arguments` parsed; returns (the lines
    to print, a warning or None). The warning (DeadLetterScan.warning) says how many dead letters could not be
    checked (encrypted with a key this client lacks, not JSON): print it to stderr and exit with 1. Dead letters
    are shown masked. `erase` without `yes` deletes nothing and raises BgjobError saying how many would be
    erased (and the warning). Raises InvalidMatch/InvalidJob for bad options (a value over
    arg_match.MAX_VALUE_CHARS too), ConnectionError."""
    from .arg_match import parse_match

    match = parse_match(options["match"])
    scope = {"queue": options.get("queue"), "job_type": options.get("job_type"), "reason": options.get("reason"),
             "scan_limit": options["scan_limit"], "after": options.get("after")}  # fmt: skip
    erase = options["action"] == "erase"
    scan = dlq.erase(match, **scope) if erase and options.get("yes") else dlq.find(match, **scope)
    reach = "the whole DLQ" if scan.complete else f"not the end: go on with --after {scan.last_seq}"
    summary = f"scanned {dead_letters(scan.scanned)} ({reach})"
    if erase and not options.get("yes"):
        also = f"; warning: {scan.warning}" if scan.warning else ""
        raise BgjobError(f"would erase {dead_letters(len(scan.matches))} ({summary}); add --yes to do it{also}")
    if erase:
        return [f"erased {dead_letters(len(scan.matches))}; {summary}"], scan.warning
    if options.get("json"):
        found = [entry_dict(e, full=True) for e in scan.matches]
        return [json.dumps(found, indent=2, ensure_ascii=False)], scan.warning
    lines = [f"{e.seq:>8} {e.id:34} {e.queue:12} {e.type:20} {cut(json.dumps(e.masked_arg, default=repr), 80)}"
             for e in scan.matches]  # fmt: skip
    return [*lines, f"{len(scan.matches)} matching; {summary}"], scan.warning


def queue_table(client: Client) -> list[str]:
    """Per queue: pending, in-flight, retrying, scheduled, routed (on the singleton, partition, claim and group
    lanes: `QueueStats.routed`) and dead jobs, as lines (a header first). Shared by `bgjob status` and
    `manage.py bgjob_status`."""
    lines = [f"{'QUEUE':24} {'PENDING':>10} {'IN-FLIGHT':>10} {'RETRYING':>10} {'SCHEDULED':>10} {'ROUTED':>8} "
             f"{'DLQ':>8}"]  # fmt: skip
    for name in client.queues():
        s = client.queue_stats(name)
        lines.append(f"{s.queue:24} {s.pending:>10} {s.in_flight:>10} {s.retrying:>10} {s.scheduled:>10} "
                     f"{s.routed:>8} {s.dlq:>8}")  # fmt: skip
    return lines


def status_lines(client: Client, outbox_line: str | None = None) -> list[str]:
    """What `bgjob status` and `manage.py bgjob_status` print: the server, the queue table, `outbox_line` (the
    Django outbox's backlog) when given, the periodic jobs and the live workers, counted as processes (one
    process serving three queues is one process with three queue workers). Raises bgjob errors."""
    lines = [server_line(client), *queue_table(client)]
    if outbox_line is not None:
        lines += ["", outbox_line]
    periodic = client.schedules()
    if periodic:
        lines += ["", f"{'SCHEDULE':24} {'QUEUE':16} {'TYPE':24} {'CRON':18} {'TZ':16} NEXT RUN (UTC)"]
        for p in periodic:
            next_run = p.next_run().strftime("%Y-%m-%d %H:%M:%S")
            lines.append(f"{p.name:24} {p.queue:16} {p.job_type:24} {p.cron:18} {p.tz:16} {next_run}")
    workers = client.workers()
    processes = len({(w.host, w.pid) for w in workers})
    lines += ["", f"live workers: {processes} process{'' if processes == 1 else 'es'} "
              f"({len(workers)} queue worker{'' if len(workers) == 1 else 's'})"]  # fmt: skip
    if workers:
        placed = any(w.claims or w.groups for w in workers)  # a PLACEMENT column only when some worker has some
        lines.append(f"{'WORKER':40} {'HOST:PID':24} {'QUEUES':16} {'CONC':>5} {'IN-FLIGHT':>9} {'PROCESSED':>10}  "
                     "LAST BEAT (UTC)" + ("  PLACEMENT" if placed else ""))  # fmt: skip
        for w in sorted(workers, key=lambda w: (w.host, w.pid, w.id)):
            beat = w.last_beat.strftime("%H:%M:%S") if w.last_beat else "-"
            where = cut(f"{w.host}:{w.pid}", 24)
            placement = "; ".join(f"{what} {','.join(map(str, names))}"
                                  for what, names in (("claims", w.claims), ("groups", w.groups)) if names)  # fmt: skip
            last = f"{beat:15}  {cut(placement, 200) or '-'}" if placed else beat
            lines.append(f"{w.id:40} {where:24} {','.join(w.queues):16} {w.concurrency:>5} {w.in_flight:>9} "
                         f"{w.processed:>10}  {last}")  # fmt: skip
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(interactive=True)
    try:
        print("\n".join(status_lines(client)))
    finally:
        client.close()
    return 0


# -- bgjob queue show|configure (also manage.py bgjob_queue) -------------------------------------------------------
def add_queue_arguments(parser: argparse.ArgumentParser, *, from_settings: str | None = None) -> None:
    """Add the `show [QUEUE]` and `configure QUEUE --ack-wait S ...` sub-commands to `parser` (the `bgjob queue`
    parser, or manage.py bgjob_queue's); run them with `queue_command`. `from_settings` (a help text): configure
    also takes `--from-settings` instead of QUEUE (manage.py bgjob_queue applies the settings' QUEUES entries)."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="show|configure")
    p = sub.add_parser("show", help="a queue's configuration as the server has it (no QUEUE: every queue)")
    p.add_argument("queue", nargs="?")
    p = sub.add_parser("configure", help="change a queue's limits, consumer (ack wait, max ack pending) or stream "
                       "settings", description="Change a queue's configuration on the server. Workers read ack "
                       "wait, max age and max deliveries when they start: restart them after a change.")  # fmt: skip
    p.add_argument("queue", nargs="?" if from_settings else None)
    if from_settings:
        p.add_argument("--from-settings", action="store_true", help=from_settings)
    p.add_argument("--ack-wait", type=float, metavar="SECONDS", help="seconds a delivered job may go unacknowledged "
                   "before it is redelivered (workers send heartbeats every third of it)")  # fmt: skip
    p.add_argument("--max-ack-pending", type=int, metavar="N", help="jobs delivered and unsettled at once, "
                   "across all workers of the queue")  # fmt: skip
    p.add_argument("--replicas", type=int, metavar="N", help="copies of the queue's stream in a cluster (1-5)")
    p.add_argument("--duplicate-window", type=float, metavar="SECONDS", help="seconds within which a repeated job "
                   "id is dropped")  # fmt: skip
    p.add_argument("--allow-msg-schedules", action="store_true", default=None,
                   help="switch message schedules on (delayed, retried and periodic jobs need them)")  # fmt: skip
    p.add_argument("--max-entries", type=_limit(int), metavar="N|none", help="refuse a send (QueueFull) when the "
                   "queue's stream holds N messages (ready, running, delayed, retrying, periodic schedules); none "
                   "removes the limit")  # fmt: skip
    p.add_argument("--max-age", type=_limit(float), metavar="SECONDS|none", help="dead-letter a job ready that "
                   "long before a worker takes it (reason expired) instead of running it; delayed jobs age from "
                   "when they become due; none removes the limit")  # fmt: skip
    p.add_argument("--max-deliveries", type=_limit(int), metavar="N|none", help="the server delivers a message at "
                   "most N times (>= 2); the worker dead-letters the last delivery unrun (reason max_deliveries); "
                   "none removes the cap")  # fmt: skip


def _limit(kind: type) -> Callable[[str], Any]:
    """An argparse type for a limit: a number, or `none` (NO_LIMIT: remove the limit)."""

    def parse(text: str) -> Any:
        if text.strip().lower() in ("none", "off", "unlimited"):
            return NO_LIMIT
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def queue_command(client: Client, options: Mapping[str, Any]) -> list[str]:
    """Run `show` or `configure` with the options `add_queue_arguments` parsed (argparse's namespace as a dict,
    or Django's options); returns the lines to print. Raises BgjobError (ConfigurationError, InvalidJob) with a
    message for the user."""
    if options["action"] == "show":
        queues = [options["queue"]] if options.get("queue") else client.queues()
        if not queues:
            return ["no queues yet: they are created when the first job is sent or a worker starts"]
        lines: list[str] = []
        for queue in queues:
            config = client.queue_config(queue)
            if config is None:
                raise BgjobError(f"queue {queue!r} does not exist yet: it is created when the first job is sent "
                                 "or a worker starts")  # fmt: skip
            lines.extend(_queue_lines(config))
        return lines
    if not options.get("queue"):
        raise ConfigurationError("configure needs a QUEUE" + (" (or --from-settings)" if "from_settings" in options
                                                               else ""))  # fmt: skip
    changes = {name: options.get(name) for name in QUEUE_OPTIONS}
    if all(value is None for value in changes.values()):
        flags = ", ".join(flag for flag, _ in QUEUE_OPTIONS.values())
        raise ConfigurationError(f"nothing to configure: give at least one of {flags}")
    changed = client.configure_queue(options["queue"], **changes)
    if not changed:
        return [f"queue {options['queue']}: nothing changed (the server already has these values)"]
    return [f"queue {options['queue']}: {name} {show_value(old)} -> {show_value(new)}"
            for name, (old, new) in changed.items()]  # fmt: skip


def _queue_lines(config: QueueConfig) -> list[str]:
    consumer = config.consumer or "not created yet (the first worker creates it from its settings)"
    return [
        f"queue {config.queue}",
        f"  {'stream':20} {config.stream}",
        f"  {'consumer':20} {consumer}",
        f"  {'ack_wait':20} {show_value(config.ack_wait) if config.consumer else '-'}",
        f"  {'max_ack_pending':20} {show_value(config.max_ack_pending) if config.consumer else '-'}",
        f"  {'replicas':20} {config.replicas}",
        f"  {'duplicate_window':20} {show_value(config.duplicate_window)}",
        f"  {'allow_msg_schedules':20} {show_value(config.allow_msg_schedules)}",
        f"  {'max_entries':20} {show_value(config.max_entries) if config.max_entries else 'no limit'}",
        f"  {'max_age':20} {show_value(config.max_age) if config.max_age else 'no limit'}",
        f"  {'max_deliveries':20} "
        + (show_value(config.max_deliveries) if config.max_deliveries else "no cap" if config.consumer else "-"),
    ]


def cmd_queue(args: argparse.Namespace) -> int:
    client = _client(interactive=True)
    try:
        print("\n".join(queue_command(client, vars(args))))
    finally:
        client.close()
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from . import server

    data_dir = args.data_dir or Settings.from_env().data_dir
    if args.stop:
        stopped = server.stop_embedded_server(data_dir)
        print("stopped" if stopped else "no embedded server was running")
        return 0
    return server.run_foreground(data_dir, port=args.port)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo

    return demo()


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds > 0 (a time limit); argparse reports anything else."""
    from .handler import time_limit_seconds

    try:
        seconds = time_limit_seconds(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0") from exc
    assert seconds is not None
    return seconds


# -- lifecycle events and job status (bgjob.events) ------------------------------------------------------------
def since_time(text: str) -> Any:
    """An argparse type for --since: an age (`90s`, `10m`, `2h`, `3d`) or an ISO 8601 time (UTC without an
    offset); returns a timedelta or an aware datetime."""
    from datetime import timedelta

    from .job import parse_time

    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        return timedelta(seconds=float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]])
    moment = parse_time(text)
    if moment is None:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an age (90s, 10m, 2h, 3d) nor an ISO 8601 time")
    return moment


def add_events_arguments(parser: argparse.ArgumentParser) -> None:
    """`bgjob events` / `manage.py bgjob_events`: filters, --since, --follow, --json."""
    parser.add_argument("--queue", help="only this queue's events")
    parser.add_argument("--type", dest="job_type", help="only this job type's events")
    parser.add_argument("--job", dest="job_id", metavar="ID", help="only this job's events")
    parser.add_argument("--since", type=since_time, help="from this age (10m, 2h, 3d) or ISO time on (default: all "
                        "kept)")  # fmt: skip
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new events until interrupted")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def event_line(event: Any) -> str:
    """One event as a line: time, kind, queue, type, id, attempt, then worker, reason, due and error if set."""
    parts = [event.time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], f"{event.kind.value:16}", event.queue,
             event.job_type, event.job_id, f"attempt {event.attempt}"]  # fmt: skip
    for name, value in (("worker", event.worker), ("reason", event.reason), ("due", _iso(event.due))):
        if value:
            parts.append(f"{name} {value}")
    if event.error:
        parts.append(f"error {cut(' '.join(event.error.split()), 200)}")
    return "  ".join(parts)


def events_command(client: Client, options: Mapping[str, Any], *, out: Callable[[str], None]) -> int:
    """Print the events the options select (see add_events_arguments); with `follow`, until interrupted."""
    if not client.settings.events:
        out("note: events are off for this process (BGJOB_EVENTS): only what other processes published is shown")
    follow = bool(options.get("follow"))
    found = 0
    try:
        for event in client.events(queue=options.get("queue"), job_type=options.get("job_type"),
                                   job_id=options.get("job_id"), since=options.get("since"),
                                   timeout=None if follow else 5.0, follow=follow):  # fmt: skip
            found += 1
            out(json.dumps(event.as_dict(), ensure_ascii=False) if options.get("json") else event_line(event))
    except KeyboardInterrupt:
        pass
    if not found and not follow:
        out("no events")
    return 0


def job_status_lines(client: Client, job_id: str) -> list[str]:
    """`bgjob job ID`: the job's state, its latest progress (masked), then its events (oldest first)."""
    status = client.job_status(job_id)  # with the job's latest progress (job.report_progress, bgjob.long_running)
    shown = None if status.progress is None else progress_text(shown_progress(status))
    progress = [f"  progress {shown} (at {_iso(status.progress_at)})"] if shown is not None else []
    if status.event is None:
        if progress:  # a job whose handler reports progress is known, whatever its events
            return [f"job {job_id}: no lifecycle events kept (Settings.events is off, or they expired); progress "
                    "below", *progress]  # fmt: skip
        why = "" if client.settings.events else " (events are off for this process: BGJOB_EVENTS=1 turns them on)"
        return [f"job {job_id}: unknown: no event of it is kept{why}", *progress]
    lines = [f"job {job_id}: {status.state.value} (attempt {status.attempt}, last event {status.event.kind.value} "
             f"at {_iso(status.time)})"]  # fmt: skip
    if status.due is not None:
        lines.append(f"  due {_iso(status.due)}")
    claim = waiting_claim(client, status)
    if claim is not None:
        lines.append(f"  waiting for a worker with claim {claim!r}")
    lines += progress
    lines += ["", *(event_line(e) for e in client.events(job_id=job_id, follow=False))]
    return lines


def waiting_claim(client: Client, status: Any) -> str | None:
    """The claim a job sent with `target=` waits for, when its `JobStatus` is ready or scheduled from its
    `enqueued` event: read from the job's stored message, one request (bgjob.placement). A delayed job's schedule
    is found by its id; a due one is the first message on its queue's `target.*.<type>` subjects stored from when
    it was sent (or due) on, and only when that message is this job. None otherwise (not placed, taken, another
    job stored first, or the request failed: it is a hint)."""
    import base64

    from .dlq import _parse_headers as stored_headers
    from .events import EventKind, JobState
    from .headers import HEADER_ID, TARGET
    from .job import format_time

    event, waiting = status.event, (JobState.READY, JobState.SCHEDULED)
    if event is None or event.kind is not EventKind.ENQUEUED or status.state not in waiting:
        return None

    async def read(core: Any) -> str | None:
        topology = core.topology
        request = ({"last_by_subj": topology.delayed_filter(event.queue, event.job_id)}
                   if status.state is JobState.SCHEDULED else
                   {"start_time": format_time(event.due or event.time),
                    "next_by_subj": topology.target_subject(event.queue, "*", event.job_type)})  # fmt: skip
        reply = await core.nc.request(f"{core.js._prefix}.STREAM.MSG.GET.{topology.queue_stream(event.queue)}",
                                      json.dumps(request).encode(), timeout=core.settings.request_timeout)  # fmt: skip
        stored = json.loads(reply.data).get("message")
        if not stored or not stored.get("hdrs"):
            return None
        headers = stored_headers(base64.b64decode(stored["hdrs"]))
        return headers.get(TARGET) if headers.get(HEADER_ID) == event.job_id else None

    try:
        return client.run(read, timeout=client.settings.request_timeout + 1.0)
    except (BgjobError, ValueError):
        return None

def job_status_dict(client: Client, job_id: str) -> dict[str, Any]:
    """`bgjob job ID --json`: the job's state, last event's fields, its latest progress (masked; bytes as
    `{"bytes": size}`) and when it was stored, and its events (oldest first), JSON-ready (times in ISO 8601)."""
    status = client.job_status(job_id)
    progress = shown_progress(status)
    if progress_text(progress) == PROGRESS_TOO_DEEP:
        progress = PROGRESS_TOO_DEEP
    found = list(client.events(job_id=job_id, follow=False)) if status.event is not None else []
    return {"id": job_id, "state": status.state.value, "attempt": status.attempt, "time": _iso(status.time),
            "due": _iso(status.due), "error": status.error,
            "progress": {"bytes": len(progress)} if isinstance(progress, bytes) else progress,
            "progress_at": _iso(status.progress_at), "events": [e.as_dict() for e in found]}  # fmt: skip


#: what a progress value nested too deeply to show (or mask) is shown as.
PROGRESS_TOO_DEEP = "<progress nested too deeply to show>"


def shown_progress(status: Any, extra_sensitive: frozenset[str] = frozenset()) -> Any:
    """A `JobStatus`'s progress as shown to a person: the values of the job's sensitive arg keys (and of
    `extra_sensitive`, e.g. the handler's) masked at any depth, as its arg is; `PROGRESS_TOO_DEEP` for a value
    nested too deeply to mask."""
    try:
        return mask_arg(status.progress, status.progress_sensitive | extra_sensitive)
    except RecursionError:
        return PROGRESS_TOO_DEEP


def progress_fraction(value: Any) -> tuple[float, float] | None:
    """(done, total) when `value` is a dict with finite numbers `done` and `total` (total > 0, and a finite
    percentage), else None."""
    if not isinstance(value, dict):
        return None
    done, total = value.get("done"), value.get("total")
    if not isinstance(done, int | float) or not isinstance(total, int | float) or bool in (type(done), type(total)):
        return None
    try:
        fits = total > 0 and math.isfinite(done) and math.isfinite(done * 100 / total)
    except OverflowError:  # ints past a float's range
        fits = False
    return (done, total) if fits else None


def progress_text(value: Any, width: int = 200) -> str:
    """A job's progress on one line: `300 / 1000 (30%)` for a dict with `done` and `total` numbers (its JSON after
    that when it holds more), else its JSON; the size of a bytes value. Control characters escaped (`cut`), lone
    surrogates as escapes, cut at `width` characters."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=repr)
    except (RecursionError, ValueError):
        text = PROGRESS_TOO_DEEP
    fraction = progress_fraction(value)
    if fraction is not None:
        done, total = fraction
        percent = done * 100 / total
        head = f"{_number(done)} / {_number(total)} ({math.floor(percent) if percent < 100 else round(percent)}%)"
        text = head if set(value) == {"done", "total"} else f"{head} {text}"
    return cut(text.encode("utf-8", "backslashreplace").decode("utf-8"), width)


def json_text(value: Any) -> str:
    """`value` as indented JSON, non-ASCII kept; a lone surrogate (from stored JSON) as its JSON escape."""
    return json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, int) or value.is_integer() else f"{value:g}"


def cmd_events(args: argparse.Namespace) -> int:
    client = _client(interactive=True)
    try:
        return events_command(client, vars(args), out=print)
    finally:
        client.close()


def cmd_job(args: argparse.Namespace) -> int:
    """`bgjob job ID`: exits 1 when no event of the job is kept (unknown), so that scripts can tell."""
    client = _client(interactive=True)
    try:
        if args.json:
            found = job_status_dict(client, args.job_id)
            print(json_text(found))
            return 1 if found["state"] == "unknown" else 0
        lines = job_status_lines(client, args.job_id)
    finally:
        client.close()
    print("\n".join(lines))
    return 1 if lines[0].startswith(f"job {args.job_id}: unknown") else 0


def cmd_workflow(args: argparse.Namespace) -> int:
    """`bgjob workflow show ID` / `bgjob workflow list [--limit N]` (bgjob.workflows)."""
    from . import workflows

    client = _client(interactive=True)
    try:
        if args.action == "show":
            lines = workflows.status_lines(workflows.WorkflowRun(client, args.run_id).status())
        else:
            lines = workflows.list_lines(workflows.list_runs(client, args.limit))
    finally:
        client.close()
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgjob", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("BGJOB_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("BGJOB_LOG_FORMAT", "text"),
                        help="text (with job and request ids) or json (one object per line)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run the handlers of MODULE[:ATTR] (a bgjob.Mux; ATTR defaults to mux)")
    p.add_argument("target")
    p.add_argument("--queue", default="default")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--pool", choices=["threads", "gevent"], default="threads")
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight jobs may finish after SIGTERM")
    p.add_argument("--max-attempts", type=int, default=10)
    p.add_argument("--time-limit", type=positive_seconds, metavar="SECONDS",
                   help="seconds a handler may run before TimeLimitExceeded is raised inside it (handlers with their "
                   "own time_limit keep theirs); default: no limit")  # fmt: skip
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (needs prometheus-client)")
    p.add_argument("--metrics-addr", default="127.0.0.1", help="address of the metrics endpoint (default: "
                   "127.0.0.1, this host only; 0.0.0.0 is the explicit choice to let other hosts scrape it). Only "
                   "/metrics answers")  # fmt: skip
    add_placement_arguments(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("send", help="enqueue a job; prints its id")
    p.add_argument("type")
    p.add_argument("json", nargs="?", default="null", help="the job's arg as JSON")
    p.add_argument("--queue", default="default")
    p.add_argument("--delay", type=float, help="seconds")
    p.add_argument("--job-id")
    p.add_argument("--target", metavar="CLAIM", help="only a worker holding this claim runs the job (a worker "
                   "started with --claim CLAIM); it waits in the queue until one does")  # fmt: skip
    p.add_argument("--partition-key", metavar="KEY", help="jobs with the same key run one at a time, in send order "
                   "(handlers registered partitioned=True); not with --target")  # fmt: skip
    p.add_argument("--target-timeout", type=float, metavar="SECONDS", help="with --target: dead-letter the job "
                   "(reason no_target) when no worker holds the claim this many seconds after it is due "
                   "(default: wait for ever)")  # fmt: skip
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("dlq", help="browse and act on the dead-letter queue")
    add_dlq_arguments(p)
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("status", help="queues: pending, in-flight, retrying, scheduled, routed, dead letters")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("events", help="jobs' lifecycle events (Settings.events), oldest first; --follow for new ones")
    add_events_arguments(p)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("job", help="a job's state and events by its id (Settings.events)")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="as JSON: state, progress (masked) and events")
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("queue", help="show or change a queue's configuration (ack wait, max ack pending, replicas, "
                       "max entries, max age, max deliveries)")  # fmt: skip
    add_queue_arguments(p)
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("workflow", help="workflow runs: show ID (each step's state, error, timings), list")
    wf = p.add_subparsers(dest="action", required=True)
    wf.add_parser("show", help="one run and its steps").add_argument("run_id", metavar="ID")
    wf.add_parser("list", help="recent runs, newest first").add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_workflow)

    p = sub.add_parser("server", help="run the embedded nats-server in the foreground")
    p.add_argument("--port", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--stop", action="store_true", help="stop the project's background embedded server")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("demo", help="embedded server + worker + a few jobs, with their outcomes printed")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:  # an unknown level, or a bad BGJOB_LOG_FORMAT
        parser.error(str(exc))
    try:
        code: int = args.func(args)
        return code
    except BgjobError as exc:
        print(f"bgjob: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `bgjob dlq list | head`: the reader is gone; end quietly (Python's documented way)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
