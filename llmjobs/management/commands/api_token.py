"""`manage.py api_token USERNAME [--name N] [--json]`: a new REST API token for a user.

Prints the token (shown once: only its hash is stored). With ``--json`` prints
``{"token": ..., "webhook_secret": ...}``, the secret the user's webhooks are
signed with (``--rotate-secret`` makes a new one).
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from llmjobs.tokens import token_create
from llmjobs.webhooks import user_webhook_secret


class Command(BaseCommand):
    help = "Create a REST API token for USERNAME and print it (with --json, also the webhook signing secret)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the token (e.g. the pipeline using it)")
        parser.add_argument("--json", action="store_true", help='Print {"token": ..., "webhook_secret": ...}')
        parser.add_argument("--rotate-secret", action="store_true", help="Make a new webhook signing secret")

    def handle(self, *args: Any, username: str, **opts: Any) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        _, token = token_create(user=user, name=opts["name"])
        secret = user_webhook_secret(user, rotate=opts["rotate_secret"])
        if opts["json"]:
            self.stdout.write(json.dumps({"token": token, "webhook_secret": secret}))
        else:
            self.stdout.write(token)
