"""Read queries for conversations and message trees; a whole branch is one query (recursive CTE)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.db import connection
from django.db.models import Count, QuerySet
from django.db.models.expressions import RawSQL

from accounts.models import User
from chatapi.errors import InvalidRequest, NotFound
from chatapi.ids import parse_uuid
from conversations.models import Conversation, Message

ORDERINGS = {
    "update_time": "updated_at",
    "-update_time": "-updated_at",
    "create_time": "created_at",
    "-create_time": "-created_at",
    "title": "title",
    "-title": "-title",
}


def conversation_list_for_user(*, user: User, q: str = "", order: str = "-update_time") -> QuerySet[Conversation]:
    conversations = Conversation.objects.filter(owner=user)
    if q:
        conversations = conversations.filter(title__icontains=q)
    field = ORDERINGS[order]
    return conversations.annotate(message_count=Count("messages")).order_by(field, "-id" if "-" in field else "id")


def _pk_param(value: uuid.UUID) -> Any:
    """A UUID as the database takes it in raw SQL (a hex string on SQLite, a uuid on PostgreSQL)."""
    return Message._meta.pk.get_db_prep_value(value, connection)


def conversation_get_for_user(*, user: User, conversation_id: object) -> Conversation:
    """The user's conversation; anything else (another user's, unknown, not a UUID) is a 404."""
    pk = parse_uuid(conversation_id)
    conversation = Conversation.objects.filter(pk=pk, owner=user).first() if pk is not None else None
    if conversation is None:
        raise NotFound("Conversation not found.", code="conversation_not_found")
    return conversation


def conversation_of_message_for_user(*, user: User, message_id: object, param: str) -> Conversation:
    """The user's conversation holding the message `message_id` (sent in a body: anything else is a 400)."""
    pk = parse_uuid(message_id)
    conversation = Conversation.objects.filter(owner=user, messages__pk=pk).first() if pk else None
    if conversation is None:
        reason = "is not one of your messages" if pk else "must be a message id (a UUID)"
        raise InvalidRequest(f"{param} {reason}.", code="invalid_message_id", param=param)
    return conversation


def message_get_in_conversation(*, conversation: Conversation, message_id: object, param: str | None = None) -> Message:
    """A message of this conversation. In a body (`param` given) a bad id is a 400, on a path a 404."""
    pk = parse_uuid(message_id)
    message = Message.objects.filter(conversation=conversation, pk=pk).first() if pk else None
    if message is None:
        if param is not None:
            reason = "is not a message of this conversation" if pk else "must be a message id (a UUID)"
            raise InvalidRequest(f"{param} {reason}.", code="invalid_message_id", param=param)
        raise NotFound("Message not found.", code="message_not_found")
    return message


def message_path_get(*, conversation: Conversation, leaf_id: object) -> list[Message]:
    """The branch root→`leaf_id`, oldest first, in one query whatever its depth.

    Empty when `leaf_id` is None or not a message of `conversation`.
    """
    pk = parse_uuid(leaf_id)
    if pk is None:
        return []
    table = Message._meta.db_table
    # A recursive CTE: the one query here the ORM cannot say.
    ancestors = Message.objects.raw(
        f"""
        WITH RECURSIVE path(id, parent_id) AS (
            SELECT id, parent_id FROM {table} WHERE id = %s AND conversation_id = %s
            UNION ALL
            SELECT m.id, m.parent_id FROM {table} m JOIN path p ON m.id = p.parent_id
        )
        SELECT * FROM {table} WHERE id IN (SELECT id FROM path)
        """,
        [_pk_param(pk), _pk_param(conversation.pk)],
    )
    by_id = {message.pk: message for message in ancestors}
    path: list[Message] = []
    node = by_id.get(pk)
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    path.reverse()
    return path


def message_path_or_400(*, conversation: Conversation, leaf_id: object, param: str) -> list[Message]:
    """Like message_path_get, for an id a client sent in a body or query: not in this conversation is a 400."""
    path = message_path_get(conversation=conversation, leaf_id=leaf_id)
    if not path:
        reason = "is not a message of this conversation" if parse_uuid(leaf_id) else "must be a message id (a UUID)"
        raise InvalidRequest(f"{param} {reason}.", code="invalid_message_id", param=param)
    return path


def message_context_get(*, conversation: Conversation, leaf_id: uuid.UUID, budget: int) -> tuple[list[Message], int]:
    """The newest part of the branch root→`leaf_id` whose tokens fit in `budget` (the leaf always), oldest
    first, and how many earlier messages of the branch were left out.

    One query, which reads the rows it returns and one more: the walk up the branch stops once the budget
    is spent, so its cost does not grow with the depth of the branch.
    """
    table = Message._meta.db_table
    rows = Message.objects.raw(
        f"""
        WITH RECURSIVE path(id, parent_id, total) AS (
            SELECT id, parent_id, token_count FROM {table} WHERE id = %s AND conversation_id = %s
            UNION ALL
            SELECT m.id, m.parent_id, p.total + m.token_count FROM {table} m JOIN path p ON m.id = p.parent_id
            WHERE p.total <= %s
        )
        SELECT t.*, path.total AS context_total FROM {table} t JOIN path ON t.id = path.id
        """,
        [_pk_param(leaf_id), _pk_param(conversation.pk), budget],
    )
    fitting = sorted(
        (m for m in rows if m.pk == leaf_id or m.context_total <= budget),  # type: ignore[attr-defined]
        key=lambda m: m.depth,
    )
    return fitting, fitting[0].depth if fitting else 0


def message_subtree_ids(*, root: Message) -> list[uuid.UUID]:
    """Ids of `root` and all its descendants, in one query."""
    table = Message._meta.db_table
    descendants = RawSQL(
        f"""
        WITH RECURSIVE subtree(id) AS (
            SELECT id FROM {table} WHERE id = %s
            UNION ALL
            SELECT m.id FROM {table} m JOIN subtree s ON m.parent_id = s.id
        )
        SELECT id FROM subtree
        """,
        (_pk_param(root.pk),),
    )
    return list(Message.objects.filter(pk__in=descendants).values_list("pk", flat=True))


def message_list_all(*, conversation: Conversation) -> list[Message]:
    return list(Message.objects.filter(conversation=conversation).order_by("created_at", "id"))


def message_children_map(*, messages: Iterable[Message], complete: bool = False) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Each message's direct children ids, oldest first.

    With `complete=True` the given messages are the whole conversation, so no query is needed.
    """
    messages = list(messages)
    children: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    if complete:
        for message in messages:  # already oldest first
            if message.parent_id is not None:
                children[message.parent_id].append(message.pk)
        return children
    ids = [message.pk for message in messages]
    if ids:
        rows = Message.objects.filter(parent_id__in=ids).order_by("created_at", "id").values_list("parent_id", "pk")
        for parent_id, child_id in rows:
            children[parent_id].append(child_id)
    return children


def conversation_message_count(*, conversation: Conversation) -> int:
    return Message.objects.filter(conversation=conversation).count()


def conversation_latest_for_origin(*, user: User, origin: str) -> Conversation | None:
    return Conversation.objects.filter(owner=user, origin=origin).order_by("-updated_at").first()


def reply_get_for_user(*, user: User, reply_id: uuid.UUID | None) -> Message:
    """The user's assistant message `reply_id`, with its conversation; anything else is a 404 (OpenAI's
    words: a response is a reply)."""
    reply = (
        Message.objects.select_related("conversation")
        .filter(pk=reply_id, conversation__owner=user, role=Message.Role.ASSISTANT)
        .first()
        if reply_id is not None
        else None
    )
    if reply is None:
        raise NotFound("Response not found.", code="response_not_found")
    return reply


def message_turn_get(*, reply: Message) -> list[Message]:
    """The turn that led to `reply`: the messages above it up to and including the assistant message it
    follows (if any), oldest first, then the reply. One query, which stops at that assistant message, so its
    cost does not grow with the depth of the branch."""
    table = Message._meta.db_table
    rows = Message.objects.raw(
        f"""
        WITH RECURSIVE turn(id, parent_id, role, n) AS (
            SELECT id, parent_id, role, 0 FROM {table} WHERE id = %s
            UNION ALL
            SELECT m.id, m.parent_id, m.role, t.n + 1 FROM {table} m JOIN turn t ON m.id = t.parent_id
            WHERE t.n = 0 OR t.role <> %s
        )
        SELECT * FROM {table} WHERE id IN (SELECT id FROM turn)
        """,
        [_pk_param(reply.pk), Message.Role.ASSISTANT],
    )
    return sorted(rows, key=lambda m: m.depth)
