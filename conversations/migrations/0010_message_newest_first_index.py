"""PostgreSQL: an index on messages newest first, which search walks to rank only the newest matches of a
word found in most messages (see conversations.selectors.search_for_user). SQLite walks its full-text
index in rowid order instead, so it gets none."""

from django.db import migrations

INDEX = "message_newest_idx"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE INDEX {INDEX} ON conversations_message (created_at, id)")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("conversations", "0009_attachments")]

    operations = [migrations.RunPython(forwards, backwards)]
