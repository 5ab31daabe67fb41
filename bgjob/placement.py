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
  for waits in the stream until a worker with that claim starts. Claims may come from a callable, asked again
  every `claims_interval` seconds (bgjob.worker.claims): a claim's lane starts and stops with it.
- `no_target`: a placed job sent with `target_timeout=` carries `Bgjob-Target-Until` (RFC 3339 UTC: when a
  holder must have taken it). Every worker of the queue (its main consumer's loop) sweeps every
  TARGET_SWEEP_INTERVAL seconds (`UntakenSweep`): the claims that have jobs waiting (the stream's subject list),
  less those a live worker of the queue holds (the worker directory's entries list their claims; an entry
  expires Settings.worker_ttl after its worker's last beat, so a SIGKILLed holder stops counting then); for each
  claim nobody holds, its jobs that its consumer never delivered (beyond the consumer's delivered sequence: a job
  a holder took is never swept, even while that holder drains) whose until-time has passed are dead-lettered
  with reason `no_target` (`bgjob.dlq.dead_letter_untaken`: the DLQ publish first, a message id derived from the
  stored message, then the delete by sequence; a crash in between gives at worst a second dead letter after the
  DLQ's duplicate window, never a lost job). The race left: a holder that starts in the instant between a
  sweep's reads and its delete may take the job too; then it runs and is in the DLQ. A directory that cannot
  be read skips the sweep (nothing is dead-lettered on a guess). Workers of versions that write no `claims` in
  their entry hold nothing for the sweep. A queue with no worker at all sweeps nothing.
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
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from . import directory
from . import job as jobmod
from .codec import job_id_of
from .core import Core
from .dlq import dead_letter_untaken
from .errors import ConfigurationError
from .handler import Mux, validate_group
from .headers import MSG_ID, TARGET_UNTIL, derived_msg_id, without_nats_headers
from .provisioning import ensure_consumer, unusable_consumer
from .topology import PARTITIONS, lane_consumer_config

log = logging.getLogger("bgjob.worker")

#: seconds between a worker's sweeps for placed jobs nobody took by their Bgjob-Target-Until (`UntakenSweep`).
TARGET_SWEEP_INTERVAL = 5.0
#: the most waiting placed jobs one sweep reads; the next sweep goes on from there.
TARGET_SWEEP_READS = 500


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
    found += [claim_lane(core, queue, c, concurrency) for c in claims]
    if any(mux.options(t).partitioned for t in mux.types()):
        found += [Lane(lane_consumer_config(topology.partition_consumer(queue, n),
                                            f"{topology.prefix}.{queue}.part.{n}.>", settings, max_ack_pending=1,
                                            description=f"bgjob partition {n} of queue {queue!r}"),
                       1, f"partition {n}", singleton=True, ordered=True) for n in range(PARTITIONS)]  # fmt: skip
    return found


def claim_lane(core: Core, queue: str, claim: str, concurrency: int) -> Lane:
    """The lane of a claim (validated by the caller): its durable consumer `<prefix>-<queue>-target-<claim>` on
    `<prefix>.<queue>.target.<claim>.>`, up to `concurrency` handlers at once."""
    topology, settings = core.topology, core.settings
    return Lane(lane_consumer_config(topology.target_consumer(queue, claim), topology.target_filter(queue, claim),
                                     settings, max_ack_pending=settings.max_ack_pending,
                                     description=f"bgjob claim {claim!r} of queue {queue!r}"),
                concurrency, f"claim {claim!r}")  # fmt: skip


async def ensure_lane(core: Core, queue: str, lane: Lane) -> ConsumerConfig:
    """Create the lane's consumer when missing (never changing an existing one); returns the server's config.

    Raises ConfigurationError when the consumer exists with another filter, ack policy or as a push consumer
    (`provisioning.unusable_consumer`), or a singleton's with max_ack_pending other than 1."""
    await core.ensure_queue(queue)
    stream = core.topology.queue_stream(queue)
    actual = await core.retry(ensure_consumer, core.nc, stream, lane.config, core.settings.request_timeout)
    problems = unusable_consumer(actual, lane.config)
    if problems:
        raise ConfigurationError(f"consumer {lane.config.durable_name} of the {lane.what} exists with "
                                 f"{'; '.join(problems)}: its jobs would not run as bgjob runs them; delete it "
                                 f"(`nats consumer rm {stream} {lane.config.durable_name}`) for workers to "
                                 "create it again")  # fmt: skip
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


#: seconds between two looks (by each worker's sweep) for partitions and groups whose jobs no worker serves.
UNSERVED_CHECK_INTERVAL = 60.0


async def unserved_routes(core: Core, queue: str) -> list[str]:
    """Why jobs of `queue` wait on partition or group subjects that no running worker serves (nothing would
    ever run them, and nothing else says so): one line per partition or group whose consumer is missing or
    has neither a pull request waiting nor a job out. Requests: two stream infos, then one consumer info per
    partition or group with jobs waiting. (Claims have target_timeout and the no_target sweep.)"""
    topology = core.topology
    stream = topology.queue_stream(queue)
    found = []
    for kind, start in (("partition", f"{topology.prefix}.{queue}.part."),
                        ("group", f"{topology.prefix}.{queue}.group.")):  # fmt: skip
        info = await core.js.stream_info(stream, subjects_filter=start + ">")
        waiting: dict[str, int] = {}
        for subject, count in (info.state.subjects or {}).items():
            token = subject[len(start) :].partition(".")[0]
            waiting[token] = waiting.get(token, 0) + count
        for token, count in sorted(waiting.items()):
            if kind == "partition":
                if not token.isdigit():
                    continue
                name = topology.partition_consumer(queue, int(token))
            else:
                name = topology.group_consumer(queue, token)
            try:
                consumer = await core.js.consumer_info(stream, name)
                served = bool(consumer.num_waiting) or bool(consumer.num_ack_pending)
            except nats.js.errors.NotFoundError:
                served = False
            if served:
                continue
            if kind == "partition":
                found.append(f"{count} job(s) wait in partition {token}, which no running worker serves: a worker "
                             "serves the partitions only when a handler of its mux is registered partitioned=True "
                             "(a job sent with partition_key= for a type no worker registers so waits)")  # fmt: skip
            else:
                found.append(f"{count} job(s) wait for worker group {token!r}, which no running worker serves: "
                             f"start Worker(..., groups=[{token!r}]) or bgjob worker --group {token}")  # fmt: skip
    return found


class UntakenSweep:
    """One worker's sweep for the placed jobs of `queue` that no holder of their claim took by their
    Bgjob-Target-Until: dead-lettered, reason `no_target` (see this module's docstring). `sensitive(job_type)`:
    the handler's sensitive arg keys. Run by the main consumer's FetchLoop every TARGET_SWEEP_INTERVAL seconds;
    each sweep reads at most TARGET_SWEEP_READS waiting jobs and goes on where the last one stopped.
    `dead_lettered(job_id, job_type, error)` is told of each job it dead-lettered (the worker's lifecycle event)."""

    def __init__(self, core: Core, queue: str, sensitive: Callable[[str], Collection[str]] | None = None,
                 dead_lettered: Callable[[str, str, str], None] | None = None) -> None:  # fmt: skip
        self.core = core
        self.queue = queue
        self.sensitive = sensitive
        self.dead_lettered = dead_lettered
        #: per claim, the stream sequence the next sweep reads from.
        self._resume: dict[str, int] = {}
        #: when (time.monotonic()) the next look for partitions and groups nobody serves is due.
        self._next_unserved_check = 0.0

    async def sweep(self) -> int:
        """One sweep; returns how many jobs it dead-lettered. Requests: one stream info; with placed jobs
        waiting, the directory's reads; per claim nobody holds, one consumer info and one read per job waiting
        (bounded). Raises nats-py's and bgjob's errors (the caller logs them and sweeps again later)."""
        core, queue = self.core, self.queue
        topology = core.topology
        stream = topology.queue_stream(queue)
        if time.monotonic() >= self._next_unserved_check:
            self._next_unserved_check = time.monotonic() + UNSERVED_CHECK_INTERVAL
            for problem in await unserved_routes(core, queue):
                log.warning("queue %r: %s", queue, problem)
        info = await core.js.stream_info(stream, subjects_filter=topology.target_filter(queue))
        start = topology.target_subject(queue, "", "")[:-1]  # `<prefix>.<queue>.target.`
        waiting = {subject[len(start) :].partition(".")[0] for subject in (info.state.subjects or {})}
        self._resume = {claim: seq for claim, seq in self._resume.items() if claim in waiting}
        if not waiting:
            return 0
        unheld = waiting - await directory.held_claims(core, queue)
        reads = moved = 0
        for claim in sorted(unheld):
            try:
                consumer = await core.js.consumer_info(stream, topology.target_consumer(queue, claim))
                taken = consumer.delivered.stream_seq if consumer.delivered else 0
            except nats.js.errors.NotFoundError:
                taken = 0  # no holder ever started: nothing was delivered
            seq = max(self._resume.pop(claim, 0), taken or 0)
            now = datetime.now(timezone.utc)
            while True:
                if reads >= TARGET_SWEEP_READS:
                    self._resume[claim] = seq
                    return moved
                try:
                    found = await core.js.get_msg(stream, seq + 1, subject=topology.target_filter(queue, claim),
                                                  next=True)  # fmt: skip
                except nats.js.errors.NotFoundError:
                    break  # the claim's last waiting job was read
                reads += 1
                seq = found.seq or seq + 1
                until = jobmod.parse_time((found.headers or {}).get(TARGET_UNTIL))
                if until is None or until > now:
                    continue
                done = await dead_letter_untaken(core, queue, claim, seq, sensitive=self.sensitive)
                if done is not None:
                    moved += 1
                    if self.dead_lettered is not None:
                        self.dead_lettered(*done)
        return moved
