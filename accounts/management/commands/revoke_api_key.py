"""`revoke_api_key <key>`: revoke a key by its id, its prefix `ck_<lookup id>`, its lookup id or the full key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts import selectors, services


class Command(BaseCommand):
    help = "Revoke an API key: it stops working at once. It stays listed, so its usage stays attributable."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="The key's id (UUID), its prefix ck_<lookup id>, or the lookup id alone.")

    def handle(self, *args: Any, **options: Any) -> None:
        ident = options["key"]
        api_key = selectors.api_key_get_by_id_or_prefix(ident=ident)
        if api_key is None:
            # A full key (ck_<lookup>_<secret>) is not echoed back: it may end up in logs.
            shown = repr(ident) if ident.count("_") < 2 else "the given key"
            raise CommandError(f"No API key matches {shown}.")
        if api_key.is_revoked:
            revoked_at = timezone.localtime(api_key.revoked_at)
            self.stdout.write(
                f"API key {api_key.prefix} of {api_key.user.username!r} was already revoked "
                f"on {revoked_at:%Y-%m-%d %H:%M %Z}."
            )
            return
        services.api_key_revoke(api_key=api_key)
        name = api_key.name or "unnamed"
        self.stdout.write(f"Revoked API key {api_key.prefix} ({name}) of {api_key.user.username!r}.")
