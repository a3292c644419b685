"""`update_api_key <key id or prefix> [--name] [--rpm N] …`: change a key's name or limits (0 removes one)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import selectors, services
from accounts.management.limit_options import add_limit_arguments, describe_limits, limits_from_options
from chatapi.errors import ApplicationError


class Command(BaseCommand):
    help = "Change an API key's name or limits. Limits left out stay as they are; 0 removes one."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="The key's id, its prefix ck_<lookup id>, or the key itself.")
        parser.add_argument("--name", default=None, help="A new label.")
        add_limit_arguments(parser, defaults="Default: unchanged.")

    def handle(self, *args: Any, **options: Any) -> None:
        api_key = selectors.api_key_get_by_id_or_prefix(ident=options["key"])
        if api_key is None:
            raise CommandError(f"No API key {options['key']!r}.")
        try:
            services.api_key_update(api_key=api_key, name=options["name"], limits=limits_from_options(options))
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"API key {api_key.prefix} ({api_key.name or 'unnamed'}): {describe_limits(api_key)}.")
