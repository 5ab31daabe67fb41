"""A small site using bgjob_django: SQLite, the admin, and the embedded nats-server (no BGJOB URL).

For development only: DEBUG is on and the secret key is public.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "bgjob_django",
    "reports",
]
MIDDLEWARE = [
    "bgjob_django.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # The admin's dead-letter purge/retry/delete confirmations must not be framed by another site (clickjacking).
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]  # fmt: skip
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.environ.get("EXAMPLE_DB_PATH", BASE_DIR / "db.sqlite3"),
    "OPTIONS": {"timeout": 20},
}}  # fmt: skip
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
USE_TZ = True
TIME_ZONE = "UTC"

# Security headers: safe anywhere, keep them in a copy of this project (`manage.py check --deploy`).
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# What `check --deploy` still warns about, and a real deployment must set, but a local example served over
# plain http by runserver cannot: DEBUG = False and a long random SECRET_KEY from the environment (W018, W009);
# HTTPS only: SECURE_SSL_REDIRECT = True, SECURE_HSTS_SECONDS, SESSION_COOKIE_SECURE = True and
# CSRF_COOKIE_SECURE = True (W008, W004, W012, W016; secure cookies would make the admin login fail on http).

# No URL: the embedded nats-server (pip install "bgjob[server]") starts on first use and is shared by
# runserver and bgjob_worker. In production: BGJOB = {"URL": "nats://...", "REPLICAS": 3, ...} or BGJOB_URL.
BGJOB = {
    "MAX_ATTEMPTS": 3,
    "ON_COMMIT": True,  # send_job() in a view publishes when the view's transaction commits
    "SCHEDULES": {
        "nightly-report": {"cron": "0 3 * * *", "job": "report", "arg": {"title": "Nightly report"},
                           "tz": "Europe/Berlin"},
    },
}

# bgjob's log filter adds " [job-type job-id request=...]" to every line logged while a job runs.
# The "django" logger is named so its lines (django.tasks' "Task id=... state=..." among them) reach the console once,
# through the root's handler: Django's default logging gives it a console handler of its own while DEBUG is on, and
# a root handler besides would print each of them twice. (Naming it drops Django's default mail_admins handler too:
# a copy of this that runs with DEBUG off and should mail errors adds a django.utils.log.AdminEmailHandler to it.)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"job_context": {"()": "bgjob.logs.ContextFilter"}},
    "formatters": {"text": {"format": "%(asctime)s %(levelname)s %(name)s%(job_context)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["job_context"], "formatter": "text"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"django": {"level": "INFO"}, "nats": {"level": "WARNING"}, "django.db.backends": {"level": "INFO"}},
}
