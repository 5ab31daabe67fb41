"""Who owns a queue's configuration: create-only provisioning, what differs from this process's Settings, and
the one explicit way to change a queue's stream and consumer (`configure_queue`).

Provisioning creates a stream or consumer when it is missing and never changes an existing one: another
process's Settings must not rewrite the deadline of jobs running elsewhere. Callers compare what exists with
their Settings (`differences`) and say so (`how_to_change`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX, ConsumerConfig, ConsumerInfo, StreamConfig

from .errors import ConfigurationError
from .schedule import as_seconds
from .settings import Settings
from .topology import Topology, dlq_stream_config, queue_consumer_config, queue_stream_config

#: Settings-facing name -> StreamConfig field compared with an existing stream.
STREAM_FIELDS = {
    "replicas": "num_replicas",
    "duplicate_window": "duplicate_window",
    "allow_msg_schedules": "allow_msg_schedules",
    "dlq_max_age": "max_age",
    "subjects": "subjects",
    "retention": "retention",
}
#: Settings-facing name -> ConsumerConfig field compared with an existing consumer.
CONSUMER_FIELDS = {
    "ack_wait": "ack_wait",
    "max_ack_pending": "max_ack_pending",
    # max_deliver is not compared: bgjob creates consumers without a cap, and a cap set by configure_queue
    # (max_deliveries) is the queue's own, which no process's defaults argue with.
    "filter_subject": "filter_subject",
    "ack_policy": "ack_policy",
}
#: configure_queue keyword -> ConsumerConfig field, where the names differ.
CONSUMER_ATTRS = {"max_deliveries": "max_deliver"}
#: What configure_queue can change: keyword -> (`bgjob queue configure` option, where it lives: "consumer",
#: "stream" (a StreamConfig field) or "metadata" (a bgjob limit kept in the stream's metadata)).
QUEUE_OPTIONS = {
    "ack_wait": ("--ack-wait", "consumer"),
    "max_ack_pending": ("--max-ack-pending", "consumer"),
    "max_deliveries": ("--max-deliveries", "consumer"),
    "replicas": ("--replicas", "stream"),
    "duplicate_window": ("--duplicate-window", "stream"),
    "allow_msg_schedules": ("--allow-msg-schedules", "stream"),
    "max_entries": ("--max-entries", "metadata"),
    "max_age": ("--max-age", "metadata"),
}
#: The stream metadata keys of the limits bgjob enforces itself (JetStream's own limits would drop jobs: a stream
#: with message schedules refuses discard "new", and its max_age deletes delayed jobs and periodic schedules).
METADATA_KEYS = {"max_entries": "bgjob.max_entries", "max_age": "bgjob.max_age"}
#: configure_queue's value that removes a limit (max_entries, max_age, max_deliveries); the CLI's `none`.
NO_LIMIT = 0

Retry = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Difference:
    """One setting on which the server's stream or consumer differs from what this process would create.

    `name` is the Settings-facing name (`ack_wait`, `replicas`, ...); `actual` is the server's value (what runs),
    `wanted` this process's; seconds are floats.
    """

    name: str
    actual: Any
    wanted: Any

    def __str__(self) -> str:
        return f"{self.name} {show_value(self.actual)} (this process: {show_value(self.wanted)})"


def differences(actual: Any, wanted: Any, fields: dict[str, str]) -> list[Difference]:
    """Where the server's `actual` StreamConfig/ConsumerConfig differs from `wanted`, over `fields`
    (STREAM_FIELDS or CONSUMER_FIELDS); a field `wanted` leaves None is the server's to choose."""
    found = []
    for name, attr in fields.items():
        want, have = getattr(wanted, attr), getattr(actual, attr)
        if want is None:
            continue
        if isinstance(want, bool):  # the server leaves a flag that is off out of its config
            have = bool(have)
        if isinstance(want, float) and isinstance(have, (int, float)):
            same = math.isclose(want, have, rel_tol=1e-9, abs_tol=1e-6)
        else:
            same = want == have
        if not same:
            found.append(Difference(name, have, want))
    return found


def asked_for(settings: Settings, found: list[Difference]) -> tuple[list[Difference], list[Difference]]:
    """Split differences into those this process asked for (its Settings value is not the default: worth a
    warning) and those it merely defaults (the queue was configured on purpose: run with it, no warning)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    asked, defaulted = [], []
    for difference in found:
        default = defaults.get(difference.name, dataclasses.MISSING)
        if default is not dataclasses.MISSING and getattr(settings, difference.name) == default:
            defaulted.append(difference)
        else:
            asked.append(difference)
    return asked, defaulted


def how_to_change(queue: str, found: list[Difference], what: str) -> str:
    """The sentences telling how to change what differs (`what`: "the stream X"), with this process's values."""
    text = ""
    configurable = [d for d in found if d.name in QUEUE_OPTIONS]
    if configurable:
        flags = " ".join(
            QUEUE_OPTIONS[d.name][0] + ("" if d.wanted is True else f" {d.wanted:g}") for d in configurable
        )
        kwargs = ", ".join(f"{d.name}={d.wanted!r}" for d in configurable)
        text += f" To change it: `bgjob queue configure {queue} {flags}`"
        text += f" (or client.configure_queue({queue!r}, {kwargs}))"
        text += "; workers pick a new ack_wait up at their next start." if "ack_wait" in kwargs else "."
    fixed = [d.name for d in found if d.name not in QUEUE_OPTIONS]
    if fixed:
        text += f" {', '.join(fixed)} cannot be changed in place: delete {what} and let bgjob re-create it."
    return text


def show_value(value: Any) -> str:
    """A config value as people read it: seconds (floats) as `30s`, flags as on/off, None as `unset`."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}s"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


# -- create-only provisioning ----------------------------------------------------------------------------------------
async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamConfig:
    """Create the stream when it is missing and return the server's config of it.

    An existing stream is never changed, whatever `config` says: its replicas, limits and flags belong to whoever
    created or configured it (compare with `differences(actual, config, STREAM_FIELDS)`).
    """
    try:
        return (await js.add_stream(config)).config  # the same config again is accepted as it is
    except (nats.js.errors.BadRequestError, nats.js.errors.ServerError) as exc:
        # 10058: the name is in use with another configuration; the server may also refuse the config itself
        # (10074: replicas > 1 on a single server) before noticing that the stream exists.
        try:
            return (await js.stream_info(config.name or "")).config  # add_stream refused a nameless one first
        except nats.js.errors.NotFoundError:
            raise exc from None


async def consumer_request(
    nc: NATS, stream: str, config: ConsumerConfig, action: str, timeout: float
) -> ConsumerConfig:
    """Create (`action="create"`: refused with err_code 10148 if it exists with another config) or update
    (`action="update"`: refused if missing) a durable consumer; returns the server's config of it.

    nats-py's add_consumer always creates-or-updates, which silently rewrites an existing consumer.
    Raises nats.js.errors.APIError subclasses carrying the server's description.
    """
    request = {"stream_name": stream, "config": config.as_dict(), "action": action}
    subject = f"{DEFAULT_PREFIX}.CONSUMER.CREATE.{stream}.{config.durable_name}"
    if config.filter_subject and config.filter_subject != ">":
        subject += f".{config.filter_subject}"
    try:
        msg = await nc.request(subject, json.dumps(request).encode(), timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise nats.js.errors.ServiceUnavailableError from exc
    response = json.loads(msg.data)
    if "error" in response:
        nats.js.errors.APIError.from_error(response["error"])  # raises
    info: ConsumerInfo = ConsumerInfo.from_response(response)
    return info.config


async def ensure_consumer(nc: NATS, stream: str, config: ConsumerConfig, timeout: float) -> ConsumerConfig:
    """Create the durable consumer when it is missing and return the server's config of it.

    An existing consumer is never changed (compare with `differences(actual, config, CONSUMER_FIELDS)`).
    Raises nats.js.errors.NotFoundError when the stream does not exist.
    """
    try:
        return await consumer_request(nc, stream, config, "create", timeout)  # the same config: accepted as is
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != 10148:  # consumer already exists (with another configuration)
            raise
    assert config.durable_name is not None  # bgjob's consumers are durable
    info: ConsumerInfo = await nc.jetstream(timeout=timeout).consumer_info(stream, config.durable_name)
    return info.config


def unusable_consumer(actual: ConsumerConfig, wanted: ConsumerConfig) -> list[str]:
    """What makes an existing consumer (one an operator or another tool created) unusable as `wanted`: another
    subject filter (its jobs would never be delivered, or others' would), an ack policy other than explicit (a
    delivery would count as done before the handler ran), or a push consumer (workers pull). Empty when usable."""
    problems = []
    filters = list(actual.filter_subjects or ()) or ([actual.filter_subject] if actual.filter_subject else [])
    if filters != [wanted.filter_subject]:
        problems.append(f"filter {', '.join(filters) or 'none'} instead of {wanted.filter_subject}")
    if actual.ack_policy != wanted.ack_policy:
        problems.append(f"ack policy {getattr(actual.ack_policy, 'value', actual.ack_policy)} instead of "
                        f"{getattr(wanted.ack_policy, 'value', wanted.ack_policy)}")  # fmt: skip
    if actual.deliver_subject:
        problems.append(f"a push consumer (deliver subject {actual.deliver_subject}), not a pull one")
    return problems


async def provision_queue(js: JetStreamContext, topology: Topology, settings: Settings, queue: str) -> StreamConfig:
    """Create the queue's stream when missing (never its consumer: that is the workers' business)."""
    return await ensure_stream(js, queue_stream_config(topology, settings, queue))


async def provision_dlq(js: JetStreamContext, topology: Topology, settings: Settings) -> StreamConfig:
    """Create the DLQ stream when missing; returns the server's config of it."""
    return await ensure_stream(js, dlq_stream_config(topology, settings))


# -- the explicit change --------------------------------------------------------------------------------------------
def validate_queue_changes(
    *,
    ack_wait: float | timedelta | None = None,
    max_ack_pending: int | None = None,
    replicas: int | None = None,
    duplicate_window: float | timedelta | None = None,
    allow_msg_schedules: bool | None = None,
    max_entries: int | None = None,
    max_age: float | timedelta | None = None,
    max_deliveries: int | None = None,
) -> dict[str, Any]:
    """The requested changes of a queue's configuration, checked and normalised (seconds as float); the
    arguments left None are not in the result. A limit (`max_entries`, `max_age`, `max_deliveries`) given as
    NO_LIMIT (0) is removed: None in the result. Raises ConfigurationError naming the bad argument."""
    changes: dict[str, Any] = {}
    if max_entries is not None:
        changes["max_entries"] = _limit("max_entries", max_entries, lambda v: _count("max_entries", v, 1, 2**62))
    if max_age is not None:
        changes["max_age"] = _limit("max_age", max_age, lambda v: _seconds("max_age", v, minimum=1.0))
    if max_deliveries is not None:
        # The worker dead-letters the server's last delivery of a message unrun (reason max_deliveries), so that no
        # message stays undeliverable in the stream: a cap of 1 would never let a job run.
        changes["max_deliveries"] = _limit("max_deliveries", max_deliveries,
                                           lambda v: _count("max_deliveries", v, 2, 1_000_000))  # fmt: skip
    if ack_wait is not None:
        changes["ack_wait"] = _seconds("ack_wait", ack_wait, minimum=1.0)
    if max_ack_pending is not None:
        changes["max_ack_pending"] = _count("max_ack_pending", max_ack_pending, 1, 10_000_000)
    if replicas is not None:
        changes["replicas"] = _count("replicas", replicas, 1, 5)
    if duplicate_window is not None:
        changes["duplicate_window"] = _seconds("duplicate_window", duplicate_window, minimum=0.1)
    if allow_msg_schedules is not None:
        if allow_msg_schedules is not True:
            raise ConfigurationError(
                "allow_msg_schedules can only be switched on (True): delayed, retried and "
                "periodic jobs need message schedules, and the server cannot switch them off"
            )
        changes["allow_msg_schedules"] = True
    return changes


def _limit(name: str, value: Any, check: Callable[[Any], Any]) -> Any:
    """None for NO_LIMIT (0, 0.0 or a zero timedelta: remove the limit), else `check(value)`."""
    if not isinstance(value, bool) and (value == NO_LIMIT or (isinstance(value, timedelta) and not value)):
        return None
    return check(value)


def queue_limits(config: StreamConfig) -> tuple[int | None, float | None]:
    """(max_entries, max_age in seconds) kept in a queue stream's metadata; None for a limit that is not set
    (or unreadable: a hand-edited value that is not a positive number is no limit)."""
    metadata = config.metadata or {}
    found: list[Any] = []
    for name, kind in (("max_entries", int), ("max_age", float)):
        try:
            value = kind(metadata[METADATA_KEYS[name]])
        except (KeyError, ValueError, TypeError):
            value = None
        found.append(value if value is not None and math.isfinite(value) and value > 0 else None)
    return found[0], found[1]


def deliveries_cap(max_deliver: int | None) -> int | None:
    """A consumer's max_deliver as bgjob shows it: None when unlimited (JetStream's -1 or 0)."""
    return max_deliver if max_deliver is not None and max_deliver > 0 else None


def _seconds(name: str, value: Any, minimum: float) -> float:
    seconds = as_seconds(value)
    if seconds is None:
        raise ConfigurationError(f"{name} must be seconds (a number or a timedelta), not {value!r}")
    if not math.isfinite(seconds) or seconds < minimum:
        unit = "second" if minimum == 1 else "seconds"
        raise ConfigurationError(f"{name} must be at least {minimum:g} {unit}, not {value!r}")
    return seconds


def _count(name: str, value: Any, minimum: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a whole number, not {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigurationError(f"{name} must be between {minimum} and {maximum}, not {value}")
    return value


async def configure_queue(
    js: JetStreamContext,
    nc: NATS,
    topology: Topology,
    settings: Settings,
    queue: str,
    changes: dict[str, Any],
    *,
    retry: Retry,
) -> dict[str, tuple[Any, Any]]:
    """Apply `changes` (from validate_queue_changes) to the queue's stream and consumer; returns
    {field: (old, new)} for what changed (old None: the consumer was created with it, or the limit was unset).

    The stream is created from `settings` first when missing. A consumer that does not exist yet is created
    (from `settings` plus `changes`) only when a consumer field is asked for. The limits bgjob enforces itself
    (max_entries, max_age) go into the stream's metadata, every other key of it kept. `retry(fn, *args)` calls
    with the caller's retries of transient errors. Raises ConfigurationError with the server's description when
    it refuses a change (e.g. replicas > 1 on a single server).
    """
    stream = topology.queue_stream(queue)
    timeout = settings.request_timeout
    changed: dict[str, tuple[Any, Any]] = {}
    current = await retry(provision_queue, js, topology, settings, queue)

    wanted = {k: v for k, v in changes.items() if QUEUE_OPTIONS[k][1] == "stream"}
    old: dict[str, Any] = {k: getattr(current, STREAM_FIELDS[k]) for k in wanted}
    old.update({k: bool(old[k]) for k, v in wanted.items() if isinstance(v, bool)})  # a flag that is off: absent
    fields = {STREAM_FIELDS[k]: v for k, v in wanted.items() if old[k] != v}
    limits = {k: v for k, v in changes.items() if QUEUE_OPTIONS[k][1] == "metadata"}
    max_entries, max_age = queue_limits(current)
    old.update({k: {"max_entries": max_entries, "max_age": max_age}[k] for k in limits})
    if any(old[k] != v for k, v in limits.items()):
        metadata = dict(current.metadata or {})
        for name, value in limits.items():
            if value is None:
                metadata.pop(METADATA_KEYS[name], None)
            else:
                metadata[METADATA_KEYS[name]] = f"{value:g}" if isinstance(value, float) else str(value)
        fields["metadata"] = metadata
    if fields:
        try:
            await retry(js.update_stream, current.evolve(**fields))
        except nats.js.errors.APIError as exc:
            raise ConfigurationError(f"the server refused to change stream {stream}: {_server_says(exc)}") from exc
        changed.update({k: (old[k], v) for k, v in {**wanted, **limits}.items() if old[k] != v})

    wanted = {k: v for k, v in changes.items() if QUEUE_OPTIONS[k][1] == "consumer"}
    if wanted:
        fields = {CONSUMER_ATTRS.get(k, k): -1 if k == "max_deliveries" and v is None else v for k, v in wanted.items()}
        try:
            existing = (await retry(js.consumer_info, stream, topology.consumer(queue))).config
        except nats.js.errors.NotFoundError:
            request, action = queue_consumer_config(topology, settings, queue).evolve(**fields), "create"
            old = dict.fromkeys(wanted)
        else:
            request, action = ConsumerConfig.from_response(existing.as_dict()).evolve(**fields), "update"
            old = {k: getattr(existing, CONSUMER_ATTRS.get(k, k)) for k in wanted}
            if "max_deliveries" in old:
                old["max_deliveries"] = deliveries_cap(old["max_deliveries"])
        if any(old[k] != v for k, v in wanted.items()):
            try:
                await retry(consumer_request, nc, stream, request, action, timeout)
            except nats.js.errors.APIError as exc:  # what `retry` gave up on is a bgjob.ConnectionError
                raise ConfigurationError(
                    f"the server refused to change consumer {request.durable_name}: {_server_says(exc)}"
                ) from exc
            changed.update({k: (old[k], v) for k, v in wanted.items() if old[k] != v})
    return changed


def _server_says(exc: nats.js.errors.APIError) -> str:
    return exc.description or f"{type(exc).__name__} (code {exc.code}, err_code {exc.err_code})"
