"""Placement: singleton handlers (from dagnats) and placement claims (from ebind), with JetStream consumers only.

- A singleton type (`@mux.handler("t", singleton=True)`) runs one job at a time across every worker and process.
  Producers do not know which types are singletons, so a job arrives on the queue's `job.<type>` subject; the
  worker that pulls it from the main consumer forwards it (same headers and body, attempts carried, a
  `Nats-Msg-Id` derived from the delivery so a crash mid-forward never doubles it) to `<prefix>.<queue>.one.<type>`
  and acks it. That subject is served by a durable consumer of its own, `<prefix>-<queue>-one-<type>`, with
  `max_ack_pending=1`: the server delivers its next message only once the one pending is acked, termed, or its
  ack_wait ran out (a worker that died frees the slot within ack_wait). The cap is the consumer's, on the
  server: provisioning is create-only and never rewrites a consumer (DESIGN §10 "Configuration has an owner"),
  `configure_queue` changes only the main consumer, and the lane's config comes from no Setting, so a process
  with default settings cannot widen it; a worker that finds the consumer with another `max_ack_pending`
  refuses to serve it (ConfigurationError). Every worker serving the type must register it singleton (a worker
  that does not would run it straight from the main consumer).
- A placed job (`send_job(..., target="primary")`) is published to `<prefix>.<queue>.target.<claim>.<type>`,
  its claim in the `Bgjob-Target` header (retries and dead letters sent back keep it). A worker holding the
  claim (`Worker(..., claims=["primary"])`) serves it through a durable consumer per claim,
  `<prefix>-<queue>-target-<claim>`; the main consumer's `job.>` never matches it, so a job nobody holds a claim
  for waits in the stream until a worker with that claim starts.
- A grouped type (`@mux.handler("render-pdf", group="reports")`, ebind's worker groups) runs only on a worker of
  its group (`Worker(..., groups=["reports"])`). As for a singleton, the producer knows nothing: the job arrives on
  `job.<type>`, and the default worker that pulls it from the main consumer forwards it (the same way: headers,
  body, attempts carried, a derived `Nats-Msg-Id`, then the ack) to `<prefix>.<queue>.group.<group>.<type>`,
  served by the group's durable consumer `<prefix>-<queue>-group-<group>` (normal `max_ack_pending`). A group
  worker serves only its groups' consumers (no main consumer, no singleton, partition or claim lane): a queue
  stream is WorkQueue-retention, so consumers' filters may not overlap, which rules out a group consumer
  filtered on `job.<type>` beside the main consumer's `job.>`. A grouped job waits on its group's subject until
  a worker of the group runs. A job sent with `target=` goes to its claim's consumer whatever its type's group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from . import job as jobmod
from .codec import job_id_of
from .core import Core
from .errors import ConfigurationError
from .handler import Mux, validate_group
from .headers import MSG_ID, derived_msg_id, without_nats_headers
from .provisioning import ensure_consumer
from .topology import PARTITIONS, lane_consumer_config

log = logging.getLogger("bgjob.worker")


@dataclass(frozen=True)
class Lane:
    """One placement consumer a worker serves beside its queue's main consumer.

    `config`: the durable consumer's config; `concurrency`: handlers run at once for it; `what`: for logs."""

    config: ConsumerConfig
    concurrency: int
    what: str
    singleton: bool = False
    #: a partition's lane: retries are naks, never republished (they would go to the end of the line).
    ordered: bool = False


def validate_claims(claims: Sequence[str]) -> tuple[str, ...]:
    """Claims as a tuple, each checked (`bgjob.job.validate_claim`); raises InvalidJob, TypeError for a lone str."""
    if isinstance(claims, (str, bytes)):
        raise TypeError(f"claims must be a list of claim names, got {claims!r}")
    return tuple(dict.fromkeys(jobmod.validate_claim(claim) for claim in claims))


def validate_groups(groups: Sequence[str], mux: Mux) -> tuple[str, ...]:
    """A worker's groups as a tuple, each checked (`bgjob.handler.validate_group`) and each with at least one
    handler of `mux` registered `group=` it. Raises TypeError for a lone str, InvalidJob for a bad name,
    ConfigurationError for a group without a handler in `mux` (a worker that could run none of its jobs)."""
    if isinstance(groups, (str, bytes)):
        raise TypeError(f"groups must be a list of group names, got {groups!r}")
    found = tuple(dict.fromkeys(validate_group(group) for group in groups))
    known = set(grouped_types(mux).values())
    for group in found:
        if group not in known:
            raise ConfigurationError(f"group {group!r}: no handler of this worker's mux is registered with "
                                     f"group={group!r} (groups with handlers: {sorted(known) or 'none'})")  # fmt: skip
    return found


def grouped_types(mux: Mux) -> dict[str, str]:
    """The job types `mux` registered with a `group`, each with its group."""
    return {t: group for t in mux.types() if (group := mux.options(t).group) is not None}


def singleton_types(mux: Mux) -> list[str]:
    """The job types `mux` registered with `singleton=True`."""
    return [t for t in mux.types() if mux.options(t).singleton]


def lanes_for(core: Core, queue: str, mux: Mux, claims: Sequence[str], concurrency: int,
              groups: Sequence[str] = ()) -> list[Lane]:  # fmt: skip
    """The lanes a worker of `queue` with `mux` and `claims` serves: one per singleton type, one per claim, and
    the queue's PARTITIONS partitions when `mux` has a partitioned handler; a group worker's (`groups` given):
    one per group, nothing else."""
    topology, settings = core.topology, core.settings
    if groups:
        return [Lane(lane_consumer_config(topology.group_consumer(queue, g), topology.group_filter(queue, g), settings,
                                          max_ack_pending=settings.max_ack_pending,
                                          description=f"bgjob group {g!r} of queue {queue!r}"),
                     concurrency, f"group {g!r}") for g in groups]  # fmt: skip
    found = [Lane(lane_consumer_config(topology.singleton_consumer(queue, t), topology.singleton_subject(queue, t),
                                       settings, max_ack_pending=1,
                                       description=f"bgjob singleton {t!r} of queue {queue!r}"),
                  1, f"singleton {t!r}", singleton=True) for t in singleton_types(mux)]  # fmt: skip
    found += [Lane(lane_consumer_config(topology.target_consumer(queue, c), topology.target_filter(queue, c),
                                        settings, max_ack_pending=settings.max_ack_pending,
                                        description=f"bgjob claim {c!r} of queue {queue!r}"),
                   concurrency, f"claim {c!r}") for c in claims]  # fmt: skip
    if any(mux.options(t).partitioned for t in mux.types()):
        found += [Lane(lane_consumer_config(topology.partition_consumer(queue, n),
                                            f"{topology.prefix}.{queue}.part.{n}.>", settings, max_ack_pending=1,
                                            description=f"bgjob partition {n} of queue {queue!r}"),
                       1, f"partition {n}", singleton=True, ordered=True) for n in range(PARTITIONS)]  # fmt: skip
    return found


async def ensure_lane(core: Core, queue: str, lane: Lane) -> ConsumerConfig:
    """Create the lane's consumer when missing (never changing an existing one); returns the server's config.

    Raises ConfigurationError when a singleton's consumer exists with max_ack_pending other than 1."""
    await core.ensure_queue(queue)
    stream = core.topology.queue_stream(queue)
    actual = await core.retry(ensure_consumer, core.nc, stream, lane.config, core.settings.request_timeout)
    if lane.singleton and actual.max_ack_pending != 1:
        raise ConfigurationError(f"consumer {lane.config.durable_name} of the {lane.what} has max_ack_pending "
                                 f"{actual.max_ack_pending}, not 1: it would not be a singleton; delete it "
                                 f"(`nats consumer rm {stream} {lane.config.durable_name}`) for workers to "
                                 "create it again")  # fmt: skip
    return actual


async def forward_singleton(core: Core, queue: str, msg: Msg, job_type: str) -> None:
    """Move a singleton type's job from the main consumer to its singleton subject, then ack it there; on failure
    nak it (redelivered, forwarded again: the derived message id keeps it one message)."""
    await _forward(core, queue, msg, core.topology.singleton_subject(queue, job_type), "one",
                   f"singleton job of type {job_type!r}")  # fmt: skip


async def forward_grouped(core: Core, queue: str, msg: Msg, job_type: str, group: str) -> None:
    """Move a grouped type's job from the main consumer to its group's subject, then ack it there; on failure
    nak it (redelivered, forwarded again: the derived message id keeps it one message)."""
    await _forward(core, queue, msg, core.topology.group_subject(queue, group, job_type), "group",
                   f"job of type {job_type!r} to group {group!r}")  # fmt: skip


async def _forward(core: Core, queue: str, msg: Msg, subject: str, kind: str, what: str) -> None:
    try:
        headers = without_nats_headers(msg.headers)
        headers[MSG_ID] = derived_msg_id(kind, job_id_of(msg), msg)
        await core.publish(subject, msg.data or b"", headers, queue=queue)
        await msg.ack()
    except Exception as exc:  # noqa: BLE001 - redelivered and forwarded again
        log.warning("queue %r: could not forward %s: %r", queue, what, exc)
        try:
            await msg.nak(delay=1.0)
        except Exception:  # noqa: BLE001 - redelivered after ack_wait
            pass
