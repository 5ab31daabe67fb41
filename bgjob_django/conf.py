"""The one place where Django's `BGJOB` setting is read and turned into bgjob objects.

Every key is optional: with no `BGJOB` setting at all (and no `BGJOB_URL`), the project's embedded
nats-server is started on first use. `problems()` lists what is wrong (for the system checks);
`get_config()` raises ImproperlyConfigured on the first problem.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import pathlib
import re
import sys
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

import bgjob
from bgjob import encryption, signing
from bgjob import job as jobmod
from bgjob.handler import time_limit_seconds
from bgjob.periodic import validate_name as validate_schedule_name
from bgjob.redaction import mask_url

#: BGJOB keys that map one-to-one onto bgjob.Settings fields: URL, PREFIX, REPLICAS, ACK_WAIT, RESULT_TTL, ...
#: (OPTIONS holds the nats.connect keyword arguments).
CLIENT_KEYS = {f.name.upper(): f.name for f in dataclasses.fields(bgjob.Settings) if f.name != "nats_options"}
#: Worker and app keys, with their defaults.
APP_DEFAULTS: dict[str, Any] = {
    "OPTIONS": {},  # nats.connect keyword arguments: user, password, token, tls, user_credentials, ...
    "QUEUES": ["default"],  # the queues `manage.py bgjob_worker` serves without --queue
    "CONCURRENCY": 16,  # handler threads per queue
    "MIDDLEWARE": [],  # dotted paths of bgjob middleware (callables, or classes instantiated without arguments)
    "MAX_ATTEMPTS": 10,  # deliveries before a failing job is dead-lettered
    "GRACE_PERIOD": 30.0,  # seconds in-flight jobs may finish after SIGTERM
    "TIME_LIMIT": None,  # seconds a handler may run (then TimeLimitExceeded is raised in it); handlers' own win
    "SCHEDULES": {},  # name -> {"cron", "job", "arg", "queue", "tz"}: periodic jobs declared at worker start
    "ON_COMMIT": False,  # send_job() defers publishing to transaction.on_commit unless told otherwise
    "OUTBOX": False,  # every Django-side send (send_job, send_jobs, django.tasks) writes the outbox table instead
    "METRICS_PORT": None,  # Prometheus /metrics port of the worker (--metrics-port overrides)
}
#: Keys people reach for that are spelled differently here, and what to use instead.
INSTEAD = {
    "SIGNING": "SIGNING_KEY (and VERIFY_KEYS on workers), the bgjob.Settings fields",
    "METRICS": "METRICS_PORT (or manage.py bgjob_worker --metrics-port)",
    "SENTRY": "sentry_sdk.init(..., integrations=[bgjob.contrib.sentry.BgjobIntegration()]) in settings.py",
}
KNOWN_KEYS = set(CLIENT_KEYS) | set(APP_DEFAULTS)
URL_SCHEMES = ("nats", "tls", "ws", "wss")
_HOST = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_SECONDS_HINT = "a number of seconds (e.g. 86400 for a day, 604800 for a week); strings such as '1d' are not read"
#: The hint of a bad client key (the others: see bgjob.Settings.<field>).
CLIENT_HINTS = {
    **{key: _SECONDS_HINT for key, field in CLIENT_KEYS.items()
       if field in ("ack_wait", "duplicate_window", "dlq_max_age", "events_max_age", "result_ttl", "worker_ttl",
                    "connect_timeout", "request_timeout", "retry_for", "ping_interval")},
    "REPLICAS": "an integer from 1 to 5: 1 for a single server, 3 for a production cluster",
    "SIGNING_KEY": "the private half of bgjob.signing.generate_keypair() (base64 of a 32-byte ed25519 key)",
    "VERIFY_KEYS": "a list of public halves of bgjob.signing.generate_keypair() (base64 of 32-byte ed25519 keys)",
    "ENCRYPTION_KEYS": "a list of keys made by bgjob.encryption.generate_key() (base64 of 32 bytes)",
    "NAME": "a non-empty string, the connection name shown by the server's monitoring",
    "DATA_DIR": "a path (str), relative to the project root or absolute; only used without a URL",
    "PREFIX": "lower-case letters, digits, '_' and '-', starting with a letter (max 32), e.g. 'shop'",
}  # fmt: skip


@dataclass(frozen=True)
class ScheduleSpec:
    """A periodic job to declare at worker start."""

    name: str
    cron: str
    job_type: str
    arg: Any = None
    queue: str = "default"
    tz: str = "UTC"


@dataclass(frozen=True)
class Config:
    """`settings.BGJOB`, validated and translated."""

    client: bgjob.Settings
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 16
    middleware: tuple[str, ...] = ()
    max_attempts: int = 10
    grace_period: float = 30.0
    #: the workers' default time limit in seconds (None: none); a handler's own time_limit wins.
    time_limit: float | None = None
    schedules: tuple[ScheduleSpec, ...] = ()
    on_commit: bool = False
    outbox: bool = False
    metrics_port: int | None = None
    #: (queue, configure_queue keywords) of the QUEUES entries that carry a configuration (`{"name": "mail",
    #: "max_entries": 10000}`): applied by `manage.py bgjob_queue configure --from-settings` only.
    queue_configs: tuple[tuple[str, dict[str, Any]], ...] = ()

    def retry_policy(self) -> bgjob.RetryPolicy:
        return bgjob.RetryPolicy(max_attempts=self.max_attempts)

    def load_middleware(self) -> list[bgjob.Middleware]:
        """The MIDDLEWARE paths imported; classes are instantiated without arguments."""
        return [_load_middleware(path) for path in self.middleware]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the BGJOB setting, with a hint that names the fix."""

    id: str
    msg: str
    hint: str | None = None


def _queue_entries(entries: Any, problem: Any) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The queue names of BGJOB['QUEUES'] and the configuration its dict entries carry ({queue: the
    configure_queue keywords as written}), reporting what is wrong through `problem(id, msg, hint)`."""
    from bgjob.provisioning import QUEUE_OPTIONS, validate_queue_changes

    names: list[str] = []
    configs: dict[str, dict[str, Any]] = {}
    keys = ", ".join(QUEUE_OPTIONS)
    name: Any  # as written: validated below
    options: dict[str, Any]
    for entry in entries:
        name, options = (entry.get("name"), {k: v for k, v in entry.items() if k != "name"}) \
            if isinstance(entry, dict) else (entry, {})  # fmt: skip
        if not _valid(jobmod.validate_queue, name):
            problem("E005", f"BGJOB['QUEUES'] has an invalid queue name {name!r}",
                    "use lower-case letters, digits, '_' and '-' (max 64); a queue with its configuration is "
                    '{"name": "mail", "max_entries": 10000, "max_age": 3600}')  # fmt: skip
            continue
        names.append(name)
        unknown = sorted(str(k) for k in options if k not in QUEUE_OPTIONS)
        if unknown:
            problem("E005", f"BGJOB['QUEUES'] entry {name!r} has unknown keys: {', '.join(unknown)}",
                    f"a queue's configuration may set {keys}")  # fmt: skip
            continue
        try:
            validate_queue_changes(**options)
        except bgjob.ConfigurationError as exc:
            problem("E005", f"BGJOB['QUEUES'] entry {name!r} is invalid: {exc}",
                    "see `bgjob queue configure --help` for each limit's meaning and range (0 removes a limit)")
            continue
        if name in configs and configs[name] != options:
            problem("E005", f"BGJOB['QUEUES'] configures queue {name!r} twice, differently", "keep one entry")
        if options:
            configs[name] = options
    return names, configs


def raw_setting() -> Any:
    """settings.BGJOB as written ({} when it is missing or None; anything else, even [], is checked)."""
    value = getattr(django_settings, "BGJOB", None)
    return {} if value is None else value


def problems(raw: Any = None) -> list[Problem]:
    """Everything wrong with `raw` (default: settings.BGJOB); empty when it is usable."""
    return _parse(raw_setting() if raw is None else raw)[1]


def parse(raw: Any) -> Config:
    """Translate a BGJOB mapping into a Config; raises ImproperlyConfigured on the first problem."""
    config, found = _parse(raw)
    if found:
        first = found[0]
        raise ImproperlyConfigured(f"{first.msg} (HINT: {first.hint})" if first.hint else first.msg)
    assert config is not None
    return config


def _parse(raw: Any) -> tuple[Config | None, list[Problem]]:
    found: list[Problem] = []

    def problem(id_: str, msg: str, hint: str | None = None) -> None:
        found.append(Problem(f"bgjob_django.{id_}", msg, hint))

    if not isinstance(raw, Mapping):
        problem("E001", f"settings.BGJOB must be a dict, got {type(raw).__name__}", 'e.g. BGJOB = {"URL": "nats://..."}')
        return None, found
    for key in raw:
        if key in INSTEAD:
            problem("E002", f"BGJOB[{key!r}] is not a bgjob_django setting", f"use {INSTEAD[key]}")
        elif key not in KNOWN_KEYS:
            close = difflib.get_close_matches(str(key).upper(), sorted(KNOWN_KEYS), n=2)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            problem("E002", f"unknown key BGJOB[{key!r}]", f"{hint}known keys: {', '.join(sorted(KNOWN_KEYS))}")
    values = {**APP_DEFAULTS, **{k: v for k, v in raw.items() if k in APP_DEFAULTS}}

    url, source = raw.get("URL"), "BGJOB['URL']"
    if url is None and os.environ.get("BGJOB_URL"):
        url, source = os.environ["BGJOB_URL"], "the BGJOB_URL environment variable"
    if url is not None:
        error = _url_error(url)
        if error:
            problem("E003", f"{source} {mask_url(url) if isinstance(url, str) else url!r} is not a NATS URL: {error}",
                    "use nats://host:4222 (tls://, ws://, wss:// too); comma-separate a cluster's servers, "
                    "or leave URL unset for the embedded server")  # fmt: skip
    client_settings = None
    options = values["OPTIONS"]
    if not isinstance(options, Mapping):
        problem("E004", "BGJOB['OPTIONS'] must be a dict of nats.connect keyword arguments")
        options = {}
    overrides = {field: raw[key] for key, field in CLIENT_KEYS.items() if key in raw}
    # Each key on its own, with the code that runs (bgjob.Settings, the signing and encryption keys' decoders),
    # so that one bad key does not hide another and each message names its key.
    bad_keys = False
    for key, field in CLIENT_KEYS.items():
        if key in raw and raw[key] is not None and key != "URL":  # URL: E003 above
            error = client_key_error(field, raw[key])
            if error:
                bad_keys = True
                problem("E004", f"BGJOB[{key!r}] is invalid: {error}",
                        CLIENT_HINTS.get(key, f"see bgjob.Settings.{field} for the allowed values"))  # fmt: skip
    error = client_key_error("nats_options", dict(options))
    if error:
        bad_keys = True
        problem("E004", f"BGJOB['OPTIONS'] is invalid: {error}", "OPTIONS holds nats.connect keyword arguments "
                "that bgjob does not set itself (user, password, token, tls, user_credentials, ...)")  # fmt: skip
    if not bad_keys:
        try:  # together, with the BGJOB_* environment variables
            client_settings = bgjob.Settings.from_env(**overrides, nats_options=dict(options))
        except (TypeError, ValueError) as exc:
            problem("E004", f"BGJOB client settings are invalid: {exc}", "see bgjob.Settings for the allowed values")

    queues = values["QUEUES"]
    if isinstance(queues, str) or not isinstance(queues, (list, tuple)) or not queues:
        problem("E005", "BGJOB['QUEUES'] must be a non-empty list of queue names", 'e.g. ["default", "mail"]')
        queues = ["default"]
    queues, queue_configs = _queue_entries(queues, problem)
    for key, minimum in (("CONCURRENCY", 1), ("MAX_ATTEMPTS", 1)):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < minimum:
            problem("E006", f"BGJOB[{key!r}] must be an integer >= {minimum}, got {values[key]!r}")
            values[key] = APP_DEFAULTS[key]
    if not isinstance(values["GRACE_PERIOD"], (int, float)) or values["GRACE_PERIOD"] < 0:
        problem("E006", f"BGJOB['GRACE_PERIOD'] must be seconds >= 0, got {values['GRACE_PERIOD']!r}")
        values["GRACE_PERIOD"] = APP_DEFAULTS["GRACE_PERIOD"]
    try:
        values["TIME_LIMIT"] = time_limit_seconds(values["TIME_LIMIT"])
    except ValueError as exc:
        problem("E006", f"BGJOB['TIME_LIMIT'] is invalid: {exc}", "seconds (e.g. 300) a handler may run before "
                "bgjob.TimeLimitExceeded is raised inside it, or None for no limit")  # fmt: skip
        values["TIME_LIMIT"] = None
    port = values["METRICS_PORT"]
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536):
        problem("E006", f"BGJOB['METRICS_PORT'] must be a TCP port number or None, got {port!r}")
        values["METRICS_PORT"] = None
    if not isinstance(values["ON_COMMIT"], bool):
        problem("E006", f"BGJOB['ON_COMMIT'] must be True or False, got {values['ON_COMMIT']!r}")
        values["ON_COMMIT"] = False
    if not isinstance(values["OUTBOX"], bool):
        problem("E006", f"BGJOB['OUTBOX'] must be True or False, got {values['OUTBOX']!r}",
                "True sends every job through the outbox table (migrate first), False publishes to NATS")  # fmt: skip
        values["OUTBOX"] = False

    middleware = values["MIDDLEWARE"]
    if isinstance(middleware, str) or not isinstance(middleware, (list, tuple)):
        problem("E007", "BGJOB['MIDDLEWARE'] must be a list of dotted paths", 'e.g. ["myapp.jobs.timing"]')
        middleware = []
    for path in middleware:
        try:
            _load_middleware(path)
        except ImproperlyConfigured as exc:
            problem("E007", str(exc), "give the dotted path of a callable mw(job, call_next) or of a class whose "
                    "instances are such callables")  # fmt: skip

    schedules = _parse_schedules(values["SCHEDULES"], problem)
    if found:
        return None, found
    assert client_settings is not None
    return Config(
        client=client_settings,
        queues=tuple(dict.fromkeys(queues)),
        queue_configs=tuple(queue_configs.items()),
        concurrency=values["CONCURRENCY"],
        middleware=tuple(middleware),
        max_attempts=values["MAX_ATTEMPTS"],
        grace_period=float(values["GRACE_PERIOD"]),
        time_limit=values["TIME_LIMIT"],
        schedules=schedules,
        on_commit=values["ON_COMMIT"],
        outbox=values["OUTBOX"],
        metrics_port=values["METRICS_PORT"],
    ), found


def _parse_schedules(raw: Any, problem: Any) -> tuple[ScheduleSpec, ...]:
    if not isinstance(raw, Mapping):
        problem("E008", "BGJOB['SCHEDULES'] must be a dict of name -> {'cron': ..., 'job': ...}")
        return ()
    specs = []
    allowed = {"cron", "job", "arg", "queue", "tz"}
    example = '{"nightly": {"cron": "0 3 * * *", "job": "report", "arg": {...}, "tz": "Europe/Berlin"}}'
    for name, entry in raw.items():
        where = f"BGJOB['SCHEDULES'][{name!r}]"
        if not isinstance(entry, Mapping) or "cron" not in entry or "job" not in entry:
            problem("E008", f"{where} needs at least 'cron' and 'job'", f"e.g. {example}")
            continue
        unknown = set(entry) - allowed
        if unknown:
            problem("E008", f"{where} has unknown keys {sorted(unknown)}", f"allowed: {sorted(allowed)}")
        spec = ScheduleSpec(name=name, cron=entry["cron"], job_type=entry["job"], arg=entry.get("arg"),
                            queue=entry.get("queue", "default"), tz=entry.get("tz", "UTC"))  # fmt: skip
        errors = schedule_errors(spec)
        for error, hint in errors:
            problem("E009", f"{where}: {error}", hint)
        if not errors:
            specs.append(spec)
    return tuple(specs)


def schedule_errors(spec: ScheduleSpec) -> list[tuple[str, str]]:
    """Everything that keeps a periodic job from being declared, as (error, hint) pairs; empty when it is fine.

    Each part (name, cron and tz, job type, queue, arg) is checked on its own, by the code the worker runs."""
    checks: tuple[tuple[Any, str], ...] = (
        (lambda: validate_schedule_name(spec.name),
         "rename the SCHEDULES entry: letters, digits, '_' and '-' (max 100), e.g. 'nightly-report'"),
        (lambda: bgjob.ByCron(spec.cron, spec.tz),
         "cron has 5 fields 'minute hour day month weekday' (e.g. '0 3 * * *') or 6 with seconds first; "
         "tz is an IANA name like 'Europe/Berlin'"),
        (lambda: jobmod.validate_type(spec.job_type),
         "'job' is the job type a jobs.py handler registers, e.g. 'report' or 'billing.invoice'"),
        (lambda: jobmod.validate_queue(spec.queue),
         "'queue' is a bgjob queue name (lower-case letters, digits, '_' and '-', max 64) that a worker serves"),
        (lambda: jobmod.encode_arg(spec.arg),
         "'arg' must be JSON data (dict, list, str, int, float, bool, None) or bytes"),
    )  # fmt: skip
    found = []
    for run, hint in checks:
        try:
            run()
        except (bgjob.InvalidSchedule, bgjob.InvalidJob, TypeError, ValueError) as exc:
            found.append((str(exc), hint))
    return found


def schedule_error(spec: ScheduleSpec) -> str | None:
    """Why a periodic job cannot be declared (its problems joined by '; '), or None."""
    errors = schedule_errors(spec)
    return "; ".join(error for error, _ in errors) or None


def client_key_error(field: str, value: Any) -> str | None:
    """Why `value` is not usable as bgjob.Settings.<field>, in words that never quote a secret; None when it is.

    Checked as the client and workers use it: bgjob.Settings validates it, and the signing, verify and
    encryption keys are decoded (which needs PyNaCl, or cryptography, installed)."""
    try:
        settings = bgjob.Settings(**{field: value})
        if field == "signing_key" and settings.signing_key:
            signing.Signer(settings.signing_key)
        elif field == "verify_keys" and settings.verify_keys:
            signing.Verifier(settings.verify_keys)
        elif field == "encryption_keys" and settings.encryption_keys:
            encryption.cipher_for(settings.encryption_keys)
    except (bgjob.BgjobError, TypeError, ValueError) as exc:
        return str(exc)
    return None


def _url_error(url: Any) -> str | None:
    """What is wrong with a BGJOB URL, in words that never quote its user info (a password or token may hold
    '@', ':' or '/'; urllib's own messages would quote part of it); None when it is usable."""
    if not isinstance(url, str) or not url.strip():
        return "it must be a non-empty string"
    for part in url.split(","):
        part = part.strip()
        if "://" not in part:
            part = "nats://" + part
        scheme, _, rest = part.partition("://")
        # The user info ends at the last '@' (as bgjob.redaction.mask_url and bgjob.core.nats_servers read it).
        try:
            parsed = urllib.parse.urlsplit(f"{scheme}://{rest.rpartition('@')[2]}")
            port = parsed.port
        except ValueError:
            return "its host:port does not parse (the port must be a number from 1 to 65535)"
        if parsed.scheme not in URL_SCHEMES:
            return f"scheme {parsed.scheme!r} is not one of {', '.join(URL_SCHEMES)}"
        if not parsed.hostname:
            return "no host"
        if not _valid_host(parsed.hostname):
            return f"host {parsed.hostname!r} is not a host name or an IP address"
        if port == 0:
            return "port 0"
    return None


def _valid_host(host: str) -> bool:
    if ":" in host:  # IPv6, brackets already taken off by urlsplit
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        return True
    return bool(_HOST.fullmatch(host))


def _valid(validate: Any, value: Any) -> bool:
    try:
        validate(value)
    except (bgjob.InvalidJob, bgjob.InvalidSchedule):
        return False
    return True


def _load_middleware(path: Any) -> bgjob.Middleware:
    if not isinstance(path, str):
        raise ImproperlyConfigured(f"BGJOB['MIDDLEWARE'] entries must be dotted paths, got {path!r}")
    try:
        obj = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"BGJOB['MIDDLEWARE'] entry {path!r} cannot be imported: {exc}") from exc
    if isinstance(obj, type):
        try:
            obj = obj()
        except TypeError as exc:
            raise ImproperlyConfigured(f"BGJOB['MIDDLEWARE'] class {path!r} cannot be built without arguments: "
                                       f"{exc}") from exc
    if not callable(obj):
        raise ImproperlyConfigured(f"BGJOB['MIDDLEWARE'] entry {path!r} is not callable")
    return cast("bgjob.Middleware", obj)  # a callable named by the setting: called as (job, call_next)


# -- the process-wide config and client ------------------------------------------------------------
_lock = threading.Lock()
_config: Config | None = None
_client: bgjob.Client | None = None
_interactive: bgjob.Client | None = None


def get_config() -> Config:
    """settings.BGJOB, translated once per process (and again after a settings change in tests)."""
    global _config
    config = _config
    if config is None:
        with _lock:
            if _config is None:
                _config = parse(raw_setting())
            config = _config
    return config


def get_client() -> bgjob.Client:
    """The Django project's bgjob client; it connects lazily, on first use, and survives fork()."""
    global _client
    client = _client
    if client is None:
        config = get_config()
        with _lock:
            if _client is None:
                if config.client.immediate:
                    refuse_immediate_in_production()
                _client = bgjob.Client(project_settings(config.client))
                if config.client.immediate:  # BGJOB["IMMEDIATE"] (test-only): the project's handlers run inline
                    from .registry import registry

                    _client.immediate_mux, _client.immediate_retry_policy = registry, config.retry_policy()
            client = _client
    return client


def refuse_immediate_in_production() -> None:
    """ConfigurationError for BGJOB["IMMEDIATE"] (bgjob.testing.immediate) with DEBUG = False outside Django's test
    environment (django.test.utils.setup_test_environment, which the test runner and pytest-django call): then
    this is a deployed site, where jobs must go to NATS. A non-loopback URL is refused by bgjob.Settings itself."""
    from django.test import utils as test_utils

    if not django_settings.DEBUG and not hasattr(test_utils._TestState, "saved_data"):
        raise bgjob.ConfigurationError('BGJOB["IMMEDIATE"] is a test-only setting: it is refused with DEBUG = False '
                                       "outside tests; remove it from production settings")  # fmt: skip


def interactive_client() -> bgjob.Client:
    """The client of the admin pages and the management commands: the project's settings with retry_for and
    connect_timeout capped to about two seconds (bgjob.cli.interactive_settings), so that an unreachable NATS is
    reported at once rather than retried for retry_for while someone waits. One per process, apart from
    get_client()'s, connected lazily (on first use); closed by `reset()` like it."""
    global _interactive
    client = _interactive
    if client is None:
        from bgjob.cli import interactive_settings

        settings = interactive_settings(project_settings(get_config().client))
        with _lock:
            if _interactive is None:
                _interactive = bgjob.Client(settings)
            client = _interactive
    return client


def settings_dir() -> pathlib.Path | None:
    """The directory of the project's settings module (None when settings were configured without one)."""
    name = getattr(django_settings, "SETTINGS_MODULE", None)
    path = getattr(sys.modules.get(name), "__file__", None) if name else None
    return pathlib.Path(path).resolve().parent if path else None


def project_settings(client_settings: bgjob.Settings) -> bgjob.Settings:
    """client_settings with the embedded server pinned to the Django project, whatever the current directory.

    With no URL (BGJOB['URL'], BGJOB_URL), the data dir is BGJOB['DATA_DIR'] / BGJOB_DATA_DIR (a relative one is
    relative to the project root), else bgjob.server.default_data_dir() of the project root: the nearest folder
    at or above the settings module's directory holding pyproject.toml, manage.py, setup.py or .git (in Django's
    standard layout, the folder of manage.py). runserver, manage.py commands started from any directory,
    django-admin, gunicorn and pytest-django all import the same settings module, so they share one server.
    Settings configured without a module (settings.configure()) keep bgjob's current-directory rule.
    """
    start = settings_dir()
    if client_settings.url or start is None:
        return client_settings
    from bgjob import server

    data_dir = client_settings.data_dir
    if data_dir is None:
        data_dir = str(server.default_data_dir(start))
    elif not os.path.isabs(data_dir):
        data_dir = str(server.project_root(start) / data_dir)
    return dataclasses.replace(client_settings, data_dir=data_dir)


def reset() -> None:
    """Forget the config and close the client (settings changed, or a test is done with them)."""
    global _config, _client, _interactive
    with _lock:
        clients, _client, _interactive, _config = (_client, _interactive), None, None, None
    for client in clients:
        if client is not None:
            client.close()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "BGJOB":
        reset()

