"""Settings for fault tests' subprocesses: the project's, with a short SQLite busy
timeout (``LLMJOBS_TEST_SQLITE_TIMEOUT``, default 1 s) so that a held write lock
shows up as ``database is locked`` errors within seconds instead of after 20 s."""

import os

from project.settings import *  # noqa: F403
from project.settings import DATABASES

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"]["timeout"] = float(os.environ.get("LLMJOBS_TEST_SQLITE_TIMEOUT", "1"))
