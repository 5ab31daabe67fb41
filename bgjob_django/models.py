"""The outbox table, and models without tables that give the admin pages their place and their permissions.

`OutboxMessage` is the one real table (`bgjob_outbox`): jobs sent with `outbox=True` (or BGJOB["OUTBOX"]) are
rows there until the relay publishes them. Everything else lives in JetStream; for the other models
`manage.py migrate` creates only the content types and permissions:
`bgjob_django.view_deadletter` (list and detail, with arg, headers, error and traceback masked),
`view_deadletter_payload` (see them unmasked), `change_deadletter` (retry), `delete_deadletter` (delete, purge;
and, with view_deadletter_payload, erase by arg content), `view_queue` (the queues and workers overview), and
`view_workflowrun` (workflow runs and their steps) and `change_workflowrun` (cancel a run).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class DeadLetter(models.Model):
    """A job in the dead-letter queue (stream `<PREFIX>_DLQ`), by job id."""

    id = models.CharField(primary_key=True, max_length=200)

    class Meta:
        managed = False
        db_table = "bgjob_django_deadletter"
        verbose_name = "dead letter"
        verbose_name_plural = "dead letters"
        default_permissions = ("view", "change", "delete")
        permissions = (("view_deadletter_payload", "Can view dead letter payloads"),)

    def __str__(self) -> str:
        return self.id


class Queue(models.Model):
    """A bgjob queue (stream `<PREFIX>_<QUEUE>`)."""

    name = models.CharField(primary_key=True, max_length=64)

    class Meta:
        managed = False
        db_table = "bgjob_django_queue"
        verbose_name = "queue"
        verbose_name_plural = "queues and workers"
        default_permissions = ("view",)

    def __str__(self) -> str:
        return self.name


class WorkflowRun(models.Model):
    """A workflow run (`bgjob.WorkflowRun`: its record and its steps' in the `<PREFIX>_WORKFLOWS` bucket), by run
    id. Viewed, and cancelled (change permission); never added or deleted here."""

    id = models.CharField(primary_key=True, max_length=64)

    class Meta:
        managed = False
        db_table = "bgjob_django_workflowrun"
        verbose_name = "workflow run"
        verbose_name_plural = "workflow runs"
        default_permissions = ("view", "change")

    def __str__(self) -> str:
        return self.id


class OutboxMessage(models.Model):
    """A prepared job waiting in the transactional outbox (table `bgjob_outbox`) for the relay to publish it.

    Written by `bgjob_django.outbox` in the sender's transaction (the job exists if and only if it commits);
    read, claimed and deleted after its PubAck by the relay. `record` is `bgjob.PreparedJob.to_record()`: the
    message as encoded, encrypted and signed at the call (it holds the job's arg, encrypted only with
    BGJOB["ENCRYPTION_KEYS"]). `claimed_by`/`claimed_until`: the relay that holds the row, and until when (a
    relay that died loses it then). `attempts`/`last_error`: failed publishes so far. `failed_at`: the server
    refused the job for good; the row is kept for an operator and never retried automatically.
    """

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    job_id = models.CharField(max_length=200)
    queue = models.CharField(max_length=64)
    record = models.JSONField()
    claimed_by = models.CharField(max_length=64, null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "bgjob_outbox"
        verbose_name = "outbox message"
        verbose_name_plural = "outbox messages"
        indexes = (models.Index(fields=["failed_at", "claimed_until", "id"], name="bgjob_outbox_relay_idx"),)

    def __str__(self) -> str:
        return f"{self.job_id} ({self.queue})"
