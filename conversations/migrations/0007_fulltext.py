"""The full-text index of messages and titles (see conversations/fulltext.py): FTS5 tables kept by
triggers on SQLite, generated tsvector columns with GIN indexes on PostgreSQL."""

from django.db import migrations

from conversations import fulltext


def forwards(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        for statement in fulltext.POSTGRES_DDL:
            schema_editor.execute(statement)
    elif connection.vendor == "sqlite":
        fulltext.fts_sqlite_ensure(connection)


def backwards(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        for statement in fulltext.POSTGRES_DDL_DROP:
            schema_editor.execute(statement)
    elif connection.vendor == "sqlite":
        fulltext.fts_sqlite_drop(connection)


class Migration(migrations.Migration):
    dependencies = [("conversations", "0006_organising")]

    operations = [migrations.RunPython(forwards, backwards)]
