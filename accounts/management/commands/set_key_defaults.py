"""`set_key_defaults <user> [--rpm N] … [--server-defaults]`: the limits a user's new API keys start with."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import selectors, services
from accounts.management.limit_options import add_limit_arguments, describe_limits, limits_from_options
from accounts.models import APIKey
from chatapi.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Set the limits a user's new API keys start with (by the admin, create_api_key or POST /api/keys). "
        "Limits left out stay as they are; 0 is no limit; --server-defaults goes back to CHATAPI_DEFAULT_*. "
        "Existing keys keep theirs (change those with update_api_key)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user", help="The user's id or username.")
        add_limit_arguments(parser, defaults="Default: unchanged.")
        parser.add_argument(
            "--server-defaults",
            action="store_true",
            help="First put every limit back to the server's default (CHATAPI_DEFAULT_*), then apply those given.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = selectors.user_get_by_id_or_username(ident=options["user"])
        if user is None:
            raise CommandError(f"No user with id or username {options['user']!r}.")
        try:
            services.user_key_defaults_update(
                user=user, limits=limits_from_options(options), reset=options["server_defaults"]
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        effective = APIKey(**services.user_key_defaults(user=user))
        self.stdout.write(f"New keys of {user.username!r} start with: {describe_limits(effective)}.")
