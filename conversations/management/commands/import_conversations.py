"""`import_conversations FILE --user NAME`: import a ChatGPT export (conversations.json or its zip) or our
NDJSON, as `POST /conversations/import` does, for files of any size, with a progress line on stderr."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.selectors import user_get_by_id_or_username
from chatapi.errors import ApplicationError
from conversations import transfer
from conversations.management.progress import Progress, megabytes


class Command(BaseCommand):
    help = (
        "Import conversations for a user from a ChatGPT export (conversations.json, or the .zip that holds it) "
        "or from this service's NDJSON export. Conversations imported before are skipped; malformed ones are "
        "reported and the others imported."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="conversations.json, the export's .zip, or an .ndjson file.")
        parser.add_argument("--user", required=True, help="The user's id or username.")
        parser.add_argument(
            "--progress", action="store_true", help="Show progress on stderr (by default only on a terminal)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = user_get_by_id_or_username(ident=options["user"])
        if user is None:
            raise CommandError(f"No user with id or username {options['user']!r}.")
        progress = Progress(self.stderr, enabled=options["progress"] or None)

        def report(result: transfer.ImportResult, source: transfer.ImportSource) -> None:
            progress.update(
                f"{result.imported + result.skipped + len(result.errors)} conversations, "
                f"{megabytes(source.position)} of {megabytes(source.size)}: imported {result.imported}, "
                f"skipped {result.skipped}, errors {len(result.errors)}"
            )

        try:
            with open(options["file"], "rb") as upload:
                result = transfer.import_file(owner=user, upload=upload, progress=report)
        except OSError as exc:
            raise CommandError(f"{options['file']}: {exc.strerror or exc}") from None
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        finally:
            progress.done()
        for error in result.errors:
            label = error.title or error.id or "(no id)"
            self.stdout.write(f"error: conversation {error.index} ({label}): {error.message}")
        self.stdout.write(
            f"imported {result.imported}, skipped {result.skipped}, errors {len(result.errors)} for {user.username}"
        )
