"""The Django app: `INSTALLED_APPS += ["bgjob_django"]`."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class BgjobConfig(AppConfig):
    name = "bgjob_django"
    label = "bgjob_django"
    verbose_name = "Background jobs"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        # Every app's jobs.py registers its handlers and periodic jobs with bgjob_django.handler / periodic.
        autodiscover_modules("jobs")
