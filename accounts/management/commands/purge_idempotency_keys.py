"""`purge_idempotency_keys`: delete the Idempotency-Key records kept past their 24 hours."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chatapi.idempotency import records_expired_delete


class Command(BaseCommand):
    help = (
        "Delete the remembered Idempotency-Key answers older than 24 hours. Workers also do it about once an "
        "hour on their own; run this from cron to keep the table small on a quiet service."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        deleted = records_expired_delete()
        self.stdout.write(f"Deleted {deleted} expired idempotency record{'' if deleted == 1 else 's'}.")
