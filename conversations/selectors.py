"""Read queries for conversations and message trees; a whole branch is one query (recursive CTE)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Count, Exists, OuterRef, QuerySet, prefetch_related_objects
from django.db.models.expressions import RawSQL

from accounts.models import User
from chatapi.errors import InvalidRequest, NotFound
from chatapi.ids import parse_uuid
from conversations import fulltext
from conversations.models import Attachment, Conversation, ConversationTag, Folder, Message

ORDERINGS = {
    "update_time": "updated_at",
    "-update_time": "-updated_at",
    "create_time": "created_at",
    "-create_time": "-created_at",
    "title": "title",
    "-title": "-title",
}


def conversation_filter_for_user(
    *,
    user: User,
    archived: bool | None = False,
    pinned: bool | None = None,
    tag: str | None = None,
    folder_id: uuid.UUID | None = None,
) -> QuerySet[Conversation]:
    """The user's conversations that pass the list's filters (`archived=None`: archived or not)."""
    conversations = Conversation.objects.filter(owner=user)
    if archived is not None:
        conversations = conversations.filter(archived=archived)
    if pinned is not None:
        conversations = conversations.filter(pinned=pinned)
    if tag:
        # EXISTS, not IN: the database walks the owner's conversations (in the list's index, in its order, until
        # a page is full) and looks the tag up for each, rather than reading every use of the tag name by every
        # user and sorting what is left.
        conversations = conversations.filter(
            Exists(ConversationTag.objects.filter(conversation=OuterRef("pk"), name=tag))
        )
    if folder_id is not None:
        conversations = conversations.filter(folder_id=folder_id)
    return conversations


def conversation_list_for_user(
    *,
    user: User,
    q: str = "",
    order: str = "-update_time",
    archived: bool | None = False,
    pinned: bool | None = None,
    tag: str | None = None,
    folder_id: uuid.UUID | None = None,
) -> QuerySet[Conversation]:
    """The list: filtered, pinned ones first, then in `order`. Message counts and tags are added to a page by
    `conversation_page_with_counts` (for the page only, not for every match)."""
    conversations = conversation_filter_for_user(
        user=user, archived=archived, pinned=pinned, tag=tag, folder_id=folder_id
    )
    if q:
        conversations = conversations.filter(title__icontains=q)
    field = ORDERINGS[order]
    return conversations.order_by("-pinned", field, "-id" if "-" in field else "id")


def conversation_page_with_counts(conversations: QuerySet[Conversation], offset: int, limit: int) -> list[Conversation]:
    """One page of `conversations`, each with its `message_count` and its tags, in two more queries.

    The tags are read as (conversation, name) pairs rather than with prefetch_related, whose bookkeeping
    (a queryset made for every conversation of the page) cost more than the rest of the list's queries.
    """
    page = list(conversations[offset : offset + limit])
    ids = [c.pk for c in page]
    counts = dict(Message.objects.filter(conversation__in=ids).values_list("conversation").annotate(n=Count("pk")))
    tags: dict[uuid.UUID, list[str]] = defaultdict(list)
    for conversation_id, name in ConversationTag.objects.filter(conversation__in=ids).values_list(
        "conversation", "name"
    ):
        tags[conversation_id].append(name)
    for conversation in page:
        conversation.message_count = counts.get(conversation.pk, 0)  # type: ignore[attr-defined]
        conversation.tag_names = sorted(tags.get(conversation.pk, []))  # type: ignore[attr-defined]
    return page


def conversation_tags(*, conversation: Conversation) -> list[str]:
    """The conversation's tags, sorted (those the list read for its page, else from the database)."""
    names = getattr(conversation, "tag_names", None)
    if names is not None:
        return list(names)
    return sorted(link.name for link in conversation.tag_links.all())


def folder_list_for_user(*, user: User) -> QuerySet[Folder]:
    return Folder.objects.filter(owner=user).order_by("name", "id")


def folder_get_for_user(*, user: User, folder_id: object, param: str | None = None) -> Folder:
    """The user's folder. In a body or query (`param` given) anything else is a 400, on a path a 404."""
    pk = parse_uuid(folder_id)
    folder = Folder.objects.filter(pk=pk, owner=user).first() if pk is not None else None
    if folder is None:
        if param is not None:
            raise InvalidRequest(f"{param} is not one of your folders.", code="invalid_folder_id", param=param)
        raise NotFound("Folder not found.", code="folder_not_found")
    return folder


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


def message_branch_window(*, conversation: Conversation, leaf: Message, low: int, high: int) -> list[Message]:
    """The messages of the branch root→`leaf` whose depth lies in [low, high], oldest first.

    One query, which walks up from the leaf and stops at depth `low`: a page near the leaf costs the same
    however long the branch is (a page near the root reads the branch's ids, and only its own rows whole).
    """
    table = Message._meta.db_table
    rows = Message.objects.raw(
        f"""
        WITH RECURSIVE branch(id, parent_id, depth) AS (
            SELECT id, parent_id, depth FROM {table} WHERE id = %s AND conversation_id = %s
            UNION ALL
            SELECT m.id, m.parent_id, m.depth FROM {table} m JOIN branch b ON m.id = b.parent_id WHERE b.depth > %s
        )
        SELECT * FROM {table} WHERE id IN (SELECT id FROM branch WHERE depth BETWEEN %s AND %s)
        """,
        [_pk_param(leaf.pk), _pk_param(conversation.pk), low, low, high],
    )
    return sorted(rows, key=lambda m: m.depth)


def message_branch_page(
    *, conversation: Conversation, limit: int, descending: bool, after: uuid.UUID | None = None
) -> tuple[list[Message], bool]:
    """A page of the current branch (root→`current_node`): up to `limit` messages newest or oldest first, after
    the message `after` when given (which must be on the branch: else a 400), and whether more follow.

    Three queries or four, whatever the length of the branch (the page is found by depth)."""
    leaf = Message.objects.filter(pk=conversation.current_node_id).first() if conversation.current_node_id else None
    anchor: int | None = None
    if after is not None:
        found = Message.objects.filter(pk=after, conversation=conversation).values_list("depth", flat=True).first()
        anchor = found if leaf is not None and found is not None and found <= leaf.depth else None
        if anchor is None:
            raise InvalidRequest("after is not an item of the conversation's current branch.", param="after")
    if leaf is None:
        return [], False
    if descending:
        high = leaf.depth if anchor is None else anchor - 1
        low = max(0, high - limit + 1)
        has_more = low > 0
    else:
        low = 0 if anchor is None else anchor + 1
        high = min(leaf.depth, low + limit - 1)
        has_more = high < leaf.depth
    window = message_branch_window(
        conversation=conversation,
        leaf=leaf,
        low=low if anchor is None else min(low, anchor),
        high=high if anchor is None else max(high, anchor),
    )
    if anchor is not None and not any(m.pk == after for m in window):  # at its depth, but on another branch
        raise InvalidRequest("after is not an item of the conversation's current branch.", param="after")
    page = [m for m in window if low <= m.depth <= high]
    if descending:
        page.reverse()
    return page, has_more


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


def message_attachments_prefetch(*, messages: list[Message]) -> list[Message]:
    """`messages` with their attachments, in one query for all of them (the message objects list them)."""
    prefetch_related_objects(messages, "attachments")
    return messages


def attachment_get_for_user(*, user: User, attachment_id: object) -> Attachment:
    """The user's attachment (of a message of one of their conversations); anything else is a 404."""
    pk = parse_uuid(attachment_id)
    attachment = Attachment.objects.filter(pk=pk, conversation__owner=user).first() if pk is not None else None
    if attachment is None:
        raise NotFound("Attachment not found.", code="attachment_not_found")
    return attachment


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


# --- full-text search -------------------------------------------------------------------------------


@dataclass
class SearchHit:
    conversation_id: uuid.UUID
    title: str
    message_id: uuid.UUID | None  # None for a match in the title
    role: str | None
    snippet: str  # HTML: escaped, each match in <mark>…</mark>
    create_time: datetime
    rank: float  # higher is better


@dataclass
class SearchPage:
    total: int
    hits: list[SearchHit]


def search_for_user(
    *,
    user: User,
    q: str,
    limit: int = 20,
    offset: int = 0,
    archived: bool | None = False,
    tag: str | None = None,
    folder_id: uuid.UUID | None = None,
) -> SearchPage:
    """The user's messages and conversation titles that match the web-search query `q`, best first.

    A query with nothing to look for (only operators, only excluded words) finds nothing.
    """
    query = fulltext.web_query_parse(q)
    if query.empty:
        return SearchPage(total=0, hits=[])
    conversations = conversation_filter_for_user(user=user, archived=archived, tag=tag, folder_id=folder_id)
    if connection.vendor == "postgresql":
        return _search_postgres(q, conversations, limit, offset)
    return _search_sqlite(query.fts5(), conversations, limit, offset)


def _search_sqlite(match: str, conversations: QuerySet[Conversation], limit: int, offset: int) -> SearchPage:
    # FTS5's MATCH, bm25() and snippet() are SQL the ORM cannot say. The page is chosen first from rowids
    # and ranks alone; snippets are made for its rows only.
    in_sql, in_params = conversations.values("pk").query.sql_with_params()
    ranked = f"""
        SELECT 'm' AS kind, conversations_message_fts.rowid AS rid, bm25(conversations_message_fts) AS score
        FROM conversations_message_fts JOIN conversations_message m ON m.rowid = conversations_message_fts.rowid
        WHERE conversations_message_fts MATCH %s AND m.conversation_id IN ({in_sql})
        UNION ALL
        SELECT 'c', conversations_conversation_fts.rowid, bm25(conversations_conversation_fts)
        FROM conversations_conversation_fts
        JOIN conversations_conversation c ON c.rowid = conversations_conversation_fts.rowid
        WHERE conversations_conversation_fts MATCH %s AND c.id IN ({in_sql})
    """
    params = [match, *in_params, match, *in_params]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT kind, rid, score, COUNT(*) OVER () FROM ({ranked}) ORDER BY score, kind, rid LIMIT %s OFFSET %s",
            [*params, limit, offset],
        )
        rows = cursor.fetchall()
        if rows:
            total = rows[0][3]
        else:
            cursor.execute(f"SELECT COUNT(*) FROM ({ranked})", params)
            total = cursor.fetchone()[0]
        found: dict[tuple[str, int], tuple[uuid.UUID, str]] = {}
        for kind, fts, table in (
            ("m", "conversations_message_fts", "conversations_message"),
            ("c", "conversations_conversation_fts", "conversations_conversation"),
        ):
            rids = [rid for row_kind, rid, _, _ in rows if row_kind == kind]
            if not rids:
                continue
            snippet = f"snippet({fts}, 0, '{fulltext.MARK_START}', '{fulltext.MARK_END}', '…', 24)"
            cursor.execute(
                f"""SELECT t.rowid, t.id, {snippet} FROM {fts} JOIN {table} t ON t.rowid = {fts}.rowid
                WHERE {fts} MATCH %s AND {fts}.rowid IN ({", ".join(["%s"] * len(rids))})""",
                [match, *rids],
            )
            found.update({(kind, rid): (uuid.UUID(str(pk)), text) for rid, pk, text in cursor.fetchall()})
    page = []
    for kind, rid, score, _ in rows:
        if (kind, rid) in found:  # else deleted meanwhile
            pk, text = found[(kind, rid)]
            page.append((kind, pk, -float(score), text))
    return SearchPage(total=total, hits=_search_hits(page))


def _search_hits(page: list[tuple[str, uuid.UUID, float, str]]) -> list[SearchHit]:
    """The hits of a page of (kind "m" or "c", id, rank, raw snippet), in its order, with their details."""
    messages = {
        row["pk"]: row
        for row in Message.objects.filter(pk__in=[pk for kind, pk, _, _ in page if kind == "m"]).values(
            "pk", "conversation_id", "conversation__title", "role", "created_at"
        )
    }
    titles = {
        row["pk"]: row
        for row in Conversation.objects.filter(pk__in=[pk for kind, pk, _, _ in page if kind == "c"]).values(
            "pk", "title", "created_at"
        )
    }
    hits = []
    for kind, pk, rank, snippet in page:
        if kind == "m" and pk in messages:
            message = messages[pk]
            hits.append(
                SearchHit(
                    conversation_id=message["conversation_id"],
                    title=message["conversation__title"],
                    message_id=pk,
                    role=message["role"],
                    snippet=fulltext.snippet_html(snippet),
                    create_time=message["created_at"],
                    rank=rank,
                )
            )
        elif kind == "c" and pk in titles:
            conversation = titles[pk]
            hits.append(
                SearchHit(
                    conversation_id=pk,
                    title=conversation["title"],
                    message_id=None,
                    role=None,
                    snippet=fulltext.snippet_html(snippet),
                    create_time=conversation["created_at"],
                    rank=rank,
                )
            )
    return hits


def _search_postgres(q: str, conversations: QuerySet[Conversation], limit: int, offset: int) -> SearchPage:
    from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchRank, SearchVectorField
    from django.db.models import CharField, F, Value

    query = SearchQuery(q, search_type="websearch", config=fulltext.PG_CONFIG)

    def document(model: type[Message] | type[Conversation]) -> RawSQL:
        # The stored generated column (migration 0006), which the models do not declare.
        return RawSQL(f'"{model._meta.db_table}"."search_vector"', [], output_field=SearchVectorField())

    def matching(queryset: QuerySet[Any], kind: str, model: type[Message] | type[Conversation]) -> QuerySet[Any]:
        return (
            queryset.alias(document=document(model))
            .filter(document=query)
            .annotate(kind=Value(kind, output_field=CharField()), rank=SearchRank(F("document"), query))
            .values("kind", "pk", "rank")
            .order_by()  # not the models' default ordering: the union is sorted by rank
        )

    messages = matching(Message.objects.filter(conversation__in=conversations), "m", Message)
    titles = matching(conversations, "c", Conversation)
    ranked = messages.union(titles, all=True)
    total = ranked.count()
    rows = list(ranked.order_by("-rank", "kind", "pk")[offset : offset + limit]) if total > offset else []
    headlines: dict[tuple[str, uuid.UUID], str] = {}
    for kind, model, column in (("m", Message, "content"), ("c", Conversation, "title")):
        ids = [row["pk"] for row in rows if row["kind"] == kind]
        if ids:
            headline = SearchHeadline(
                column,
                query,
                config=fulltext.PG_CONFIG,
                start_sel=fulltext.MARK_START,
                stop_sel=fulltext.MARK_END,
                max_words=30,
                min_words=10,
            )
            for pk, text in model.objects.filter(pk__in=ids).annotate(headline=headline).values_list("pk", "headline"):
                headlines[(kind, pk)] = text
    page = [
        (row["kind"], row["pk"], float(row["rank"]), headlines[(row["kind"], row["pk"])])
        for row in rows
        if (row["kind"], row["pk"]) in headlines
    ]
    return SearchPage(total=total, hits=_search_hits(page))
