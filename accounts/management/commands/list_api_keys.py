"""`list_api_keys [--user]`: API keys with their state; never the keys themselves, which are not stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts import selectors
from accounts.management.tables import format_table


def format_time(value: datetime | None, empty: str = "-") -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M") if value else empty


class Command(BaseCommand):
    help = "List API keys (all users', or one user's): id, user, name, prefix, dates and status."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", help="Only this user's keys (id or username).")

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["user"] is not None:
            user = selectors.user_get_by_id_or_username(ident=options["user"])
            if user is None:
                raise CommandError(f"No user with id or username {options['user']!r}.")
        now = timezone.now()
        rows = [
            [
                str(key.pk),
                key.user.username,
                key.name or "-",
                key.prefix,
                format_time(key.created_at),
                format_time(key.last_used_at, "never"),
                format_time(key.expires_at, "never"),
                selectors.api_key_status(api_key=key, now=now),
            ]
            for key in selectors.api_key_list(user=user)
        ]
        if not rows:
            self.stdout.write("No API keys.")
            return
        headers = ["ID", "USER", "NAME", "PREFIX", "CREATED", "LAST USED", "EXPIRES", "STATUS"]
        self.stdout.write(format_table(headers, rows))
