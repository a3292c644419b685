"""`export_conversations --user NAME [--format chatgpt|ndjson] [--output FILE]`: a user's whole history, as
`GET /conversations/export` streams it, to a file or stdout, with a progress line on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.selectors import user_get_by_id_or_username
from conversations import transfer
from conversations.management.progress import Progress, megabytes
from conversations.models import Conversation


class Command(BaseCommand):
    help = (
        "Export a user's conversations (every branch, every message): `chatgpt`, a JSON array in the shape of "
        "ChatGPT's conversations.json, or `ndjson`, one conversation a line, lossless. Both import back with "
        "import_conversations."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="The user's id or username.")
        parser.add_argument("--format", choices=transfer.FORMATS, default="chatgpt")
        parser.add_argument("--output", help="The file to write (default: stdout).")
        parser.add_argument(
            "--progress", action="store_true", help="Show progress on stderr (by default only on a terminal)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = user_get_by_id_or_username(ident=options["user"])
        if user is None:
            raise CommandError(f"No user with id or username {options['user']!r}.")
        total = Conversation.objects.filter(owner=user).count()
        progress = Progress(self.stderr, enabled=options["progress"] or None)
        pages = transfer.export_pages(user=user)
        counted = _Counted(pages)
        written = 0
        try:
            target = open(options["output"], "wb") if options["output"] else None  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"{options['output']}: {exc.strerror or exc}") from None
        try:
            for chunk in transfer.export_chunks(counted, options["format"]):
                if target is not None:
                    target.write(chunk)
                else:  # a chunk is a whole page: whole characters
                    self.stdout.write(chunk.decode(), ending="")
                written += len(chunk)
                progress.update(f"{counted.conversations} of {total} conversations, {megabytes(written)}")
        finally:
            progress.done()
            if target is not None:
                target.close()
        if target is not None:
            self.stdout.write(
                f"Wrote {counted.conversations} conversations ({counted.messages} messages, {megabytes(written)}) "
                f"to {options['output']}."
            )


class _Counted:
    """The export's pages, counting what went by."""

    def __init__(self, pages: Iterator[list[transfer.ExportedConversation]]) -> None:
        self.pages = pages
        self.conversations = 0
        self.messages = 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> list[transfer.ExportedConversation]:
        page = next(self.pages)
        self.conversations += len(page)
        self.messages += sum(len(item.messages) for item in page)
        return page
