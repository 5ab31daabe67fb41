"""The test settings with persistent database connections (CONN_MAX_AGE=60), for worker subprocesses that
must reuse connections rather than open one per job."""

from .settings import *  # noqa: F403 - these settings, changed in one place
from .settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 60
