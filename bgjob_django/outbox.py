"""The transactional outbox's write side: prepared jobs inserted into the `bgjob_outbox` table.

A job sent with `outbox=True` (or BGJOB["OUTBOX"]) is a row of `OutboxMessage` written in the sender's
transaction, on its database connection: it exists if and only if that transaction commits, and sending it
costs no NATS round trip. The relay (`bgjob_django.relay`) publishes the rows in order of `id` and deletes each
after its PubAck; it polls for them (every 50 ms when idle). No NOTIFY is sent: with nothing listening it only
cost commits (15-30% of PostgreSQL's commit rate from 16 threads, measured).
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

import bgjob


def add(jobs: Sequence[bgjob.PreparedJob], *, using: str) -> None:
    """Insert one outbox row per job, in the given order, into the current transaction of database `using`.

    Inside `transaction.atomic()` the rows commit or roll back with it (a rolled-back savepoint drops them
    too); outside one they commit at once, all together. Their ids ascend in the order of `jobs`: the relay's.
    Raises django.db.DatabaseError when the table is missing (`manage.py migrate` was not run) or the
    database refuses the insert; nothing is written then.
    """
    from .models import OutboxMessage  # not at import: bgjob_django is imported before Django's apps are ready

    if not jobs:
        return
    rows = [OutboxMessage(job_id=job.job_id, queue=job.queue, record=job.to_record()) for job in jobs]
    with transaction.atomic(using=using, savepoint=False):
        OutboxMessage.objects.using(using).bulk_create(rows)
