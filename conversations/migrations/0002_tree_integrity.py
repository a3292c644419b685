"""Keep every message's parent and every conversation's current node inside its own conversation,
in the database itself (see conversations/integrity.py)."""

from django.db import migrations, models

from conversations import integrity


def forwards(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        for statement in integrity.POSTGRES_CONSTRAINTS:
            schema_editor.execute(statement)
    integrity.sqlite_triggers_ensure(connection)


def backwards(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        for statement in integrity.POSTGRES_CONSTRAINTS_DROP:
            schema_editor.execute(statement)
    integrity.sqlite_triggers_drop(connection)


class Migration(migrations.Migration):
    dependencies = [("conversations", "0001_initial")]

    operations = [
        migrations.AddConstraint(
            model_name="message",
            constraint=models.UniqueConstraint(fields=("id", "conversation"), name="message_id_conversation_uniq"),
        ),
        migrations.RunPython(forwards, backwards),
    ]
