"""Database-level guarantees of the message tree: a message's parent, and a conversation's current
node, always belong to the same conversation.

PostgreSQL enforces them with composite foreign keys (deferred, like Django's own), added once by
migration 0002. SQLite cannot add constraints to a table, so there triggers do the job; SQLite
migrations that rebuild a table drop its triggers, so they are (re)made after every `migrate`.
"""

from __future__ import annotations

from typing import Any

POSTGRES_CONSTRAINTS = [
    """ALTER TABLE conversations_message ADD CONSTRAINT message_parent_same_conversation
       FOREIGN KEY (parent_id, conversation_id) REFERENCES conversations_message (id, conversation_id)
       DEFERRABLE INITIALLY DEFERRED""",
    """ALTER TABLE conversations_conversation ADD CONSTRAINT conversation_current_node_own_message
       FOREIGN KEY (current_node_id, id) REFERENCES conversations_message (id, conversation_id)
       DEFERRABLE INITIALLY DEFERRED""",
]
POSTGRES_CONSTRAINTS_DROP = [
    "ALTER TABLE conversations_conversation DROP CONSTRAINT conversation_current_node_own_message",
    "ALTER TABLE conversations_message DROP CONSTRAINT message_parent_same_conversation",
]

_PARENT_CHECK = """
    FOR EACH ROW WHEN NEW.parent_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM conversations_message WHERE id = NEW.parent_id AND conversation_id != NEW.conversation_id
    )
    BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: message parent in another conversation'); END
"""
_CURRENT_NODE_CHECK = """
    FOR EACH ROW WHEN NEW.current_node_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM conversations_message WHERE id = NEW.current_node_id AND conversation_id != NEW.id
    )
    BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: current node in another conversation'); END
"""
SQLITE_TRIGGERS = {
    "message_parent_same_conversation_insert": f"BEFORE INSERT ON conversations_message {_PARENT_CHECK}",
    "message_parent_same_conversation_update": (
        f"BEFORE UPDATE OF parent_id, conversation_id ON conversations_message {_PARENT_CHECK}"
    ),
    "conversation_current_node_own_message_insert": (
        f"BEFORE INSERT ON conversations_conversation {_CURRENT_NODE_CHECK}"
    ),
    "conversation_current_node_own_message_update": (
        f"BEFORE UPDATE OF current_node_id ON conversations_conversation {_CURRENT_NODE_CHECK}"
    ),
}


def sqlite_triggers_ensure(connection: Any) -> None:
    """Make any missing tree-integrity trigger (SQLite only; nothing elsewhere)."""
    if connection.vendor != "sqlite":
        return
    tables = set(connection.introspection.table_names())
    if not {"conversations_message", "conversations_conversation"} <= tables:
        return
    with connection.cursor() as cursor:
        for name, body in SQLITE_TRIGGERS.items():
            cursor.execute(f"CREATE TRIGGER IF NOT EXISTS {name} {body}")


def sqlite_triggers_drop(connection: Any) -> None:
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        for name in SQLITE_TRIGGERS:
            cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
