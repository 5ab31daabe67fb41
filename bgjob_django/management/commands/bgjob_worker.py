"""`manage.py bgjob_worker`: run the project's job handlers and django.tasks tasks."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import bgjob
from bgjob import job as jobmod
from bgjob.cli import add_placement_arguments, positive_seconds, server_line
from bgjob.logs import ContextFilter, configure_logging
from bgjob_django.conf import get_client, get_config
from bgjob_django.registry import registry
from bgjob_django.worker import WorkerGroup, declare_schedules, default_queues, serve_metrics


class Command(BaseCommand):
    help = (
        "Run bgjob workers: the handlers of every app's jobs.py and the project's django.tasks tasks, and the "
        "outbox relay (unless --no-relay). "
        "SIGTERM/SIGINT drain in-flight jobs (a second signal exits at once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", dest="queues", action="extend", nargs="+", metavar="QUEUE",
                            help="queues to serve (repeatable); default: BGJOB['QUEUES'] and the tasks' queues")
        parser.add_argument("--concurrency", type=int, help="handlers running at once, per queue; "
                            "default BGJOB['CONCURRENCY']")  # fmt: skip
        parser.add_argument("--pool", choices=["threads", "gevent"], default="threads",
                            help="run handlers in threads, or in greenlets (start under gevent's monkey-patching)")
        parser.add_argument("--time-limit", type=positive_seconds, metavar="SECONDS",
                            help="seconds a handler may run before bgjob.TimeLimitExceeded is raised inside it "
                            "(a handler's own time_limit wins); default BGJOB['TIME_LIMIT']")  # fmt: skip
        parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
        parser.add_argument("--metrics-addr", default="127.0.0.1", help="address of the metrics endpoint "
                            "(default: 127.0.0.1, this host only; 0.0.0.0 is the explicit choice to let other "
                            "hosts scrape it). Only /metrics answers")  # fmt: skip
        add_placement_arguments(parser)
        parser.add_argument("--no-schedules", action="store_true",
                            help="do not declare the project's periodic jobs at start")
        parser.add_argument("--no-relay", action="store_true", help="do not run the outbox relay in this process "
                            "(then run `manage.py bgjob_relay` somewhere, if the project uses the outbox)")
        parser.add_argument("--log-level", default="INFO", help="used when the project's LOGGING sets no root handler")
        parser.add_argument("--log-format", choices=["text", "json"], default="text",
                            help="used when the project's LOGGING sets no root handler")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] is not None and options["concurrency"] < 1:
            raise CommandError("--concurrency must be >= 1")
        worker_options = _pool_options(options["pool"])
        config = get_config()
        time_limit = options["time_limit"] if options["time_limit"] is not None else config.time_limit
        if time_limit is not None:
            worker_options["time_limit"] = time_limit
        for name in ("claims", "groups"):  # --claim NAME, --group NAME (bgjob.placement)
            if options.get(name):
                worker_options[name] = options[name]
        queues = list(dict.fromkeys(options["queues"] or default_queues(config)))
        for queue in queues:
            try:
                jobmod.validate_queue(queue)
            except bgjob.InvalidJob as exc:
                raise CommandError(str(exc)) from exc
        _configure_logging(options["log_level"], options["log_format"])
        client = get_client()
        try:
            client.connect()
            extra = []
            port = options["metrics_port"] if options["metrics_port"] is not None else config.metrics_port
            if port is not None:
                extra.append(_metrics(client, port, options["metrics_addr"]))
            if not options["no_schedules"]:
                declare_schedules(client, [*config.schedules, *registry.periodic_jobs()], queues)
            group = WorkerGroup(client, registry, queues, config, concurrency=options["concurrency"],
                                extra_middleware=extra, relay=not options["no_relay"], **worker_options)  # fmt: skip
        except bgjob.BgjobError as exc:
            client.close()
            raise CommandError(str(exc)) from exc
        handlers = ", ".join(registry.types()) or "none"
        self.stdout.write(server_line(client))
        relay = "off" if group.relay is None else "on"
        self.stdout.write(f"bgjob worker: queues {', '.join(queues)}; handlers: {handlers}; outbox relay {relay}")
        self.stdout.flush()
        try:
            healthy = group.run()
        finally:
            client.close()
        if not healthy:
            raise CommandError("a worker stopped by itself (see the log above)")


def _pool_options(pool: str) -> dict[str, Any]:
    if pool == "threads":
        return {}
    if "pool" not in inspect.signature(bgjob.Worker).parameters:
        raise CommandError("--pool gevent needs a gevent pool in bgjob's Worker, which this bgjob version does not "
                           "have; use --pool threads")  # fmt: skip
    try:
        from gevent import monkey
    except ImportError as exc:
        raise CommandError('--pool gevent needs gevent: pip install "bgjob[gevent]"') from exc
    if not monkey.is_module_patched("socket"):
        raise CommandError("--pool gevent needs a gevent-patched process: start it as "
                           "`python -m gevent.monkey manage.py bgjob_worker --pool gevent ...`")  # fmt: skip
    return {"pool": pool}


def _metrics(client: bgjob.Client, port: int, addr: str) -> bgjob.Middleware:
    try:
        return serve_metrics(client, port, addr)
    except ImportError as exc:
        raise CommandError(f'--metrics-port needs prometheus-client: pip install "bgjob[prometheus]" ({exc})') from exc
    except OSError as exc:
        raise CommandError(f"cannot serve metrics on {addr}:{port}: {exc}") from exc


def _configure_logging(level: str, fmt: str) -> None:
    """bgjob's logging (job and request ids on every line) unless the project's LOGGING set up the root logger;
    then its handlers get the ids as record attributes (`%(request_id)s`, `%(job_id)s`, `%(job_context)s`)."""
    root = logging.getLogger()
    if not root.handlers:
        configure_logging(level, fmt)
        # bgjob's root handler now prints django.* lines too (with the job's context): Django's default console
        # handler on the `django` logger (DEFAULT_LOGGING, under DEBUG) would print each a second time.
        django_logger = logging.getLogger("django")
        for handler in list(django_logger.handlers):
            if handler.get_name() == "console" and isinstance(handler, logging.StreamHandler):
                django_logger.removeHandler(handler)
        return
    for handler in root.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
