"""Admin pages for the dead-letter queue, the queues overview and workflow runs, in the normal Django admin.

The models have no tables: their changelist, change and delete views are replaced by views backed by
JetStream (`admin_views`), wrapped by the admin site (staff login, CSRF, permissions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import URLPattern, path

from .admin_views import DeadLetterViews, QueueViews, WorkflowRunViews
from .models import DeadLetter, Queue, WorkflowRun

if TYPE_CHECKING:  # django-stubs makes ModelAdmin generic in its model; Django's class takes no subscript
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = admin.ModelAdmin


class _NoTableAdmin(_ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def _name(self, view: str) -> str:
        return f"{self.opts.app_label}_{self.opts.model_name}_{view}"


@admin.register(DeadLetter)
class DeadLetterAdmin(_NoTableAdmin):
    """Dead letters: list with filters, search and paging; detail (masked without view_deadletter_payload);
    retry, delete, purge, and erase by arg content."""

    def get_urls(self) -> list[URLPattern]:
        views = DeadLetterViews(self)
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(views.changelist), name=self._name("changelist")),
            path("purge/", wrap(views.purge), name=self._name("purge")),
            path("erase/", wrap(views.erase), name=self._name("erase")),
            path("<str:object_id>/change/", wrap(views.detail), name=self._name("change")),
            path("<str:object_id>/retry/", wrap(views.retry), name=self._name("retry")),
            path("<str:object_id>/delete/", wrap(views.delete), name=self._name("delete")),
        ]


@admin.register(Queue)
class QueueAdmin(_NoTableAdmin):
    """Queues and workers: per-queue counts, periodic jobs and live workers."""

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        views = QueueViews(self)
        return [path("", self.admin_site.admin_view(views.overview), name=self._name("changelist"))]


@admin.register(WorkflowRun)
class WorkflowRunAdmin(_NoTableAdmin):
    """Workflow runs: the newest runs with their steps' states; a run's steps (state, attempts, start, duration,
    error); cancel (change_workflowrun)."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        views = WorkflowRunViews(self)
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(views.changelist), name=self._name("changelist")),
            path("<str:object_id>/change/", wrap(views.detail), name=self._name("change")),
            path("<str:object_id>/cancel/", wrap(views.cancel), name=self._name("cancel")),
        ]
