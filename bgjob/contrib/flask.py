"""bgjob for Flask: settings from `app.config`, handlers in an app context, request ids, `flask bgjob` commands.

A Flask extension in the usual shape (like Flask-SQLAlchemy; Celery's "Flask pattern" of running each task in
`app.app_context()` is what `BgJob` does for every job)::

    from flask import Flask
    from bgjob.contrib.flask import BgJob

    bgjob_ext = BgJob()

    @bgjob_ext.handler("report")
    def report(job):                     # runs inside app.app_context() whatever worker runs it: current_app,
                                         # db.session work
        ...
        return bgjob.Complete()

    def create_app():
        app = Flask(__name__)
        app.config["BGJOB_URL"] = "nats://localhost:4222"
        bgjob_ext.init_app(app)          # or BgJob(app)
        return app

    # in a view:  bgjob_ext.send_job("report", {"user": 7})   (carries the request's X-Request-ID)
    # worker:     flask --app myapp bgjob worker --queue default

`app.config` keys are `BGJOB_` plus the keys of bgjob_django's `BGJOB` setting, with the same meaning:
the `bgjob.Settings` fields upper-cased (`BGJOB_URL`, `BGJOB_PREFIX`, `BGJOB_REPLICAS`, `BGJOB_ACK_WAIT`, ...),
`BGJOB_OPTIONS` (nats.connect keyword arguments), and the worker's `BGJOB_QUEUES`, `BGJOB_CONCURRENCY`,
`BGJOB_MIDDLEWARE`, `BGJOB_MAX_ATTEMPTS`, `BGJOB_GRACE_PERIOD`, `BGJOB_TIME_LIMIT`, `BGJOB_METRICS_PORT`. The
`BGJOB_*` environment variables (`BGJOB_URL`, ...) fill what `app.config` leaves unset. Needs the `flask` extra
(`pip install "bgjob[flask]"`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import gc
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click
from flask import Flask, Response, current_app, g, has_app_context, request
from flask.cli import with_appcontext

from .. import cli as bgjob_cli
from ..client import Client
from ..context import clean_request_id, current_request_id, new_request_id
from ..errors import BgjobError, ConfigurationError
from ..handler import Mux, time_limit_seconds
from ..job import Job, validate_queue
from ..middleware.base import Handler, Middleware
from ..result import Result
from ..retry_policy import RetryPolicy
from ..settings import Settings

__all__ = ["AppContext", "BgJob", "FlaskConfig", "get_request_id", "send_job", "send_jobs"]

log = logging.getLogger("bgjob.contrib.flask")

#: `app.config` keys that map one-to-one onto bgjob.Settings fields (`BGJOB_URL` -> url, ...).
CLIENT_KEYS = {f"BGJOB_{f.name.upper()}": f.name for f in dataclasses.fields(Settings) if f.name != "nats_options"}
#: The worker's and app's keys, with their defaults (the same as bgjob_django's BGJOB keys).
APP_DEFAULTS: dict[str, Any] = {
    "BGJOB_OPTIONS": {},  # nats.connect keyword arguments: user, password, token, tls, user_credentials, ...
    "BGJOB_QUEUES": ["default"],  # the queues `flask bgjob worker` serves without --queue
    "BGJOB_CONCURRENCY": 16,  # handler threads per queue
    "BGJOB_MIDDLEWARE": [],  # bgjob middleware: callables, classes (instantiated without arguments) or dotted paths
    "BGJOB_MAX_ATTEMPTS": 10,  # deliveries before a failing job is dead-lettered
    "BGJOB_GRACE_PERIOD": 30.0,  # seconds in-flight jobs may finish after SIGTERM
    "BGJOB_TIME_LIMIT": None,  # seconds a handler may run (then TimeLimitExceeded is raised in it)
    "BGJOB_METRICS_PORT": None,  # Prometheus /metrics port of the worker (--metrics-port overrides)
}
#: bgjob_django keys with no meaning in Flask, and what to do instead (each a sentence, ending the error message).
INSTEAD = {
    "BGJOB_ON_COMMIT": "Flask has no transaction.on_commit; send the job after your transaction commits.",
    "BGJOB_OUTBOX": "bgjob_django's outbox needs Django's ORM; send the job after your transaction commits instead.",
    "BGJOB_SCHEDULES": "declare periodic jobs with client.schedule(...) (bgjob.periodic) instead.",
    "BGJOB_SIGNING": "use BGJOB_SIGNING_KEY (and BGJOB_VERIFY_KEYS on workers) instead.",
    "BGJOB_METRICS": "use BGJOB_METRICS_PORT (or flask bgjob worker --metrics-port) instead.",
    "BGJOB_SENTRY": "call sentry_sdk.init(..., integrations=[bgjob.contrib.sentry.BgjobIntegration()]) instead.",
}
KNOWN_KEYS = frozenset(CLIENT_KEYS) | frozenset(APP_DEFAULTS)
#: The response (and request) header carrying the request id.
REQUEST_ID_HEADER = "X-Request-ID"


@dataclass(frozen=True)
class FlaskConfig:
    """An app's `BGJOB_*` config, validated: the client's Settings and the worker's options."""

    settings: Settings
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 16
    middleware: tuple[Middleware, ...] = ()
    max_attempts: int = 10
    grace_period: float = 30.0
    #: seconds a handler may run (None: no limit); a handler's own time_limit wins.
    time_limit: float | None = None
    metrics_port: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], root_path: str | None = None) -> FlaskConfig:
        """Read the `BGJOB_*` keys of a Flask `app.config` (the `BGJOB_*` environment variables fill the client
        keys it leaves unset). With no URL anywhere and no data dir, the embedded server's data dir is the one
        of the project at `root_path` (the app's root), whatever the current directory.

        Raises ConfigurationError naming the first bad key: an unknown `BGJOB_` key (with the closest known
        names), a bgjob_django-only key (with what to use), or a value bgjob refuses."""
        given = {k: v for k, v in config.items() if isinstance(k, str) and k.startswith("BGJOB_")}
        for key in given:
            if key in INSTEAD:
                raise ConfigurationError(f"app.config[{key!r}] is a bgjob_django setting with no meaning in Flask: "
                                         f"{INSTEAD[key]}")  # fmt: skip
            if key not in KNOWN_KEYS:
                close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=2)
                hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
                raise ConfigurationError(f"unknown bgjob setting app.config[{key!r}]{hint}; the keys are: "
                                         f"{', '.join(sorted(KNOWN_KEYS))}")  # fmt: skip
        values = {**APP_DEFAULTS, **{k: v for k, v in given.items() if k in APP_DEFAULTS}}
        options = values["BGJOB_OPTIONS"]
        if not isinstance(options, Mapping):
            raise ConfigurationError("app.config['BGJOB_OPTIONS'] must be a dict of nats.connect keyword arguments")
        overrides = {field: given[key] for key, field in CLIENT_KEYS.items() if key in given}
        try:
            settings = Settings.from_env(**overrides, nats_options=dict(options))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"app.config BGJOB_* client settings are invalid: {exc}") from None
        if settings.url is None and settings.data_dir is None and root_path is not None:
            from ..server import default_data_dir

            settings = dataclasses.replace(settings, data_dir=str(default_data_dir(root_path)))
        queues = values["BGJOB_QUEUES"]
        if isinstance(queues, str) or not isinstance(queues, (list, tuple)) or not queues:
            raise ConfigurationError("app.config['BGJOB_QUEUES'] must be a non-empty list of queue names, e.g. "
                                     '["default", "mail"]')  # fmt: skip
        for queue in queues:
            try:
                validate_queue(queue)
            except ValueError as exc:
                raise ConfigurationError(f"app.config['BGJOB_QUEUES']: {exc}") from None
        for key in ("BGJOB_CONCURRENCY", "BGJOB_MAX_ATTEMPTS"):
            if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1:
                raise ConfigurationError(f"app.config[{key!r}] must be an integer >= 1, got {values[key]!r}")
        grace = values["BGJOB_GRACE_PERIOD"]
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
            raise ConfigurationError(f"app.config['BGJOB_GRACE_PERIOD'] must be seconds >= 0, got {grace!r}")
        try:
            time_limit = time_limit_seconds(values["BGJOB_TIME_LIMIT"])
        except ValueError as exc:
            raise ConfigurationError(f"app.config['BGJOB_TIME_LIMIT'] is invalid: {exc}") from None
        port = values["BGJOB_METRICS_PORT"]
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536):
            raise ConfigurationError(f"app.config['BGJOB_METRICS_PORT'] must be a TCP port number or None, got "
                                     f"{port!r}")  # fmt: skip
        return cls(settings=settings, queues=tuple(dict.fromkeys(queues)), concurrency=values["BGJOB_CONCURRENCY"],
                   middleware=tuple(_middleware(values["BGJOB_MIDDLEWARE"])), max_attempts=values["BGJOB_MAX_ATTEMPTS"],
                   grace_period=float(grace), time_limit=time_limit, metrics_port=port)  # fmt: skip


def _middleware(entries: Any) -> list[Middleware]:
    """BGJOB_MIDDLEWARE's entries as middleware: a dotted path is imported, a class instantiated without
    arguments; ConfigurationError for what is not a callable mw(job, call_next)."""
    from werkzeug.utils import ImportStringError, import_string

    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise ConfigurationError("app.config['BGJOB_MIDDLEWARE'] must be a list of middleware (callables "
                                 "mw(job, call_next), classes or dotted paths)")  # fmt: skip
    found = []
    for entry in entries:
        obj = entry
        if isinstance(obj, str):
            try:
                obj = import_string(obj)
            except ImportStringError as exc:
                raise ConfigurationError(f"app.config['BGJOB_MIDDLEWARE'] entry {entry!r} cannot be imported: "
                                         f"{exc.exception}") from None  # fmt: skip
        if isinstance(obj, type):
            try:
                obj = obj()
            except TypeError as exc:
                raise ConfigurationError(f"app.config['BGJOB_MIDDLEWARE'] class {entry!r} cannot be built without "
                                         f"arguments: {exc}") from None  # fmt: skip
        if not callable(obj):
            raise ConfigurationError(f"app.config['BGJOB_MIDDLEWARE'] entry {entry!r} is not callable")
        found.append(obj)
    return found


class AppContext:
    """Worker middleware running the rest of the chain and the handler inside `app.app_context()`.

    When the context pops after each job, Flask runs the app's `teardown_appcontext` functions (with the
    handler's exception, if one escaped), as at the end of a request: Flask-SQLAlchemy's removes its scoped
    session there, so every job starts with a fresh session and leaves no transaction open. `flask bgjob worker`
    puts it outermost; add it to a Worker of your own: `Worker(client, ext.mux, middleware=[AppContext(app), ...])`.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app

    def __call__(self, job: Job, call_next: Handler) -> Result:
        with self.app.app_context():
            return call_next(job)


class _ExtensionAppContext:
    """The per-handler middleware of `@ext.handler`: the handler runs inside the app context of the app `ext`
    was set up for, whatever worker runs it (`run_jobs`, a Worker without `AppContext`, immediate mode).

    Already inside an app context of one of the extension's apps (`flask bgjob worker`'s `AppContext`, a view in
    immediate mode, a test's `with app.app_context()`) it adds nothing; else it pushes the context of the app,
    found at call time (so an app factory's app, made after the handlers were registered, is found). Raises
    ConfigurationError (the job's failure) when init_app was never called, or when the extension serves several
    live apps and nothing says which one this job is for."""

    def __init__(self, ext: BgJob) -> None:
        self.ext = ext

    def __call__(self, job: Job, call_next: Handler) -> Result:
        if has_app_context() and self.ext._serves(current_app._get_current_object()):  # type: ignore[attr-defined]
            return call_next(job)
        with self.ext._app_for(job).app_context():
            return call_next(job)


class _State:
    """What an app's `app.extensions["bgjob"]` holds: its config and its client (made on first use)."""

    def __init__(self, ext: BgJob, config: FlaskConfig, app: Flask) -> None:
        self.ext = ext
        self.config = config
        self._app = weakref.ref(app)
        self._client: Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._new_client()
                client = self._client
        return client

    def _new_client(self) -> Client:
        """The app's client; in immediate mode (BGJOB_IMMEDIATE, test-only) one running the extension's handlers
        inline with BGJOB_MAX_ATTEMPTS, refused (ConfigurationError) unless the app is in testing or debug mode."""
        settings = self.config.settings
        if not settings.immediate:
            return Client(settings)
        app = self._app()
        if app is not None and not (app.testing or app.debug):
            raise ConfigurationError(f"app.config['BGJOB_IMMEDIATE'] is a test-only setting: it is refused unless "
                                     f"app.testing or app.debug is true (Flask app {app.name!r}); remove it from "
                                     "production config")  # fmt: skip
        client = Client(settings)
        client.immediate_mux = self.ext.mux
        client.immediate_retry_policy = RetryPolicy(max_attempts=self.config.max_attempts)
        return client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class BgJob:
    """The Flask extension: `BgJob(app)`, or `ext = BgJob(); ext.init_app(app)` in an app factory.

    `init_app` reads the app's `BGJOB_*` config (FlaskConfig.from_config; raises ConfigurationError), stores the
    app's state in `app.extensions["bgjob"]`, installs the X-Request-ID handling (unless `request_ids=False`) and
    adds the `flask bgjob` command group. One extension may serve several apps; each has its own client, the
    handlers (`ext.mux`) are shared.

    With `BGJOB_IMMEDIATE = True` (test-only; refused unless `app.testing` or `app.debug`), the app's client runs
    the extension's handlers inline in `send_job` (bgjob.testing.immediate), retrying up to BGJOB_MAX_ATTEMPTS.
    """

    def __init__(self, app: Flask | None = None, *, mux: Mux | None = None, request_ids: bool = True) -> None:
        #: the handlers `@ext.handler` registers, run by `flask bgjob worker`.
        self.mux = mux if mux is not None else Mux()
        self.request_ids = request_ids
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._apps_lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Set bgjob up for `app` (see the class). Raises ConfigurationError for a bad `BGJOB_*` key."""
        app.extensions["bgjob"] = _State(self, FlaskConfig.from_config(app.config, app.root_path), app)
        with self._apps_lock:
            self._apps.add(app)
        if self.request_ids:
            app.before_request(_take_request_id)
            app.after_request(_echo_request_id)
            app.teardown_request(_forget_request_id)
        app.cli.add_command(bgjob_group)

    def handler(self, job_type: str, **options: Any) -> Callable[[Callable[[Job], Result]], Callable[[Job], Result]]:
        """Register a function as the handler of `job_type` on `ext.mux`: the options of `Mux.handle`
        (time_limit, retry_policy, middleware, sensitive, ...). It runs inside the app context of the app this
        extension was set up for, whatever worker runs it (`flask bgjob worker`, `bgjob.testing.run_jobs`, your
        own Worker, immediate mode): a per-handler middleware, outermost of the handler's own, pushes it unless
        the job already runs in one of the extension's apps' contexts (`AppContext`). A job whose app cannot be
        told (init_app never called; several live apps and no app context) fails with ConfigurationError.
        Raises what Mux.handle raises (InvalidJob, ConfigurationError)."""
        middleware = [_ExtensionAppContext(self), *(options.pop("middleware", None) or ())]

        def register(fn: Callable[[Job], Result]) -> Callable[[Job], Result]:
            self.mux.handle(job_type, fn, middleware=middleware, **options)
            return fn

        return register

    def _serves(self, app: Flask) -> bool:
        """Whether `app` is set up with this extension (its `app.extensions["bgjob"]` is ours)."""
        state = app.extensions.get("bgjob")
        return isinstance(state, _State) and state.ext is self

    def _app_for(self, job: Job) -> Flask:
        """The one live app set up with this extension, for a job run outside any of its app contexts; raises
        ConfigurationError when there is none or several."""
        with self._apps_lock:
            apps = [app for app in self._apps if self._serves(app)]
        if len(apps) > 1:  # an app factory's earlier apps (a previous test's) may only wait for the collector
            gc.collect()
            with self._apps_lock:
                apps = [app for app in self._apps if self._serves(app)]
        if not apps:
            raise ConfigurationError(f"job {job.id} ({job.type}): the handler needs a Flask app context, but this "
                                     "BgJob extension was never set up for an app: call BgJob(app) or "
                                     "ext.init_app(app) in the process that runs the jobs")  # fmt: skip
        if len(apps) > 1:
            names = ", ".join(sorted(repr(app.name) for app in apps))
            raise ConfigurationError(f"job {job.id} ({job.type}): this BgJob extension serves several Flask apps "
                                     f"({names}) and the job cannot tell which one to run in: give the worker "
                                     "AppContext(app) middleware, or run them in `with app.app_context()`")  # fmt: skip
        return apps[0]

    def state(self, app: Flask | None = None) -> _State:
        """The `app.extensions["bgjob"]` state of `app` (default: current_app). Raises BgjobError when bgjob was
        not set up for it (init_app not called) or there is no app context."""
        if app is None:
            if not has_app_context():
                raise BgjobError("no Flask app context: call this in a view, a CLI command or `with app.app_context()`")
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        state = app.extensions.get("bgjob")
        if not isinstance(state, _State):
            raise BgjobError(f"bgjob is not set up for Flask app {app.name!r}: call BgJob(app) or ext.init_app(app)")
        return state

    def client(self, app: Flask | None = None) -> Client:
        """The app's bgjob Client (connected lazily, on first use; thread-safe, fork-safe); in immediate mode the
        one to give `bgjob.testing.immediate_log`. Raises BgjobError as `state` does, ConfigurationError for
        BGJOB_IMMEDIATE outside testing/debug."""
        return self.state(app).client

    def close(self, app: Flask | None = None) -> None:
        """Close the bgjob client of `app` (default: current_app), e.g. after a test, before its server stops;
        the next send connects a new one. Raises BgjobError as `state` does; never a NATS error."""
        self.state(app).close()

    def send_job(self, job_type: str, arg: Any = None, **options: Any) -> str:
        """`Client.send_job` through the current app's client: returns the job id once JetStream stored it.
        Sent in a request, the job carries the request's id (X-Request-ID). Raises what Client.send_job raises
        (InvalidJob, ConnectionError, ...) and BgjobError outside an app context."""
        return self.client().send_job(job_type, arg, **options)

    def send_jobs(self, specs: Sequence[Any], **options: Any) -> list[str]:
        """`Client.send_jobs` through the current app's client (see send_job)."""
        return self.client().send_jobs(specs, **options)


def _state() -> _State:
    state = current_app.extensions.get("bgjob") if has_app_context() else None
    if not isinstance(state, _State):
        raise BgjobError("bgjob is not set up for the current Flask app (BgJob(app) or ext.init_app(app)), or "
                         "there is no app context")  # fmt: skip
    return state


def send_job(job_type: str, arg: Any = None, **options: Any) -> str:
    """`send_job` through the current app's bgjob client (`from bgjob.contrib.flask import send_job` in a
    view); the same as `BgJob.send_job`."""
    return _state().client.send_job(job_type, arg, **options)


def send_jobs(specs: Sequence[Any], **options: Any) -> list[str]:
    """`send_jobs` through the current app's bgjob client; the same as `BgJob.send_jobs`."""
    return _state().client.send_jobs(specs, **options)


def get_request_id() -> str | None:
    """The id of the current request (or job), if any."""
    return current_request_id.get()


# -- X-Request-ID: the same rule as bgjob_django.middleware.RequestIdMiddleware --------------------------------
def _take_request_id() -> None:
    """before_request: the client's X-Request-ID if it is sane (bgjob.context.clean_request_id), else a new one,
    set as bgjob's request id (jobs sent in the request carry it) and as `g.request_id`."""
    request_id = clean_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
    g.request_id = request_id
    g._bgjob_request_id_token = current_request_id.set(request_id)


def _echo_request_id(response: Response) -> Response:
    """after_request: the request id on the response's X-Request-ID header."""
    request_id = g.get("request_id")
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _forget_request_id(exc: BaseException | None) -> None:
    """teardown_request: bgjob's request id back to what it was before the request."""
    token = g.pop("_bgjob_request_id_token", None)
    if token is not None:
        try:
            current_request_id.reset(token)
        except ValueError:  # set in another context (a copied one): nothing of ours to undo here
            current_request_id.set(None)


# -- flask bgjob worker|status|dlq: bgjob.cli's code, through the app's settings ------------------------------
@click.group("bgjob", help="bgjob: run workers, see queues and workers, browse the dead-letter queue.")
def bgjob_group() -> None:
    pass


def _abort(exc: BgjobError) -> None:
    raise click.ClickException(str(exc)) from exc


@bgjob_group.command("worker")
@click.option(
    "--queue", "queues", multiple=True, metavar="QUEUE", help="a queue to serve (repeatable); default: BGJOB_QUEUES"
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="handlers running at once, per queue; default BGJOB_CONCURRENCY"
)
@click.option(
    "--pool",
    type=click.Choice(["threads", "gevent"]),
    default="threads",
    help="run handlers in threads, or in greenlets (start under `python -m gevent.monkey`)",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    help="seconds in-flight jobs may finish after SIGTERM; default BGJOB_GRACE_PERIOD",
)
@click.option("--max-attempts", type=click.IntRange(min=1), help="default BGJOB_MAX_ATTEMPTS")
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="seconds a handler may run before TimeLimitExceeded is raised inside it; default BGJOB_TIME_LIMIT",
)
@click.option("--metrics-port", type=int, help="serve Prometheus metrics on this port (needs prometheus-client)")
@click.option("--metrics-addr", default="127.0.0.1", help="address of the metrics endpoint (default 127.0.0.1)")
@click.option("--claim", "claims", multiple=True, metavar="NAME", help="hold this placement claim (repeatable)")
@click.option("--group", "groups", multiple=True, metavar="NAME", help="serve only this worker group (repeatable)")
@click.option("--log-level", default="INFO")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@with_appcontext
def worker_command(queues: tuple[str, ...], concurrency: int | None, pool: str, grace: float | None,
                   max_attempts: int | None, time_limit: float | None, metrics_port: int | None,
                   metrics_addr: str, claims: tuple[str, ...], groups: tuple[str, ...], log_level: str,
                   log_format: str) -> None:  # fmt: skip
    """Run the app's handlers (`@ext.handler`), each job inside the app's app context: one bgjob Worker per
    queue, in this process. SIGTERM/SIGINT drain in-flight jobs (a second signal exits at once)."""
    from ..logs import LogJobs, configure_logging
    from ..middleware import Metrics, Recovery, RequestId
    from ..retry_policy import RetryPolicy
    from ..worker import Worker
    from ..worker.signals import install_drain_signals

    if pool == "gevent":
        _require_gevent()
    if not logging.getLogger().handlers:
        configure_logging(log_level, log_format)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = state_owner(app).state(app)
    config = state.config
    client = state.client
    try:
        client.connect()
        chain: list[Any] = [AppContext(app), Recovery(), RequestId(), LogJobs()]
        port = metrics_port if metrics_port is not None else config.metrics_port
        if port is not None:
            chain.append(Metrics(bgjob_cli._serve_metrics(client, metrics_addr, port)))
        chain += config.middleware
        limit = time_limit if time_limit is not None else config.time_limit
        workers = [
            Worker(client, state.ext.mux, queue=queue, concurrency=concurrency or config.concurrency, middleware=chain,
                   retry_policy=RetryPolicy(max_attempts=max_attempts or config.max_attempts),
                   grace_period=config.grace_period if grace is None else grace, pool=pool, time_limit=limit,
                   claims=claims, groups=groups)
            for queue in dict.fromkeys(queues or config.queues)
        ]  # fmt: skip
        click.echo(bgjob_cli.server_line(client))
        click.echo(f"bgjob worker: app {app.name}; queues {', '.join(w.queue for w in workers)}; handlers: "
                   f"{', '.join(state.ext.mux.types()) or 'none'}")  # fmt: skip
        sys.stdout.flush()
        if len(workers) == 1:
            workers[0].run()
            return
        stopped = threading.Event()

        def stop() -> None:
            stopped.set()
            for worker in workers:
                worker.stop()

        restore = install_drain_signals(stop)
        try:
            threads = [worker.start() for worker in workers]
            while not stopped.wait(0.5):
                if not all(t.is_alive() for t in threads):
                    log.error("a worker stopped by itself; stopping the others")
                    stop()
                    for thread in threads:
                        thread.join()
                    raise click.ClickException("a worker stopped by itself (see the log above)")
            for thread in threads:
                thread.join()
        finally:
            restore()
    except BgjobError as exc:
        _abort(exc)
    finally:
        state.close()


def state_owner(app: Flask) -> BgJob:
    """The BgJob extension set up for `app`; click.ClickException when there is none."""
    state = app.extensions.get("bgjob")
    if not isinstance(state, _State):
        raise click.ClickException(f"bgjob is not set up for Flask app {app.name!r}: call BgJob(app) or "
                                   "ext.init_app(app)")  # fmt: skip
    return state.ext


def _require_gevent() -> None:
    try:
        from gevent import monkey
    except ImportError as exc:
        raise click.ClickException('--pool gevent needs gevent: pip install "bgjob[gevent]"') from exc
    if not monkey.is_module_patched("socket"):
        hint = "start it as `python -m gevent.monkey -m flask --app ... bgjob worker --pool gevent`"
        raise click.ClickException(f"--pool gevent needs a gevent-patched process: {hint}")


def _interactive_client() -> Client:
    """A client of the current app's settings, bounded like `bgjob status`'s (bgjob.cli.interactive_settings)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = state_owner(app).state(app).config.settings
    return Client(bgjob_cli.interactive_settings(settings))


@bgjob_group.command("status")
@with_appcontext
def status_command() -> None:
    """Queues (pending, in-flight, retrying, scheduled, routed, dead letters), periodic jobs and live workers:
    `bgjob status` through the app's settings."""
    client = _interactive_client()
    try:
        for line in bgjob_cli.status_lines(client):
            click.echo(line)
    except BgjobError as exc:
        _abort(exc)
    finally:
        client.close()


@bgjob_group.command("dlq", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                              "help_option_names": []})  # fmt: skip
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@with_appcontext
def dlq_command(ctx: click.Context, args: tuple[str, ...]) -> None:
    """The dead-letter queue, exactly as `bgjob dlq`, through the app's settings. Dead letters are shown masked.

    \b
    Subcommands (`flask bgjob dlq SUBCOMMAND --help` for their options):
      list    dead letters, newest first
      show    one dead letter as JSON, masked
      retry   send dead letters back to their queues
      delete  delete dead letters
      purge   delete all dead letters (matching the filters)
      find    dead letters whose arg matches --match PATH=VALUE, masked
      erase   delete the dead letters whose arg matches (a data-subject request)
    """
    if not args:  # as click's groups do: the help, on stderr, exit status 2
        no_args_is_help = getattr(click.exceptions, "NoArgsIsHelpError", None)
        if no_args_is_help is not None:
            raise no_args_is_help(ctx)
        click.echo(ctx.get_help())
        ctx.exit(0)
    parser = argparse.ArgumentParser(prog="flask bgjob dlq", description="the dead-letter queue (as `bgjob dlq`)")
    bgjob_cli.add_dlq_arguments(parser)
    options = parser.parse_args(args)
    client = _interactive_client()
    try:
        status = bgjob_cli.dlq_command(client.dlq, vars(options), out=click.echo,
                                       err=lambda line: click.echo(f"bgjob: {line}", err=True))  # fmt: skip
    except BgjobError as exc:
        _abort(exc)
    finally:
        client.close()
    if status:
        sys.exit(status)
