"""bgjob middleware that `manage.py bgjob_worker` wraps around every handler call."""

from __future__ import annotations

import logging

from django.db import close_old_connections, connections

import bgjob
from bgjob.middleware import Handler

log = logging.getLogger("bgjob_django.worker")


class CloseOldConnections:
    """Database hygiene around each job, as Django's request cycle does around each request.

    Stale, broken or over-age connections (CONN_MAX_AGE, CONN_HEALTH_CHECKS) are closed before and
    after the job; a transaction the handler left open (autocommit switched off) is rolled back, so the
    next job on this thread starts with a clean connection whatever the previous one did. (Under `--pool gevent`
    a connection is a greenlet's; the pool's greenlets, like its threads, run job after job, so a young one is
    reused by the next job there rather than left open by a greenlet that ended.)
    """

    def __call__(self, job: bgjob.Job, call_next: Handler) -> bgjob.Result:
        close_old_connections()
        try:
            return call_next(job)
        finally:
            self._roll_back_leftovers(job)
            close_old_connections()

    @staticmethod
    def _roll_back_leftovers(job: bgjob.Job) -> None:
        for conn in connections.all(initialized_only=True):
            if conn.connection is None or conn.in_atomic_block or conn.get_autocommit():
                continue
            log.warning("job %s (%s) left a transaction open on database %r; rolling it back",
                        job.id, job.type, conn.alias)  # fmt: skip
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001 - the connection is broken: close_old_connections() drops it
                conn.close()
