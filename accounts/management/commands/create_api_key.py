"""`create_api_key <user>`: print a new API key, and only the key, on stdout (`KEY=$(… create_api_key alice)`)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import selectors, services
from accounts.management.limit_options import add_limit_arguments, describe_limits, limits_from_options
from chatapi.errors import ApplicationError


class Command(BaseCommand):
    help = "Create an API key for a user and print it. The key is shown this once; only its digest is stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user", help="The user's id or username.")
        parser.add_argument("--name", default="", help="A label to tell keys apart.")
        parser.add_argument("--expires-in-days", type=int, default=None, help="Default: the key never expires.")
        add_limit_arguments(parser, defaults="Default: CHATAPI_DEFAULT_*.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = selectors.user_get_by_id_or_username(ident=options["user"])
        if user is None:
            raise CommandError(f"No user with id or username {options['user']!r}.")
        try:
            api_key, raw_key = services.api_key_create(
                user=user,
                name=options["name"],
                expires_in_days=options["expires_in_days"],
                limits=limits_from_options(options),
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        # The notice goes to stderr so that stdout holds nothing but the key.
        expiry = f", expires {api_key.expires_at:%Y-%m-%d %H:%M %Z}" if api_key.expires_at else ""
        self.stderr.write(
            f"API key {api_key.prefix} for {user.username!r} (id {api_key.pk}{expiry}; {describe_limits(api_key)}). "
            "It is shown only this once: store it now.",
            style_func=self.style.WARNING,
        )
        self.stdout.write(raw_key)
