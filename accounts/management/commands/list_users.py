"""`list_users`: every user with the number of API keys that still work."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from accounts import selectors
from accounts.management.tables import format_table


class Command(BaseCommand):
    help = "List users: id, username, name, email, staff, and their active (not revoked, not expired) API keys."

    def handle(self, *args: Any, **options: Any) -> None:
        users = selectors.user_list_with_key_counts()
        rows = [
            [
                str(user.pk),
                user.username,
                user.get_full_name() or "-",
                user.email or "-",
                "yes" if user.is_staff else "no",
                str(user.active_key_count),
            ]
            for user in users
        ]
        if not rows:
            self.stdout.write("No users.")
            return
        self.stdout.write(format_table(["ID", "USERNAME", "NAME", "EMAIL", "STAFF", "ACTIVE KEYS"], rows))
