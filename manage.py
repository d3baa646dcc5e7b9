#!/usr/bin/env python
"""Django's command-line utility for administrative tasks.

On a development machine (no SECRET_KEY, no DEBUG, no LLMJOBS_HTTPS, SQLite or
no DATABASE_URL) every command runs with the dev defaults `make run` uses
(DEBUG=1), so `manage.py createsuperuser` just works. Anywhere else a missing
setting is one line saying what to set, not a traceback.
"""

import os
import sys


def _is_dev_machine(env: "os._Environ[str]") -> bool:
    if env.get("SECRET_KEY") or env.get("DEBUG") not in (None, "") or env.get("LLMJOBS_HTTPS"):
        return False
    database = env.get("DATABASE_URL", "")
    return database == "" or database.startswith("sqlite:")


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    if _is_dev_machine(os.environ):
        os.environ["DEBUG"] = "1"  # what `make run` sets: the dev SECRET_KEY and localhost hosts
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
