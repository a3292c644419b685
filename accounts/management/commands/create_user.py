"""`create_user <username>`: make a user from the command line (API keys come from `create_api_key`)."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services
from chatapi.errors import ApplicationError

PASSWORD_ENV_VAR = "CHATAPI_NEW_USER_PASSWORD"


class Command(BaseCommand):
    help = (
        "Create a user. Without a password (--password or the CHATAPI_NEW_USER_PASSWORD environment "
        "variable) the user gets an unusable password: it can use API keys but not log in to the admin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument("--first-name", default="")
        parser.add_argument("--last-name", default="")
        parser.add_argument("--staff", action="store_true", help="May log in to the admin.")
        parser.add_argument("--superuser", action="store_true", help="Has every permission (implies --staff).")
        parser.add_argument(
            "--password",
            help=f"Prefer the {PASSWORD_ENV_VAR} environment variable, which stays out of the shell history.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = options["password"] or os.environ.get(PASSWORD_ENV_VAR) or None
        try:
            user = services.user_create(
                username=options["username"],
                email=options["email"],
                first_name=options["first_name"],
                last_name=options["last_name"],
                password=password,
                is_staff=options["staff"],
                is_superuser=options["superuser"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        kind = "superuser" if user.is_superuser else "staff user" if user.is_staff else "user"
        login = "with a password" if password else "without a password (API keys only)"
        self.stdout.write(f"Created {kind} {user.username!r} with id {user.pk}, {login}.")
