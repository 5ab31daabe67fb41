"""Django settings for bgjob_django's tests (also used by the worker subprocesses they start).

SQLite by default; PostgreSQL (or another SQLite file) when DATABASE_URL is set. BGJOB_URL and
BGJOB_PREFIX come from the environment (the tests point them at their own nats-server and prefix).
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse

import django

SECRET_KEY = "bgjob-django-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "bgjob_django",
    "tests.django.testapp",
]
MIDDLEWARE = [
    "bgjob_django.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.django.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]  # fmt: skip
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests


def database_from_url(url: str) -> dict:
    """A DATABASES entry from postgres://user:password@host:port/name or sqlite:///path."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parts.path or ":memory:"}
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        return {
            "ENGINE": "django.db.backends.postgresql", "NAME": parts.path.lstrip("/"),
            "USER": urllib.parse.unquote(parts.username or ""), "PASSWORD": urllib.parse.unquote(parts.password or ""),
            "HOST": parts.hostname or "", "PORT": str(parts.port or ""),
        }  # fmt: skip
    raise ValueError(f"DATABASE_URL scheme {parts.scheme!r} is not supported by the test settings")


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.gettempdir(), "bgjob-django-tests.sqlite3"),
        # A file, not memory: worker subprocesses must see the test database.
        "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"bgjob-django-test-{os.getpid()}.sqlite3")},
        "OPTIONS": {"timeout": 30},
    }}  # fmt: skip
# Worker subprocesses are told the test database's actual name.
if os.environ.get("BGJOB_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["BGJOB_TEST_DB_NAME"]

BGJOB = {
    "ACK_WAIT": 5.0,
    "RETRY_FOR": 5.0,
    "MAX_ATTEMPTS": 3,
    "GRACE_PERIOD": 5.0,
    "CONCURRENCY": 4,
    "SCHEDULES": {"nightly-report": {"cron": "0 3 * * *", "job": "report", "arg": {"user": 0}, "tz": "Europe/Berlin"}},
}

if django.VERSION >= (6, 0):
    TASKS = {"default": {"BACKEND": "bgjob_django.tasks.BgjobBackend", "OPTIONS": {"MAX_ATTEMPTS": 2}}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # bgjob's filter puts the job and request ids on every record: " [type id request=rid]".
    "filters": {"job_context": {"()": "bgjob.logs.ContextFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s%(job_context)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "filters": ["job_context"], "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": os.environ.get("BGJOB_TEST_LOG_LEVEL", "WARNING")},
    "loggers": {"nats": {"level": "WARNING"}},
}
