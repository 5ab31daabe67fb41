"""The outbox relay: publishes the rows of `bgjob_outbox` (`OutboxMessage`) to JetStream, in insertion order, and
deletes each row once its job is stored (PubAck).

One round (`Relay.run_once`):

1. Claim up to `batch` ready rows (not failed; no lease, or the lease ran out) in one short transaction, oldest
   first, by setting a lease: `claimed_by` (this round's token) and `claimed_until` (now + `lease`). On databases
   with row locks that skip locked rows (PostgreSQL) the rows are read with `SELECT ... FOR UPDATE SKIP LOCKED`
   and leased; SQLite has no row locks: one conditional `UPDATE` sets the lease only on rows that are still
   ready (SQLite runs one writer at a time, so two relays never lease the same row), and the rows carrying this
   round's token are read back.
2. Publish them with `Client.publish_prepared`, outside any database transaction (no lock is held while NATS is
   talked to).
3. Delete the rows whose job was stored. A row the server refused for good (`InvalidJob`, `JobTooLarge`, or a
   record that does not decode) gets `failed_at` and `last_error` and is never retried (nor deleted: an operator
   sees it in the backlog). Any other row not stored gets its lease released with a backoff (`claimed_until` in
   the future, at most `MAX_BACKOFF` seconds), `attempts` + 1 and `last_error`.

A relay that dies mid-round leaves its rows leased; another relay takes them once the lease runs out and publishes
them again. The job id is the `Nats-Msg-Id`, so JetStream drops the second copy if it comes within the stream's
`duplicate_window` of the first: the lease is therefore a third of `Settings.duplicate_window` by default and at
most half of it. A job re-published later than that (a relay died, and no relay ran again for longer than
`duplicate_window`; or the database stayed unreachable that long after the PubAck) is stored twice: the outbox
is at-least-once beyond the duplicate window. Leases compare with the relays' clocks: keep them in sync (NTP).

Rows are in insertion order within a round; a row waiting out a backoff does not hold back the rows after it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction
from django.db.models import Count, F, Min, Q
from django.utils import timezone

import bgjob
from bgjob import PreparedJob

from .models import OutboxMessage

log = logging.getLogger("bgjob_django.relay")

#: Seconds between two looks at an idle outbox (one indexed read): rows are picked up this long after commit.
POLL = 0.05
#: The longest wait of a row between two failed publishes, and of a relay after an error (seconds).
MAX_BACKOFF = 10.0
#: seconds a relay statement waits for a lock on the outbox table (PostgreSQL) before it fails and is retried.
LOCK_TIMEOUT = 5.0
#: last_error is cut to this many characters.
ERROR_CHARS = 2000


@dataclass(frozen=True)
class Backlog:
    """The outbox at a glance: `count` rows waiting to be published (leased or not), the age in seconds of the
    oldest of them (None when there is none), and `failed` rows the server refused for good."""

    count: int
    oldest_age_seconds: float | None
    failed: int

    def line(self) -> str:
        """One line for humans: `outbox: N waiting, oldest Xs, F failed`."""
        oldest = "-" if self.oldest_age_seconds is None else f"{self.oldest_age_seconds:.0f}s"
        return f"outbox: {self.count} waiting, oldest {oldest}, {self.failed} failed"


def backlog(using: str = "default") -> Backlog:
    """The outbox's backlog on database `using` (two indexed aggregate reads)."""
    rows = OutboxMessage.objects.using(using)
    waiting = rows.filter(failed_at__isnull=True).aggregate(n=Count("id"), oldest=Min("created_at"))
    failed = rows.filter(failed_at__isnull=False).count()
    oldest = waiting["oldest"]
    age = None if oldest is None else max(0.0, (timezone.now() - oldest).total_seconds())
    return Backlog(count=waiting["n"], oldest_age_seconds=age, failed=failed)


def _ready(now: datetime) -> Q:
    """Rows a relay may take: not failed, and not leased (or the lease ran out, or the backoff is over)."""
    return Q(failed_at__isnull=True) & (Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))


class Relay:
    """Publishes outbox rows of database `using` through `client`; see the module's docstring for a round.

    `batch`: rows per round (>= 1). `poll`: seconds between looks at an idle outbox. `lease`: seconds a claimed row
    is this relay's (default: a third of `client.settings.duplicate_window`; at most half of it, so a re-publish by
    another relay after a crash is still dropped as a duplicate). Raises bgjob.ConfigurationError for bad values.
    Thread-safe in the sense that several relays (threads or processes) may run at once; one Relay object is
    meant for one thread.
    """

    def __init__(self, client: bgjob.Client, *, using: str = "default", batch: int = 100, poll: float = POLL,
                 lease: float | None = None) -> None:  # fmt: skip
        window = client.settings.duplicate_window
        lease = window / 3 if lease is None else lease
        if not isinstance(batch, int) or batch < 1:
            raise bgjob.ConfigurationError(f"relay batch must be an int >= 1, not {batch!r}")
        if not 0 < poll <= 60:
            raise bgjob.ConfigurationError(f"relay poll must be > 0 and <= 60 seconds, not {poll!r}")
        if not 0 < lease <= window / 2:
            raise bgjob.ConfigurationError(
                f"relay lease must be > 0 and at most half of duplicate_window ({window}s), not {lease!r}: a row "
                "re-published after a relay crash must still fall in the duplicate window")  # fmt: skip
        self.client = client
        self.using = using
        self.batch = batch
        self.poll = poll
        self.lease = float(lease)
        #: Identifies this relay in `claimed_by` (with a round number): host, pid and a random part.
        self.id = f"{socket.gethostname()[:24]}-{os.getpid()}-{secrets.token_hex(4)}"
        self._round = 0
        #: the last round stored nothing and has jobs to send again (NATS out of reach).
        self.unreachable = False
        self._lock_bounded: object = None  # the database connection whose lock_timeout is set
        self._undeleted: list[int] = []  # stored but not yet deleted (the database failed after the PubAck)

    # -- one round -------------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Claim, publish and settle one batch; returns how many rows were published (stored) and deleted.

        Raises a database error (django.db.Error) if the database fails before anything was published; a NATS
        failure is not raised: it is recorded on the rows (attempts, last_error, backoff).
        """
        self._bound_lock_waits()
        if self._undeleted:
            self._delete(self._undeleted)
            self._undeleted = []
        rows = self._claim()
        if not rows:
            return 0
        token = rows[0][0]
        jobs: list[PreparedJob] = []
        by_job: dict[str, list[int]] = {}
        failed: dict[int, str] = {}
        for _token, row_id, record in rows:
            try:
                job = PreparedJob.from_record(record, prefix=self.client.settings.prefix)
            except bgjob.InvalidJob as exc:
                failed[row_id] = f"the record cannot be read: {exc}"
                continue
            jobs.append(job)
            by_job.setdefault(job.job_id, []).append(row_id)
        stored, refused, retry = self._publish(jobs)
        for job_id, error in refused.items():
            for row_id in by_job.get(job_id, ()):
                failed[row_id] = error
        done = [row_id for job_id in stored for row_id in by_job.get(job_id, ())]
        try:
            self._delete(done)
        except Exception:
            self._undeleted = done  # deleted first thing next round; the lease keeps the rows meanwhile
            raise
        self._settle(token, failed, {row_id: error for job_id, error in retry.items()
                                     for row_id in by_job.get(job_id, ())})  # fmt: skip
        # Nothing stored and jobs to send again: NATS is out of this relay's reach. `run` waits before it claims
        # more, so a relay cut off from NATS does not keep taking (and delaying) the rows other relays could send.
        self.unreachable = bool(retry) and not stored
        return len(done)

    def _claim(self) -> list[tuple[str, int, dict[str, Any]]]:
        """Lease up to `batch` ready rows, oldest first, in one short transaction: (token, id, record) each."""
        self._round += 1
        token = f"{self.id}-{self._round}"
        now = timezone.now()
        until = now + timedelta(seconds=self.lease)
        rows = OutboxMessage.objects.using(self.using)
        connection = connections[self.using]
        with transaction.atomic(using=self.using):
            if connection.features.has_select_for_update_skip_locked:
                ids = list(rows.select_for_update(skip_locked=True).filter(_ready(now)).order_by("id")
                           .values_list("id", flat=True)[: self.batch])  # fmt: skip
                if not ids:
                    return []
                rows.filter(id__in=ids).update(claimed_by=token, claimed_until=until)
            else:  # SQLite: one conditional UPDATE; writers are serialised, so a row is leased by one relay only
                ready = rows.filter(_ready(now)).order_by("id").values("id")[: self.batch]
                if not rows.filter(id__in=ready).update(claimed_by=token, claimed_until=until):
                    return []
            claimed = rows.filter(claimed_by=token).order_by("id").values_list("id", "record")
            return [(token, row_id, record) for row_id, record in claimed]

    def _publish(self, jobs: Sequence[PreparedJob]) -> tuple[list[str], dict[str, str], dict[str, str]]:
        """Publish `jobs`; returns (ids stored, {id: error} refused for good, {id: error} to try again later).

        A job neither stored nor in either dict was not sent (the batch stopped at an earlier error): its row is
        released at once, without counting an attempt.
        """
        if not jobs:
            return [], {}, {}
        try:
            return self.client.publish_prepared(list(jobs)), {}, {}
        except bgjob.SendJobsError as exc:
            refused = {i: _describe(e) for i, e in exc.errors.items() if i in exc.not_stored and _for_good(e)}
            retry = {i: _describe(e) for i, e in exc.errors.items() if i in exc.not_stored and not _for_good(e)}
            return list(exc.stored), refused, retry
        except bgjob.InvalidJob as exc:
            ids = [i for i in getattr(exc, "job_ids", ()) if any(j.job_id == i for j in jobs)]
            if ids:
                return [], dict.fromkeys(ids, _describe(exc)), {}
            if len(jobs) == 1:
                return [], {jobs[0].job_id: _describe(exc)}, {}
            # Which one? Publish them one by one (rare: a refusal that does not name its job).
            stored, refused, retry = [], {}, {}
            for job in jobs:
                s, f, r = self._publish([job])
                stored += s
                refused.update(f)
                retry.update(r)
            return stored, refused, retry
        except Exception as exc:  # ConnectionError, PublishError, ServerRefused, ...: all of them again later
            if not isinstance(exc, bgjob.BgjobError):
                log.exception("outbox relay: publishing %d jobs failed unexpectedly", len(jobs))
            return [], {}, dict.fromkeys((j.job_id for j in jobs), _describe(exc))

    def _delete(self, row_ids: Sequence[int]) -> None:
        """Delete rows whose job is stored, whoever holds them now (a re-publish would only be a duplicate)."""
        if row_ids:
            OutboxMessage.objects.using(self.using).filter(id__in=list(row_ids)).delete()

    def _settle(self, token: str, failed: dict[int, str], retry: dict[int, str]) -> None:
        """Mark `failed` rows failed, give `retry` rows a backoff, release every other row this round still holds."""
        rows = OutboxMessage.objects.using(self.using).filter(claimed_by=token)
        now = timezone.now()
        with transaction.atomic(using=self.using):
            for row_id, error in failed.items():
                log.error("outbox relay: job of outbox row %d refused for good, marked failed: %s", row_id, error)
                rows.filter(id=row_id).update(failed_at=now, last_error=error[:ERROR_CHARS], claimed_by=None,
                                              claimed_until=None, attempts=F("attempts") + 1)  # fmt: skip
            for row_id, error in retry.items():
                row = rows.filter(id=row_id).values_list("attempts", flat=True).first()
                if row is None:
                    continue  # the lease ran out and another relay has it now
                backoff = min(MAX_BACKOFF, 0.25 * 2 ** min(row + 1, 16))
                rows.filter(id=row_id).update(attempts=row + 1, last_error=error[:ERROR_CHARS], claimed_by=None,
                                              claimed_until=now + timedelta(seconds=backoff))  # fmt: skip
            if retry:
                log.warning("outbox relay: %d jobs not stored, tried again later: %s", len(retry),
                            next(iter(retry.values())))  # fmt: skip
            rows.update(claimed_by=None, claimed_until=None)  # not sent after an earlier error: ready at once

    def pending(self) -> bool:
        """Whether a row is ready to be claimed now (one cheap indexed read)."""
        self._bound_lock_waits()
        return OutboxMessage.objects.using(self.using).filter(_ready(timezone.now())).exists()

    def _bound_lock_waits(self) -> None:
        """On PostgreSQL, bound this relay's waits for a lock on the outbox table (a migration or a manual LOCK
        TABLE holds it): after LOCK_TIMEOUT a statement fails, is logged and retried with a backoff, and a stop
        is never held up longer. Set once per database connection (the relay's thread has its own)."""
        connection = connections[self.using]
        if connection.vendor != "postgresql":
            return
        connection.ensure_connection()
        if self._lock_bounded is not connection.connection:
            with connection.cursor() as cursor:
                cursor.execute(f"SET lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'")
            self._lock_bounded = connection.connection

    # -- the loop --------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Run rounds until `stop` is set; the round in progress then finishes (it is bounded: the publish by the
        client's deadlines, the database calls by the database's). Never raises: a database error or a NATS
        outage is logged and waited out with a backoff (at most MAX_BACKOFF seconds)."""
        backoff = 0.0
        last_error = ""
        try:
            while not stop.is_set():
                try:
                    published = self.run_once() if self._undeleted or self.pending() else 0
                except Exception as exc:  # noqa: BLE001 - the relay outlives any error; logged, backed off
                    text = _describe(exc)
                    if text != last_error:
                        log.warning("outbox relay: %s; trying again (with a backoff)", text)
                    else:
                        log.debug("outbox relay: %s", text)
                    last_error = text
                    _reset_connection(self.using)
                    backoff = min(MAX_BACKOFF, max(self.poll, backoff * 2))
                    stop.wait(backoff)
                    continue
                if last_error:
                    log.info("outbox relay: the database answers again")
                    last_error = ""
                if self.unreachable:  # NATS out of reach: leave the rows to relays that can send them, for a while
                    backoff = min(MAX_BACKOFF, max(0.5, backoff * 2))
                    stop.wait(backoff)
                    continue
                backoff = 0.0
                if published < self.batch:
                    stop.wait(self.poll)
        finally:
            connections.close_all()  # this thread's connections

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run `run(stop)` in a new daemon thread; returns it."""
        thread = threading.Thread(target=self.run, args=(stop,), name=f"bgjob-relay-{self.using}", daemon=True)
        thread.start()
        return thread


def _for_good(error: BaseException) -> bool:
    """A refusal that sending again will not change: the job itself is invalid or too large."""
    return isinstance(error, bgjob.InvalidJob)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if text.startswith(type(error).__name__) else f"{type(error).__name__}: {text}"


def _reset_connection(using: str) -> None:
    """After a database error: drop this thread's connection (a new one is opened on the next query)."""
    try:
        connections[using].close()
    except Exception:  # it is broken already; a new one is opened next time
        log.debug("outbox relay: closing the broken connection failed", exc_info=True)


__all__ = ["Backlog", "Relay", "backlog", "POLL", "MAX_BACKOFF"]
