"""Test settings: the normal settings plus a throwaway SECRET_KEY.

The key is put in the environment (not only here) so that subprocesses the
tests start (manage.py commands, workers) load the same configuration.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-only-insecure-secret-key")

from .settings import *  # noqa: F403
