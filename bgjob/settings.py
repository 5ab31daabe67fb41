"""The one place where bgjob's configuration and its defaults live."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .job import validate_queue
from .redaction import MASK, is_sensitive_name, mask_url

_PREFIX = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Settings:
    """Client and topology settings; every field has a working default.

    `url` None means: use `BGJOB_URL`, else start the project's embedded nats-server.
    Several URLs may be given comma-separated (a cluster).
    """

    url: str | None = None
    #: subject prefix; stream names are the upper-cased prefix plus the queue name.
    prefix: str = "bgjob"
    #: stream replicas (1 for a single server, 3 for a production cluster).
    replicas: int = 1
    #: seconds within which a repeated job id (`Nats-Msg-Id`) is dropped as a duplicate.
    duplicate_window: float = 120.0
    #: seconds a delivered job may go unacknowledged before JetStream redelivers it;
    #: workers extend it with heartbeats while a handler runs.
    ack_wait: float = 30.0
    #: queue-wide cap on delivered-but-unfinished jobs across all workers (None: server default).
    max_ack_pending: int | None = None
    #: seconds dead letters are kept.
    dlq_max_age: float = 30 * 24 * 3600.0
    #: seconds stored job results are kept.
    result_ttl: float = 24 * 3600.0
    #: seconds a job's checkpoint (`job.checkpoint`) outlives its last save (the `<PREFIX>_CHECKPOINTS` bucket's
    #: max age, set when bgjob creates it): one left by a job that never finished is dropped then.
    checkpoint_ttl: float = 7 * 24 * 3600.0
    #: seconds a signal (`client.send_signal`) waits to be consumed (the `<PREFIX>_SIGNALS` bucket's max age).
    signal_ttl: float = 7 * 24 * 3600.0
    #: seconds a job's latest progress (`job.report_progress`) is kept (the `<PREFIX>_PROGRESS` bucket's max age).
    progress_ttl: float = 24 * 3600.0
    #: seconds between two stored progress reports of one job: reports in between are coalesced (the latest is
    #: stored when the interval has passed, and when the handler returns).
    progress_interval: float = 0.5
    #: seconds a worker's directory entry outlives its last heartbeat (it beats every third of this).
    worker_ttl: float = 15.0
    #: seconds a job sent with `target=` waits for a worker holding its claim before a worker of its queue
    #: dead-letters it (reason `no_target`), when the send gives no `target_timeout`; None: it waits for ever.
    target_timeout: float | None = None
    #: queues whose jobs store their results by default (send_job's store_result overrides).
    result_queues: frozenset[str] = frozenset()
    connect_timeout: float = 5.0
    #: seconds one JetStream request (a publish's PubAck) may take.
    request_timeout: float = 5.0
    #: seconds between the client's PINGs to the server: with `max_outstanding_pings` it bounds how long a
    #: dead (half-open) connection goes unnoticed, `ping_interval * (max_outstanding_pings + 1)` seconds at most
    #: (20 s by default; nats-py's own defaults, 120 s and 2, take up to 6 minutes). Then nats-py reconnects.
    ping_interval: float = 5.0
    #: PINGs left unanswered before the connection is declared dead and re-established.
    max_outstanding_pings: int = 3
    #: seconds transient errors are retried (tenacity) before bgjob.ConnectionError. The bound of every blocking
    #: call (send_job, send_jobs, result, queue_stats, the DLQ API, ...): it returns or raises within retry_for
    #: plus at most one request_timeout (no attempt starts after retry_for; the last may take request_timeout).
    #: `result(wait=...)` adds its wait; connecting for the first time adds at most one connect_timeout.
    retry_for: float = 15.0
    #: wait for the server to confirm acks (slower; closes the lost-ack duplicate window).
    double_ack: bool = False
    #: base64 ed25519 key that signs every job sent (see bgjob.signing.generate_keypair).
    signing_key: str | None = None
    #: base64 ed25519 public keys; when given, workers dead-letter jobs no key verifies (reason "signature").
    verify_keys: tuple[str, ...] = ()
    #: embedded server data dir (None: per-user, per-project default).
    data_dir: str | None = None
    #: connection name shown by the server's monitoring.
    name: str | None = None
    #: extra keyword arguments for nats.connect (user, password, token, tls, user_credentials, nkeys_seed, ...):
    #: the only way to pass them. Keys nats.connect does not take, or that bgjob sets from its own fields
    #: (servers: url, name, connect_timeout) or manages (callbacks, reconnecting), are refused.
    nats_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: header names (exact, or `fnmatch` globs; case-insensitive) that are sensitive besides the built-in rule
    #: (names containing AUTH, TOKEN, KEY, SECRET, PASS, COOKIE, ... see `bgjob.redaction`): masked in every
    #: display, and left out of dead letters unless `dlq_keep_sensitive_headers`.
    sensitive_headers: tuple[str, ...] = ()
    #: keep sensitive headers in dead letters (a retried dead letter then carries them again); they are still
    #: masked wherever a dead letter is shown.
    dlq_keep_sensitive_headers: bool = False
    #: base64 AES-256 keys (32 bytes each, see `bgjob.encryption.generate_key`) for encrypting job bodies at
    #: rest: the first encrypts, any of them decrypts (rotation: put the new key first, drop the old one once no
    #: job encrypted with it is left). Empty: bodies are stored as sent.
    encryption_keys: tuple[str, ...] = ()
    #: publish lifecycle events (enqueued, started, succeeded, retry_scheduled, dead_lettered, ...) to the
    #: `<PREFIX>_EVENTS` stream, for `Client.events()`, `Client.job_status()` and `bgjob events` (bgjob.events).
    #: Producers publish `enqueued`, workers the rest: turn it on for both.
    events: bool = False
    #: seconds lifecycle events are kept (the events stream's max age; `job_status` answers "unknown" after it).
    events_max_age: float = 3 * 24 * 3600.0
    #: bytes the events stream may hold; past it the oldest events are dropped (they never decide anything), so
    #: events can never take the storage that queues, retries and dead letters need.
    events_max_bytes: int = 1 << 30
    #: test-only immediate mode (bgjob.testing.immediate; env BGJOB_IMMEDIATE=1): `send_job` runs the handler
    #: inline, in the caller's thread, and never connects; refused (ConfigurationError) with a `url` naming a host
    #: that is not loopback, the sign of a production configuration.
    immediate: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        """Every field, with secrets masked (the URL's user info, keys, and `nats_options` values whose names
        look secret): reprs reach logs, Sentry's frame variables and Django's debug page."""
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "url" and value is not None:
                value = mask_url(value)
            elif f.name in ("signing_key", "encryption_keys") and value:
                value = MASK if isinstance(value, str) else tuple(MASK for _ in value)
            elif f.name == "nats_options":
                value = {k: (MASK if is_sensitive_name(str(k)) and v is not None else v) for k, v in value.items()}
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from `BGJOB_*` environment variables (BGJOB_URL, BGJOB_PREFIX, BGJOB_REPLICAS, BGJOB_DATA_DIR,
        BGJOB_ENCRYPTION_KEYS: comma-separated, BGJOB_EVENTS: 1/0, BGJOB_EVENTS_MAX_AGE: seconds,
        BGJOB_IMMEDIATE: 1/0), then `overrides` (Settings fields; None values are skipped).

        Raises ConfigurationError for an unknown key (with the closest field names; nats.connect options go in
        `nats_options`), an environment variable that does not parse, or a value `Settings` refuses.
        """
        env: dict[str, Any] = {}
        for var, field, parse in _ENVIRONMENT:
            raw = os.environ.get(var)
            if raw:
                try:
                    env[field] = parse(raw)
                except ValueError:
                    raise ConfigurationError(f"environment variable {var}={raw!r} is not {parse.__name__}") from None
        env.update({k: v for k, v in overrides.items() if v is not None})
        _refuse_unknown(env)
        return cls(**env)


def _flag(raw: str) -> bool:
    """1/true/yes/on or 0/false/no/off (any case); ValueError otherwise."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_flag.__name__ = "1/0, true/false, yes/no or on/off"  # what from_env's error says it is not

#: The environment variables from_env reads: (variable, Settings field, parser).
_ENVIRONMENT: tuple[tuple[str, str, Any], ...] = (
    ("BGJOB_URL", "url", str),
    ("BGJOB_PREFIX", "prefix", str),
    ("BGJOB_REPLICAS", "replicas", int),
    ("BGJOB_DATA_DIR", "data_dir", str),
    ("BGJOB_ENCRYPTION_KEYS", "encryption_keys", lambda raw: tuple(k.strip() for k in raw.split(",") if k.strip())),
    ("BGJOB_EVENTS", "events", _flag),
    ("BGJOB_EVENTS_MAX_AGE", "events_max_age", float),
    ("BGJOB_EVENTS_MAX_BYTES", "events_max_bytes", int),
    ("BGJOB_IMMEDIATE", "immediate", _flag),
)
#: nats.connect options bgjob sets itself, and the Settings field (or reason) that owns each.
_OWN_NATS_OPTIONS = {
    "servers": "the url setting",
    "name": "the name setting",
    "connect_timeout": "the connect_timeout setting",
    "allow_reconnect": "bgjob (it reconnects for ever)",
    "max_reconnect_attempts": "bgjob (it reconnects for ever)",
    "reconnect_time_wait": "bgjob",
    "error_cb": "bgjob",
    "disconnected_cb": "bgjob",
    "reconnected_cb": "bgjob",
    "ping_interval": "the ping_interval setting",
    "max_outstanding_pings": "the max_outstanding_pings setting",
}


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings)]


@functools.cache
def _nats_connect_options() -> tuple[str, ...]:
    import nats.aio.client

    return tuple(p for p in inspect.signature(nats.aio.client.Client.connect).parameters if p != "self")


def _refuse_unknown(given: Mapping[str, Any]) -> None:
    """ConfigurationError for keys that are not Settings fields, each with the closest field names."""
    fields = _field_names()
    unknown = sorted(set(given) - set(fields))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, fields, n=2)
        if close:
            hints.append(f"{key!r} (did you mean {' or '.join(map(repr, close))}?)")
        elif key in _nats_connect_options():
            hints.append(f"{key!r} (a nats.connect option: pass nats_options={{{key!r}: ...}})")
        else:
            hints.append(repr(key))
    raise ConfigurationError(f"unknown bgjob setting{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                             f"the settings are: {', '.join(fields)}")  # fmt: skip


def _number(settings: Settings, field: str, minimum: float, *, integer: bool = False, optional: bool = False,
            inclusive: bool = True) -> None:  # fmt: skip
    value = getattr(settings, field)
    if value is None and optional:
        return
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (value >= minimum if inclusive else value > minimum) and (integer or value == value)  # not NaN
    if not ok:
        what = f"an int >= {minimum}" if integer else (f"seconds >= {minimum:g}" if inclusive else
                                                       f"seconds > {minimum:g}")  # fmt: skip
        raise ConfigurationError(f"{field} must be {what}{' or None' if optional else ''}, not {value!r}")
    if not integer and not isinstance(value, float):
        object.__setattr__(settings, field, float(value))


def _text(settings: Settings, field: str, *, optional: bool = True, secret: bool = False) -> None:
    value = getattr(settings, field)
    if (value is None and optional) or (isinstance(value, str) and value):
        return
    shown = f"a {type(value).__name__}" if secret and value else repr(value)
    raise ConfigurationError(f"{field} must be a non-empty str{' or None' if optional else ''}, not {shown}")


def _validate(settings: Settings) -> None:
    """Every field's type and range; ConfigurationError naming the first field that is wrong."""
    if not isinstance(settings.prefix, str) or not _PREFIX.fullmatch(settings.prefix):
        raise ConfigurationError(f"prefix {settings.prefix!r} must match {_PREFIX.pattern}")
    _text(settings, "url", secret=True)
    _number(settings, "replicas", 1, integer=True)
    if settings.replicas > 5:
        raise ConfigurationError(f"replicas must be 1 to 5 (JetStream's maximum), not {settings.replicas!r}")
    _number(settings, "ack_wait", 1)
    _number(settings, "max_ack_pending", 1, integer=True, optional=True)
    for field in ("duplicate_window", "dlq_max_age", "events_max_age", "result_ttl", "worker_ttl", "connect_timeout",
                  "request_timeout", "retry_for", "ping_interval", "checkpoint_ttl", "signal_ttl",
                  "progress_ttl", "progress_interval"):  # fmt: skip
        _number(settings, field, 0, inclusive=False)
    _number(settings, "target_timeout", 0, optional=True, inclusive=False)
    _number(settings, "max_outstanding_pings", 1, integer=True)
    _number(settings, "events_max_bytes", 1 << 20, integer=True)
    for field in ("double_ack", "dlq_keep_sensitive_headers", "events", "immediate"):
        if not isinstance(getattr(settings, field), bool):
            raise ConfigurationError(f"{field} must be True or False, not {getattr(settings, field)!r}")
    _text(settings, "signing_key", secret=True)
    _text(settings, "name")
    if settings.data_dir is not None:
        if not isinstance(settings.data_dir, (str, os.PathLike)) or not os.fspath(settings.data_dir):
            raise ConfigurationError(f"data_dir must be a path or None, not {settings.data_dir!r}")
        object.__setattr__(settings, "data_dir", os.fspath(settings.data_dir))
    queues = settings.result_queues
    if isinstance(queues, (str, bytes)) or not _iterable(queues):
        raise ConfigurationError(f"result_queues must be a collection of queue names, not {queues!r}")
    object.__setattr__(settings, "result_queues", frozenset(queues))
    for queue in settings.result_queues:
        try:
            validate_queue(queue)
        except ValueError as exc:
            raise ConfigurationError(f"result_queues: {exc}") from None
    keys = (settings.verify_keys,) if isinstance(settings.verify_keys, str) else settings.verify_keys
    if not _iterable(keys) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigurationError(f"verify_keys must be base64 public keys (str), not {settings.verify_keys!r}")
    object.__setattr__(settings, "verify_keys", tuple(keys))
    _texts(settings, "sensitive_headers", "header names or fnmatch patterns")
    _texts(settings, "encryption_keys", "base64 32-byte keys (see bgjob.encryption.generate_key)", secret=True)
    _validate_nats_options(settings.nats_options)
    if settings.immediate and settings.url is not None:
        from .testing.immediate import refuse_production_url

        refuse_production_url(settings.url)


def _texts(settings: Settings, field: str, what: str, *, secret: bool = False) -> None:
    """A field that is a str or a collection of non-empty str, stored as a tuple."""
    value = getattr(settings, field)
    values = (value,) if isinstance(value, str) else value
    if not _iterable(values) or isinstance(values, bytes | Mapping) or not all(isinstance(v, str) and v
                                                                                for v in values):  # fmt: skip
        shown = type(value).__name__ if secret else repr(value)
        raise ConfigurationError(f"{field} must be {what} (a str or a list of str), not {shown}")
    object.__setattr__(settings, field, tuple(values))


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _validate_nats_options(options: Any) -> None:
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"nats_options must be a dict of nats.connect keyword arguments, not {options!r}")
    known = _nats_connect_options()
    for key in options:
        if key in _OWN_NATS_OPTIONS:
            raise ConfigurationError(f"nats_options[{key!r}] is set by {_OWN_NATS_OPTIONS[key]}; leave it out")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=2)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ConfigurationError(f"nats_options[{key!r}] is not a nats.connect option{hint}")


_generated_init = Settings.__init__


@functools.wraps(_generated_init)
def _init(self: Settings, *args: Any, **kwargs: Any) -> None:
    _refuse_unknown(kwargs)  # the dataclass's own TypeError would name no alternative
    _generated_init(self, *args, **kwargs)


Settings.__init__ = _init  # type: ignore[method-assign]  # wraps the dataclass's generated __init__ on purpose
