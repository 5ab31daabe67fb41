"""bgjob_django registers the system checks of its django.tasks backend itself (Django >= 6.0): a project whose
settings never import django.tasks still has a bad TASKS reported by `manage.py check`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import django
import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks is Django >= 6.0")

#: A fresh process: the test suite itself imports django.tasks, which would register Django's check anyway.
SCRIPT = textwrap.dedent("""
    import io, sys
    import django
    from django.conf import settings
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "bgjob_django"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        BGJOB={"URL": "nats://127.0.0.1:4222", "MAX_ATTEMPTS": 5},
        TASKS={"default": {"BACKEND": "bgjob_django.tasks.BgjobBackend", "QUEUES": ["default", "Default Q"],
                           "OPTIONS": {"PRIORITY_QUEUES": {"high": [1, 100], "urgent": [50, 60]},
                                       "RESULT_TTL": "7d", "MAX_ATTEMPTS": 20, "RETRIES": 3}}},
    )
    django.setup()
    assert "django.tasks" not in sys.modules or "bgjob_django.checks" in sys.modules
    try:
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
    except SystemCheckError as exc:
        print(exc)
    else:
        print("no issues")
""")


def test_a_bad_tasks_setting_fails_manage_py_check_without_importing_django_tasks() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "no issues" not in out
    assert "bgjob_django.E021" in out and "queue 'Default Q' is not a valid bgjob queue name" in out
    assert "band 'urgent' overlaps another band" in out
    assert "OPTIONS['RESULT_TTL'] must be a number >= 1, got '7d'" in out
    assert "unknown OPTIONS ['RETRIES']" in out
    assert "bgjob_django.E022" in out and "BGJOB['MAX_ATTEMPTS'] = 5" in out
