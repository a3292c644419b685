"""Export and import of a user's history: ChatGPT's `conversations.json` shape, a lossless NDJSON of our own,
and (one conversation) Markdown.

Exports are made a page of conversations at a time (keyset pages, their messages read with `.iterator()`), so
a history of any size never sits in memory; the async view awaits one page per thread hop. Imports read the
file incrementally (ijson for a JSON array, a line at a time for NDJSON): one conversation at a time is in
memory, and each is stored by `services.conversation_import`, in a savepoint of its own within a transaction
that commits a batch of them.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import ijson
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import Prefetch, TextField
from django.db.models.functions import Cast

from accounts.models import User
from chatapi.db import statistics_refresh
from chatapi.errors import ApplicationError, InvalidRequest
from chatapi.parsers import spool
from conversations.models import Attachment, Conversation, ConversationTag, Message
from conversations.selectors import message_path_get
from conversations.serializers import ConversationOutput

logger = logging.getLogger(__name__)

FORMATS = ("chatgpt", "ndjson")
ONE_FORMATS = (*FORMATS, "markdown")
CONTENT_TYPES = {"chatgpt": "application/json", "ndjson": "application/x-ndjson", "markdown": "text/markdown"}
EXTENSIONS = {"chatgpt": "json", "ndjson": "ndjson", "markdown": "md"}
# Conversations a page of the export holds: big enough that the thread hop of each page costs nothing
# next to its work, small enough that a page stays a few MB.
PAGE_SIZE = 100
# The system prompt goes into a ChatGPT export as a hidden system root, as ChatGPT's own have one.
_SYSTEM_NODE = uuid.UUID("6c7a2f0e-8a51-4d1c-9a57-3f0f2f1c5e11")


# --- export -------------------------------------------------------------------------------------------


class ExportedMessage:
    """A message as the export reads it: the fields of a Message that the formats write, ids as text. Rows are
    read without the ORM's per-field conversion, which cost 5 times the rest of the export (see export_page)."""

    __slots__ = (
        "pk",
        "conversation_id",
        "parent_id",
        "role",
        "content",
        "model",
        "finish_details",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "created_at",
        "attachments_made",
    )
    COLUMNS = __slots__[:-1]  # read from the message's row; its attachments come from a query of their own

    def __init__(self, row: tuple[Any, ...], text: Callable[[Any], str], moment: Callable[[Any], datetime]) -> None:
        (pk, conversation, parent, *rest, created) = row
        self.pk, self.conversation_id = text(pk), text(conversation)
        self.parent_id = text(parent) if parent is not None else None
        (
            self.role,
            self.content,
            self.model,
            self.finish_details,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
        ) = rest
        self.created_at = moment(created)
        self.attachments_made: list[Attachment] = []

    def attachment_list(self) -> list[Attachment]:
        return self.attachments_made


@dataclass
class ExportedConversation:
    conversation: Conversation
    messages: list[ExportedMessage] | list[Message]  # oldest first


def export_pages(
    *, user: User, conversation_id: uuid.UUID | None = None, page_size: int | None = None
) -> Iterator[list[ExportedConversation]]:
    """The user's conversations (oldest first, or only `conversation_id`) with all their messages, a page at a
    time: keyset pages on (created_at, id), each page's messages in one streamed query."""
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        page = export_page(user=user, after=after, conversation_id=conversation_id, page_size=page_size or PAGE_SIZE)
        if not page:
            return
        yield page
        last = page[-1].conversation
        after = (last.created_at, last.pk)


def export_page(
    *,
    user: User,
    after: tuple[datetime, uuid.UUID] | None,
    conversation_id: uuid.UUID | None = None,
    page_size: int = PAGE_SIZE,
) -> list[ExportedConversation]:
    conversations = Conversation.objects.filter(owner=user).select_related("folder")
    if conversation_id is not None:
        conversations = conversations.filter(pk=conversation_id)
    if after is not None:
        created, pk = after
        conversations = conversations.filter(created_at__gt=created) | conversations.filter(
            created_at=created, pk__gt=pk
        )
    tags = Prefetch("tag_links", queryset=ConversationTag.objects.order_by("name"))
    page = list(conversations.prefetch_related(tags).order_by("created_at", "id")[:page_size])
    by_id: dict[str, list[ExportedMessage]] = {str(c.pk): [] for c in page}
    if by_id:
        # The ORM says the query; its rows are read as the database gives them: converting every UUID and time
        # through the fields' converters and making a model instance a row took ~80% of the export's CPU.
        messages = Message.objects.filter(conversation__in=[c.pk for c in page]).order_by(
            "conversation", "created_at", "id"
        )
        # On PostgreSQL ids and times come as text: psycopg makes a UUID object of every id (which the formats
        # write as text again) and Django's loader of a time parses it in Python, not in psycopg's C; that was
        # 40% of the export's CPU. (SQLite gives ids as text already, and there the cast cost more than it saved.)
        as_text = _AS_TEXT if connection.vendor == "postgresql" else ()
        columns = [Cast(c, TextField()) if c in as_text else c for c in ExportedMessage.COLUMNS]
        sql, params = messages.values_list(*columns).query.sql_with_params()
        text, moment = _readers()
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(2000):
                for row in rows:
                    message = ExportedMessage(row, text, moment)
                    by_id[message.conversation_id].append(message)
        replies = {m.pk: m for conversation_messages in by_id.values() for m in conversation_messages}
        for attachment in Attachment.objects.filter(conversation__in=[c.pk for c in page]):
            if (reply := replies.get(str(attachment.message_id))) is not None:
                reply.attachments_made.append(attachment)
    return [ExportedConversation(c, by_id[str(c.pk)]) for c in page]


_AS_TEXT = ("pk", "conversation_id", "parent_id", "created_at")


def _readers() -> tuple[Callable[[Any], str], Callable[[Any], datetime]]:
    """How export_page's query gives a UUID (text with its hyphens on PostgreSQL, 32 hex digits on SQLite) and
    a time (ISO 8601 text with its offset, `+00`, on PostgreSQL, whose session time zone Django sets to UTC; on
    SQLite naive, in UTC, as Django stores it there), read as the canonical text and an aware time."""

    def moment(value: datetime | str) -> datetime:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    if connection.features.has_native_uuid_field:
        return str, moment

    def text(value: str) -> str:
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"

    return text, moment


def _children(messages: list[ExportedMessage] | list[Message]) -> dict[Any, list[Any]]:
    """Each message's children, oldest first (the messages are)."""
    children: dict[Any, list[Any]] = {}
    for message in messages:
        if message.parent_id is not None:
            children.setdefault(message.parent_id, []).append(message.pk)
    return children


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


_FINISH_TO_CHATGPT = {"stop": "stop", "length": "max_tokens"}


def chatgpt_conversation(item: ExportedConversation) -> dict[str, Any]:
    """One conversation in the shape of ChatGPT's `conversations.json`."""
    conversation = item.conversation
    children = _children(item.messages)
    roots = [str(m.pk) for m in item.messages if m.parent_id is None]
    mapping: dict[str, Any] = {}
    system_id = None
    if conversation.system_prompt:
        system_id = str(uuid.uuid5(_SYSTEM_NODE, str(conversation.pk)))
        mapping[system_id] = {
            "id": system_id,
            "message": {
                "id": system_id,
                "author": {"role": "system", "name": None, "metadata": {}},
                "create_time": _epoch(conversation.created_at),
                "update_time": None,
                "content": {"content_type": "text", "parts": [conversation.system_prompt]},
                "status": "finished_successfully",
                "end_turn": True,
                "weight": 0.0,
                "metadata": {"is_visually_hidden_from_conversation": True},
                "recipient": "all",
            },
            "parent": None,
            "children": roots,
        }
    for message in item.messages:
        pk = str(message.pk)
        metadata: dict[str, Any] = {}
        if message.model:
            metadata["model_slug"] = message.model
        if message.finish_details:
            finish = str(message.finish_details)
            metadata["finish_details"] = {"type": _FINISH_TO_CHATGPT.get(finish, finish)}
        completed = message.status == Message.Status.COMPLETED
        mapping[pk] = {
            "id": pk,
            "message": {
                "id": pk,
                "author": {"role": str(message.role), "name": None, "metadata": {}},
                "create_time": _epoch(message.created_at),
                "update_time": None,
                "content": {"content_type": "text", "parts": [message.content]},
                "status": "finished_successfully" if completed else "finished_partial_completion",
                "end_turn": message.finish_details == Message.Finish.STOP if message.role == "assistant" else None,
                "weight": 1.0,
                "metadata": metadata,
                "recipient": "all",
            },
            "parent": str(message.parent_id) if message.parent_id else system_id,
            "children": [str(child) for child in children.get(message.pk, [])],
        }
    current = conversation.current_node_id
    return {
        "title": conversation.title,
        "create_time": _epoch(conversation.created_at),
        "update_time": _epoch(conversation.updated_at),
        "mapping": mapping,
        "moderation_results": [],
        "current_node": str(current) if current else system_id,
        "plugin_ids": None,
        "conversation_id": str(conversation.pk),
        "conversation_template_id": None,
        "gizmo_id": None,
        "is_archived": conversation.archived,
        "safe_urls": [],
        "default_model_slug": conversation.model or None,
        "id": str(conversation.pk),
    }


def ndjson_conversation(item: ExportedConversation, serializer: ConversationOutput | None = None) -> dict[str, Any]:
    """One conversation as the API shows it (with its whole mapping), plus what the API leaves out: the
    model as stored, its folder, metadata, origin and the id it was imported from. `serializer`: one to reuse
    (making one copies its fields: more than its work for a short conversation)."""
    conversation = item.conversation
    serializer = serializer or ConversationOutput(context={})
    context = serializer.context
    assert isinstance(context, dict)  # the one it was made with
    context.update(messages=item.messages, children=_children(item.messages))
    data = serializer.to_representation(conversation)
    folder = conversation.folder
    data.update(
        {
            "model": conversation.model or None,
            "folder": {"name": folder.name, "system_prompt": folder.system_prompt} if folder else None,
            "metadata": conversation.metadata,
            "origin": conversation.origin,
            "source_id": conversation.source_id,
        }
    )
    return data


def markdown_conversation(item: ExportedConversation) -> str:
    """The conversation's current branch as a readable Markdown page."""
    conversation = item.conversation
    by_id = {str(m.pk): m for m in item.messages}
    branch: list[ExportedMessage | Message] = []
    node = by_id.get(str(conversation.current_node_id))
    while node is not None:
        branch.append(node)
        node = by_id.get(str(node.parent_id))
    branch.reverse()
    lines = [f"# {conversation.title or 'Untitled conversation'}", ""]
    lines.append(f"*{conversation.created_at:%Y-%m-%d %H:%M} UTC · {len(branch)} messages on this branch*")
    lines.append("")
    if conversation.system_prompt:
        lines += ["**System**", "", *(f"> {line}" for line in conversation.system_prompt.splitlines()), ""]
    for message in branch:
        who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(message.role, message.role)
        if message.role == Message.Role.ASSISTANT and message.model:
            who += f" ({message.model})"
        lines += [f"**{who}** · {message.created_at:%Y-%m-%d %H:%M}", "", message.content, ""]
        if message.status not in (Message.Status.COMPLETED,):
            lines += [f"*({message.status})*", ""]
    return "\n".join(lines)


def _json(data: Any) -> bytes:
    # orjson: the same bytes as json.dumps(ensure_ascii=False, separators=(",", ":")), 16 times as fast; it was
    # 45% of the export's CPU.
    return orjson.dumps(data)


def export_chunks(pages: Iterator[list[ExportedConversation]], fmt: str) -> Iterator[bytes]:
    """The export as bytes, one chunk a page."""
    if fmt == "markdown":
        for page in pages:
            yield "\n---\n\n".join(markdown_conversation(item) for item in page).encode()
        return
    if fmt == "ndjson":
        serializer = ConversationOutput(context={})
        for page in pages:
            yield b"".join(_json(ndjson_conversation(item, serializer)) + b"\n" for item in page)
        return
    first = True
    for page in pages:
        body = b",\n".join(_json(chatgpt_conversation(item)) for item in page)
        yield (b"[\n" if first else b",\n") + body
        first = False
    yield b"[]\n" if first else b"\n]\n"


def export_bytes(*, user: User, fmt: str, conversation_id: uuid.UUID | None = None) -> Iterator[bytes]:
    """The export, for a synchronous caller (the management command)."""
    return export_chunks(export_pages(user=user, conversation_id=conversation_id), fmt)


async def export_stream(*, user: User, fmt: str, conversation_id: uuid.UUID | None = None) -> AsyncIterator[bytes]:
    """The export for an async streamed response: each page is read and encoded in the request's thread
    (one hop a page, not one a chunk, as Django would make of a sync iterator), and the connection goes
    back between pages."""
    chunks = export_bytes(user=user, fmt=fmt, conversation_id=conversation_id)

    def step() -> bytes | None:
        try:
            return next(chunks, None)
        finally:
            if not connection.in_atomic_block:
                close_old_connections()

    next_chunk = sync_to_async(step)
    while (chunk := await next_chunk()) is not None:
        yield chunk


def export_filename(fmt: str, *, conversation: Conversation | None = None) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"conversation-{conversation.pk}" if conversation is not None else "conversations"
    return f"{name}-{stamp}.{EXTENSIONS[fmt]}"


def markdown_for(*, conversation: Conversation) -> str:
    """One conversation's current branch as Markdown (its whole page at once: one branch is small)."""
    path = message_path_get(conversation=conversation, leaf_id=conversation.current_node_id)
    return markdown_conversation(ExportedConversation(conversation, path))


# --- import: reading the file ----------------------------------------------------------------------


class ImportTooLarge(ApplicationError):
    status_code = 413
    code = "import_too_large"


class InvalidImport(InvalidRequest):
    code = "invalid_import"


def _too_large() -> ImportTooLarge:
    limit = settings.CHATAPI_IMPORT_MAX_BYTES
    return ImportTooLarge(f"The import is larger than {limit} bytes uncompressed (CHATAPI_IMPORT_MAX_BYTES).")


def _unzipped(upload: IO[bytes]) -> IO[bytes]:
    """The `conversations.json` of a ChatGPT export's zip, decompressed to a temporary file before anything is
    imported, so that a zip bomb is refused (413) with nothing imported."""
    try:
        archive = zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidImport(f"The zip file cannot be read: {exc}.") from None
    with archive:
        names = [info for info in archive.infolist() if info.filename.rsplit("/", 1)[-1] == "conversations.json"]
        if not names:
            raise InvalidImport("The zip file holds no conversations.json (is it a ChatGPT export?).")
        info = min(names, key=lambda i: i.filename.count("/"))
        if info.file_size > settings.CHATAPI_IMPORT_MAX_BYTES:
            raise _too_large()
        try:
            with archive.open(info) as member:
                # Counts what really comes out, whatever the zip's header claims.
                return spool(member, limit=settings.CHATAPI_IMPORT_MAX_BYTES)
        except RequestDataTooBig:
            raise _too_large() from None
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise InvalidImport(f"conversations.json cannot be read from the zip file: {exc}.") from None


def _first_byte(stream: IO[bytes]) -> bytes:
    """The first byte that is not whitespace (or a UTF-8 byte order mark); the stream is left rewound."""
    head = stream.read(4096)
    stream.seek(0)
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]


@dataclass
class ImportProblem:
    index: int
    id: str | None
    title: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "title": self.title, "message": self.message}


MAX_REPORTED_ERRORS = 1000


@dataclass
class ImportResult:
    imported: int = 0
    skipped: int = 0
    errors: list[ImportProblem] = field(default_factory=list)

    def error(self, error: ImportProblem) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "skipped": self.skipped, "errors": [e.as_dict() for e in self.errors]}


@dataclass
class ImportSource:
    """What an import reads: the conversations of the file, and the file they are read from (for progress)."""

    stream: IO[bytes]
    size: int
    items: Iterator[Any]  # each conversation as parsed, or an InvalidImport for a part that cannot be read

    @property
    def position(self) -> int:
        return self.stream.tell()


def conversations_read(upload: IO[bytes]) -> ImportSource:
    """The conversations in an import file (seekable): a ChatGPT export (its JSON array, or the zip holding
    `conversations.json`), or NDJSON (one object a line). A part of the file that cannot be read comes as an
    InvalidImport (and the rest then ends); nothing readable at all is an InvalidImport raised here."""
    if upload.read(4) == b"PK\x03\x04":
        upload.seek(0)
        upload = _unzipped(upload)
    size = upload.seek(0, 2)
    upload.seek(0)
    first = _first_byte(upload)
    if first == b"[":
        return ImportSource(upload, size, _array_items(upload))
    if first == b"{":
        return ImportSource(upload, size, _ndjson_items(upload))
    raise InvalidImport("The file is not JSON: expected a ChatGPT export (a JSON array), a zip, or NDJSON.")


def _array_items(stream: IO[bytes]) -> Iterator[Any]:
    items = ijson.items(stream, "item", use_float=True)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError, ValueError) as exc:
            yield InvalidImport(f"The file is not valid JSON from here on: {exc}")
            return
        yield item


def _ndjson_items(stream: IO[bytes]) -> Iterator[Any]:
    """Each line's object; a line that is not JSON (or not UTF-8) is reported and the next ones are read."""
    for number, line in enumerate(stream, 1):
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield InvalidImport(f"Line {number} is not JSON: {exc}")


# --- import: one conversation, from either shape, as a tree to store -------------------------------


class Malformed(Exception):
    """A conversation of the file that cannot be imported; the message says why."""


@dataclass
class ImportedMessage:
    key: str  # its id in the file
    parent: ImportedMessage | None
    role: str
    text: str
    created_at: datetime
    model: str = ""
    status: str = Message.Status.COMPLETED
    finish: str | None = None
    usage: tuple[int, int, int] | None = None
    depth: int = 0


@dataclass
class ImportedConversation:
    source_id: str
    own_id: uuid.UUID | None  # its id, when the file is one of ours (a re-import into the same account skips it)
    title: str
    created_at: datetime
    updated_at: datetime
    messages: list[ImportedMessage]  # parents before children; siblings in the file's order
    current: ImportedMessage | None
    model: str = ""
    system_prompt: str = ""
    pinned: bool = False
    archived: bool = False
    tags: list[str] = field(default_factory=list)
    folder: tuple[str, str] | None = None  # name, system prompt
    origin: str = Conversation.Origin.CONVERSATIONS
    metadata: dict[str, str] = field(default_factory=dict)


def _time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise Malformed(f"{what} is not a time.")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(round(float(value), 6), tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise Malformed(f"{what} is not a time: {value!r}.") from None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Malformed(f"{what} is not a time: {value!r}.") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    raise Malformed(f"{what} is not a time.")


def _str(value: Any, what: str, *, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise Malformed(f"{what} must be a string.")
    return value


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Malformed(f"{what} must be an object.")
    return value


def _chatgpt_text(content: dict[str, Any], key: str) -> str | None:
    """The text of a ChatGPT message's content (its text parts joined); None for content that is no text
    (tool calls, browsing results, reasoning): such messages are left out."""
    kind = content.get("content_type", "text")
    if kind not in ("text", "multimodal_text"):
        return None
    parts = content.get("parts", [])
    if not isinstance(parts, list):
        raise Malformed(f"message {key}: content.parts must be a list.")
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif not isinstance(part, dict):
            raise Malformed(f"message {key}: a part of its content is neither text nor an object.")
    return "\n\n".join(t for t in texts if t) if len(texts) > 1 else "".join(texts)


_CHATGPT_FINISH = {
    "stop": (Message.Status.COMPLETED, Message.Finish.STOP),
    "max_tokens": (Message.Status.COMPLETED, Message.Finish.LENGTH),
    "length": (Message.Status.COMPLETED, Message.Finish.LENGTH),
    "interrupted": (Message.Status.INTERRUPTED, Message.Finish.INTERRUPTED),
    "cancelled": (Message.Status.CANCELLED, Message.Finish.CANCELLED),
    "error": (Message.Status.FAILED, Message.Finish.ERROR),
}
_STATUSES = {
    Message.Status.COMPLETED: Message.Finish.STOP,
    Message.Status.INTERRUPTED: Message.Finish.INTERRUPTED,
    # A reply still being generated when it was exported has no generation here: it ends interrupted.
    Message.Status.IN_PROGRESS: Message.Finish.INTERRUPTED,
    Message.Status.FAILED: Message.Finish.ERROR,
    Message.Status.CANCELLED: Message.Finish.CANCELLED,
}


# The choices as sets, made once: Django's `Choices.values` builds a new list at each call (a tenth of the
# parsing of a ChatGPT export, where it was asked for every message).
_ROLES = frozenset(Message.Role.values)
_STATUS_VALUES = frozenset(Message.Status.values)
_FINISH_VALUES = frozenset(Message.Finish.values)


@dataclass
class _Node:
    key: str
    parent: str | None
    children: list[str]
    message: dict[str, Any] | None


def _usage(value: Any, key: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    usage = _dict(value, f"message {key}: usage")
    numbers = [usage.get(name) for name in ("prompt_tokens", "completion_tokens", "total_tokens")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in numbers):
        raise Malformed(f"message {key}: usage must hold three token counts.")
    return numbers[0], numbers[1], numbers[2]  # type: ignore[return-value]


def _message_fields(node: _Node, ours: bool) -> dict[str, Any] | None:
    """A node's message as the fields to store, or None for one that is left out (an empty root, a hidden
    system message, a tool's message, content that is not text)."""
    message = node.message
    if message is None:
        return None
    key = node.key
    author = _dict(message.get("author"), f"message {key}: author")
    role = author.get("role")
    if not isinstance(role, str):
        raise Malformed(f"message {key}: author.role must be a string.")
    if role not in _ROLES:
        return None  # a tool's output
    metadata = _dict(message.get("metadata"), f"message {key}: metadata")
    if ours:
        text = _str(message.get("message"), f"message {key}: message")
        status = _str(message.get("status"), f"message {key}: status", default=Message.Status.COMPLETED)
        if status not in _STATUS_VALUES:
            raise Malformed(f"message {key}: unknown status {status!r}.")
        finish = message.get("finish_details")
        if finish is not None and (not isinstance(finish, str) or finish not in _FINISH_VALUES):
            raise Malformed(f"message {key}: unknown finish_details {finish!r}.")
        if status == Message.Status.IN_PROGRESS:
            status, finish = Message.Status.INTERRUPTED, _STATUSES[status]
        usage = _usage(message.get("usage"), key)
        model = _str(message.get("model"), f"message {key}: model")
    else:
        if message.get("recipient", "all") != "all":
            return None  # a call to a tool
        content = _dict(message.get("content"), f"message {key}: content")
        found = _chatgpt_text(content, key)
        if found is None:
            return None
        text = found
        if metadata.get("is_visually_hidden_from_conversation") is True:
            return {"hidden": True, "role": role, "text": text}
        details = metadata.get("finish_details")
        kind = details.get("type") if isinstance(details, dict) else None
        status, finish = Message.Status.COMPLETED, None
        if role == Message.Role.ASSISTANT and isinstance(kind, str):
            status, finish = _CHATGPT_FINISH.get(kind, (Message.Status.COMPLETED, Message.Finish.STOP))
        elif role == Message.Role.ASSISTANT:
            partial = message.get("status") not in (None, "finished_successfully")
            status = Message.Status.INTERRUPTED if partial else Message.Status.COMPLETED
            finish = Message.Finish.INTERRUPTED if partial else Message.Finish.STOP
        usage = None
        model = _str(metadata.get("model_slug"), f"message {key}: metadata.model_slug")
    return {
        "role": role,
        "text": text,
        "created_at": _time(message.get("create_time"), f"message {key}: create_time"),
        "model": model[:200],
        "status": status,
        "finish": finish,
        "usage": usage,
    }


def _sort_as_listed(keys: list[str], listed: list[str]) -> None:
    order = {key: i for i, key in enumerate(listed)}
    keys.sort(key=lambda key: order.get(key, len(order)))


def conversation_parse(data: Any) -> ImportedConversation:
    """A conversation of the file (ChatGPT's shape, or one of our NDJSON lines) as a tree to store. Nodes
    that are not messages of the conversation (ChatGPT's empty roots, hidden system messages, tools' calls
    and outputs) are left out and their children hang from the nearest message above them; a hidden system
    message's text becomes the system prompt. Malformed: a parent missing from `mapping`, a cycle, bad types."""
    if not isinstance(data, dict):
        raise Malformed("A conversation must be a JSON object.")
    raw_mapping = data.get("mapping")
    if not isinstance(raw_mapping, dict):
        raise Malformed("mapping must be an object of message nodes.")
    ours = "system_prompt" in data  # our NDJSON always has it; ChatGPT's shape never does
    raw_id = data.get("id") if ours else (data.get("conversation_id") or data.get("id"))
    source_id = raw_id if isinstance(raw_id, str) and raw_id else None
    if ours and isinstance(data.get("source_id"), str) and data["source_id"]:
        source_id = data["source_id"]
    if source_id is None:  # no id: the conversation's content is its identity
        source_id = "sha256:" + hashlib.sha256(_json(data)).hexdigest()
    if len(source_id) > 200:
        raise Malformed("Its id is longer than 200 characters.")

    nodes: dict[str, _Node] = {}
    for key, raw in raw_mapping.items():
        if not isinstance(raw, dict):
            raise Malformed(f"mapping[{key!r}] must be an object.")
        parent = raw.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise Malformed(f"node {key}: parent must be a node id or null.")
        children = raw.get("children") or []
        if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
            raise Malformed(f"node {key}: children must be a list of node ids.")
        message = raw.get("message")
        if message is not None and not isinstance(message, dict):
            raise Malformed(f"node {key}: message must be an object or null.")
        nodes[key] = _Node(key, parent, children, message)
    for node in nodes.values():
        if node.parent is not None and node.parent not in nodes:
            raise Malformed(f"node {node.key}: its parent {node.parent} is not in mapping.")

    # Children as their parent lists them (the file's order), then any it does not list.
    kids: dict[str | None, list[str]] = {}
    for node in nodes.values():
        kids.setdefault(node.parent, [])
    for node in nodes.values():
        kids[node.parent].append(node.key)
    for parent, keys in kids.items():
        if parent is not None:
            _sort_as_listed(keys, nodes[parent].children)

    created = _time(data.get("create_time"), "create_time")
    updated = _time(data.get("update_time"), "update_time")
    system_prompt = ""
    kept: dict[str, ImportedMessage] = {}
    nearest: dict[str, ImportedMessage | None] = {}
    messages: list[ImportedMessage] = []
    stack: list[tuple[str, ImportedMessage | None]] = [(k, None) for k in reversed(kids.get(None, []))]
    visited = 0
    while stack:  # depth first, without recursion: a branch may be thousands of messages deep
        key, above = stack.pop()
        visited += 1
        fields = _message_fields(nodes[key], ours)
        here = above
        if fields is not None and fields.get("hidden"):
            if fields["role"] == Message.Role.SYSTEM and fields["text"] and not system_prompt:
                system_prompt = fields["text"]
        elif fields is not None:
            moment = fields["created_at"] or (above.created_at if above else None) or created
            if moment is None:
                raise Malformed(f"message {key}: it has no create_time, nor has the conversation.")
            here = ImportedMessage(
                key=key,
                parent=above,
                role=fields["role"],
                text=fields["text"],
                created_at=moment,
                model=fields["model"],
                status=fields["status"],
                finish=fields["finish"],
                usage=fields["usage"],
                depth=above.depth + 1 if above else 0,
            )
            messages.append(here)
            kept[key] = here
        nearest[key] = here
        stack.extend((child, here) for child in reversed(kids.get(key, [])))
    if visited != len(nodes):
        raise Malformed("mapping has a cycle: some nodes are not below any root.")

    current_key = data.get("current_node")
    if current_key is not None and not isinstance(current_key, str):
        raise Malformed("current_node must be a node id.")
    if current_key is not None and current_key not in nodes:
        raise Malformed(f"current_node {current_key} is not in mapping.")
    current = nearest.get(current_key) if current_key else None
    if current is None and messages:
        current = max(messages, key=lambda m: (m.created_at, m.depth))
    if ours:
        system_prompt = _str(data.get("system_prompt"), "system_prompt")
    first_time = min((m.created_at for m in messages), default=None)
    created = created or first_time or datetime.now(UTC)
    title = _str(data.get("title"), "title").strip()[:255]
    result = ImportedConversation(
        source_id=source_id,
        own_id=_uuid(raw_id) if ours else None,
        title=title,
        created_at=created,
        updated_at=updated or max((m.created_at for m in messages), default=created),
        messages=messages,
        current=current,
        system_prompt=system_prompt,
        archived=data.get("is_archived") is True or data.get("archived") is True,
        model=_str(data.get("model") if ours else data.get("default_model_slug"), "model")[:200],
    )
    if ours:
        _ours_extra(data, result)
    _refuse_nul(result)
    return result


def _refuse_nul(tree: ImportedConversation) -> None:
    """A NUL character in any text is malformed, as everywhere else in the API (PostgreSQL stores none)."""
    for message in tree.messages:
        if "\x00" in message.text or "\x00" in message.model:
            raise Malformed(f"message {message.key}: its text holds a NUL character.")
    fields = [tree.source_id, tree.title, tree.system_prompt, tree.model, *tree.tags, *(tree.folder or ())]
    if any("\x00" in text for text in [*fields, *tree.metadata, *tree.metadata.values()]):
        raise Malformed("A text of the conversation holds a NUL character.")


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _ours_extra(data: dict[str, Any], result: ImportedConversation) -> None:
    result.pinned = data.get("pinned") is True
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise Malformed("tags must be a list of strings.")
    result.tags = sorted({t.strip()[:64] for t in tags if t.strip()})[:32]
    folder = data.get("folder")
    if folder is not None:
        folder = _dict(folder, "folder")
        name = _str(folder.get("name"), "folder.name").strip()[:100]
        if name:
            result.folder = (name, _str(folder.get("system_prompt"), "folder.system_prompt"))
    metadata = _dict(data.get("metadata"), "metadata")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()) or len(metadata) > 16:
        raise Malformed("metadata must be up to 16 string pairs.")
    result.metadata = metadata
    if data.get("origin") in Conversation.Origin.values:
        result.origin = data["origin"]


# --- import: the whole file -----------------------------------------------------------------------


def _label(data: Any) -> tuple[str | None, str | None]:
    if not isinstance(data, dict):
        return None, None
    ident = data.get("conversation_id") or data.get("id")
    title = data.get("title")
    return (ident if isinstance(ident, str) else None), (title[:255] if isinstance(title, str) else None)


# Conversations are committed a batch at a time, each in a savepoint of its own: a commit per conversation
# rewrote the same pages of the indexes (the search index's first) once per conversation. A batch ends after
# the conversation that brings it to this many messages, or at this many conversations: PostgreSQL keeps up
# to 64 subtransactions of a transaction in shared memory, and past that every snapshot of every session
# costs more until it ends.
IMPORT_BATCH_MESSAGES = 2000
IMPORT_BATCH_CONVERSATIONS = 50


def import_file(
    *, owner: User, upload: IO[bytes], progress: Callable[[ImportResult, ImportSource], None] | None = None
) -> ImportResult:
    """Import every conversation of `upload` (seekable) for `owner`: the malformed ones, and any the database
    refuses, are reported in `errors` with nothing of them stored, and the others are still imported; the ones
    imported before (same source id, or the same conversation of ours) are skipped."""
    result = ImportResult()
    source = conversations_read(upload)
    items = enumerate(source.items)
    done = False
    while not done:
        with transaction.atomic():
            done = _import_batch(owner, items, source, result, progress)
    if result.imported:
        statistics_refresh()  # the tables may have grown many times over
    return result


def _import_batch(
    owner: User,
    items: Iterator[tuple[int, Any]],
    source: ImportSource,
    result: ImportResult,
    progress: Callable[[ImportResult, ImportSource], None] | None,
) -> bool:
    """Import conversations of `items` (in the caller's transaction) until they hold IMPORT_BATCH_MESSAGES
    messages or IMPORT_BATCH_CONVERSATIONS conversations; True once `items` is spent."""
    from conversations.services import conversation_import

    stored = savepoints = 0
    for index, data in items:
        if isinstance(data, InvalidImport):
            if index == 0:  # nothing of the file could be read
                raise data
            result.error(ImportProblem(index, None, None, data.message))
            continue  # a JSON array ends there; NDJSON goes on with its next line
        ident, title = _label(data)
        try:
            tree = conversation_parse(data)
            # A savepoint of its own (conversation_import's atomic block, nested in the batch's): a conversation
            # the database refuses is rolled back alone, and the batch goes on.
            savepoints += 1
            imported = conversation_import(owner=owner, tree=tree)
        except Malformed as exc:
            result.error(ImportProblem(index, ident, title, str(exc)))
        except DatabaseError:
            logger.warning("Conversation %s of an import could not be stored", index, exc_info=True)
            result.error(ImportProblem(index, ident, title, "The database refused it; nothing of it was stored."))
        else:
            if imported is None:
                result.skipped += 1
            else:
                result.imported += 1
                stored += len(tree.messages)
        if progress is not None:
            progress(result, source)
        if stored >= IMPORT_BATCH_MESSAGES or savepoints >= IMPORT_BATCH_CONVERSATIONS:
            return False
    return True
