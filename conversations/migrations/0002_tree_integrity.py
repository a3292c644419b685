"""Database-level guarantees of the message tree: a message's parent, and a conversation's
current node, always belong to the same conversation.

PostgreSQL enforces them with composite foreign keys (deferred, like Django's own); SQLite, which
cannot add constraints to an existing table, with triggers.
"""

from django.db import migrations, models

POSTGRES_UP = [
    """ALTER TABLE conversations_message ADD CONSTRAINT message_parent_same_conversation
       FOREIGN KEY (parent_id, conversation_id) REFERENCES conversations_message (id, conversation_id)
       DEFERRABLE INITIALLY DEFERRED""",
    """ALTER TABLE conversations_conversation ADD CONSTRAINT conversation_current_node_own_message
       FOREIGN KEY (current_node_id, id) REFERENCES conversations_message (id, conversation_id)
       DEFERRABLE INITIALLY DEFERRED""",
]
POSTGRES_DOWN = [
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
SQLITE_UP = [
    f"CREATE TRIGGER message_parent_same_conversation_insert BEFORE INSERT ON conversations_message {_PARENT_CHECK}",
    "CREATE TRIGGER message_parent_same_conversation_update "
    f"BEFORE UPDATE OF parent_id, conversation_id ON conversations_message {_PARENT_CHECK}",
    "CREATE TRIGGER conversation_current_node_own_message_insert "
    f"BEFORE INSERT ON conversations_conversation {_CURRENT_NODE_CHECK}",
    "CREATE TRIGGER conversation_current_node_own_message_update "
    f"BEFORE UPDATE OF current_node_id ON conversations_conversation {_CURRENT_NODE_CHECK}",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS message_parent_same_conversation_insert",
    "DROP TRIGGER IF EXISTS message_parent_same_conversation_update",
    "DROP TRIGGER IF EXISTS conversation_current_node_own_message_insert",
    "DROP TRIGGER IF EXISTS conversation_current_node_own_message_update",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("conversations", "0001_initial")]

    operations = [
        migrations.AddConstraint(
            model_name="message",
            constraint=models.UniqueConstraint(fields=("id", "conversation"), name="message_id_conversation_uniq"),
        ),
        migrations.RunPython(
            _run({"postgresql": POSTGRES_UP, "sqlite": SQLITE_UP}),
            _run({"postgresql": POSTGRES_DOWN, "sqlite": SQLITE_DOWN}),
        ),
    ]
