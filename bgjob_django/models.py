"""Models without tables: they give the admin pages their place in the index and their permissions.

The data lives in JetStream; `manage.py migrate` creates only the content types and permissions:
`bgjob_django.view_deadletter` (list and detail, with arg, headers, error and traceback masked),
`view_deadletter_payload` (see them unmasked), `change_deadletter` (retry), `delete_deadletter` (delete, purge;
and, with view_deadletter_payload, erase by arg content), and `view_queue` (the queues and workers overview).
"""

from __future__ import annotations

from django.db import models


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
