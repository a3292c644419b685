"""App config for conversations: message trees and the model backend."""

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_tree_integrity(sender: AppConfig, using: str, **kwargs: Any) -> None:
    from django.db import connections

    from conversations.fulltext import fts_sqlite_ensure
    from conversations.integrity import sqlite_triggers_ensure

    sqlite_triggers_ensure(connections[using])
    fts_sqlite_ensure(connections[using])


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # SQLite migrations that rebuild a table drop its triggers (and may renumber the rowids the full-text
        # index refers to): make them again, and rebuild that index, after every migrate.
        post_migrate.connect(_ensure_tree_integrity, sender=self)
        from conversations import signals  # noqa: F401 (connects the receivers)
