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


def conversation_get_for_user(*, user: User, conversation_id: object, lock: bool = False) -> Conversation:
    """The user's conversation; anything else (another user's, unknown, not a UUID) is a 404. With `lock`
    (inside a transaction) its row is locked until the transaction ends, as a service's write needs it."""
    pk = parse_uuid(conversation_id)
    conversations = Conversation.objects.select_for_update() if lock else Conversation.objects.all()
    try:
        if pk is not None:
            # get(), not first(): one row by its key needs no ORDER BY (which costs CPU to build).
            return conversations.get(pk=pk, owner=user)
    except Conversation.DoesNotExist:
        pass
    raise NotFound("Conversation not found.", code="conversation_not_found")


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
    rows = _context_rows(conversation=conversation, leaf_id=leaf_id, budget=budget)
    fitting = [m for m in rows if m.pk == leaf_id or m.context_total <= budget]  # type: ignore[attr-defined]
    return fitting, fitting[0].depth if fitting else 0


def message_with_context_get(
    *, conversation: Conversation, message_id: object, budget: int, param: str | None = None
) -> tuple[Message, list[Message]]:
    """A message of this conversation (a bad id as in message_get_in_conversation: a 400 naming `param`, else
    a 404) and the newest part of its branch root→it whose tokens fit in `budget` (none, when not even the
    message does), oldest first: what a prompt to follow it is sent with, for the budget the prompt leaves.

    One query, where message_get_in_conversation and then message_context_get would take two.
    """
    pk = parse_uuid(message_id)
    rows = _context_rows(conversation=conversation, leaf_id=pk, budget=budget) if pk else []
    message = next((m for m in rows if m.pk == pk), None)
    if message is None:
        if param is not None:
            reason = "is not a message of this conversation" if pk else "must be a message id (a UUID)"
            raise InvalidRequest(f"{param} {reason}.", code="invalid_message_id", param=param)
        raise NotFound("Message not found.", code="message_not_found")
    return message, [m for m in rows if m.context_total <= budget]  # type: ignore[attr-defined]


def _context_rows(*, conversation: Conversation, leaf_id: uuid.UUID, budget: int) -> list[Message]:
    """The branch root→`leaf_id`, walked up from the leaf while the tokens so far fit in `budget` (so with one
    row past them), oldest first; each row has `context_total`, the tokens from it down to the leaf."""
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
    return sorted(rows, key=lambda m: m.depth)


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
    total: int  # the results that can be paged through: at most fulltext.MAX_RESULTS
    hits: list[SearchHit]
    capped: bool = False  # more matched than fulltext.MAX_RESULTS: only the newest were ranked


# A match before its snippet: kind ("m" a message, "c" a title), its key (the rowid on SQLite, the id on
# PostgreSQL), its rank (higher is better).
Candidate = tuple[str, Any, float]


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

    Ranking needs every match read, so it is bounded: of the messages, and of the titles, the newest
    fulltext.MAX_RESULTS that match are ranked, and the best fulltext.MAX_RESULTS of them are the results (a
    word found in most messages would otherwise have each search read the whole history). A query with
    nothing to look for (only operators, only excluded words) finds nothing.
    """
    query = fulltext.web_query_parse(q)
    if query.empty:
        return SearchPage(total=0, hits=[])
    conversations = conversation_filter_for_user(user=user, archived=archived, tag=tag, folder_id=folder_id)
    if connection.vendor == "postgresql":
        candidates = _search_candidates_postgres(q, conversations)
    else:
        candidates = _search_candidates_sqlite(query.fts5(), conversations)
    ranked, capped = _search_ranked(candidates)
    page = ranked[offset : offset + limit]
    if connection.vendor == "postgresql":
        snippets = _search_snippets_postgres(q, page)
    else:
        snippets = _search_snippets_sqlite(query.fts5(), page)
    return SearchPage(total=len(ranked), hits=_search_hits(snippets), capped=capped)


def _search_ranked(candidates: list[list[Candidate]]) -> tuple[list[Candidate], bool]:
    """The best fulltext.MAX_RESULTS of the candidates of each kind (newest first, one more than
    MAX_RESULTS when there are more), best first, and whether more matched than are ranked."""
    capped = False
    ranked: list[Candidate] = []
    for newest in candidates:
        capped = capped or len(newest) > fulltext.MAX_RESULTS
        ranked += newest[: fulltext.MAX_RESULTS]
    ranked.sort(key=lambda row: (-row[2], row[0], str(row[1])))  # ties: any fixed order (str: UUIDs compare slowly)
    return ranked[: fulltext.MAX_RESULTS], capped or len(ranked) > fulltext.MAX_RESULTS


# SQLite: FTS5's MATCH, bm25() and snippet() are SQL the ORM cannot say.
_SQLITE_SEARCHED = (
    # kind, fts table, content table, the column that ties it to the user's conversations
    ("m", "conversations_message_fts", "conversations_message", "conversation_id"),
    ("c", "conversations_conversation_fts", "conversations_conversation", "id"),
)


def _search_candidates_sqlite(match: str, conversations: QuerySet[Conversation]) -> list[list[Candidate]]:
    # Newest first is the index's own order (rowids grow as rows are stored): FTS5 stops after the LIMIT,
    # so bm25() is computed for the candidates only.
    in_sql, in_params = conversations.values("pk").query.sql_with_params()
    candidates = []
    with connection.cursor() as cursor:
        for kind, fts, table, column in _SQLITE_SEARCHED:
            cursor.execute(
                f"""SELECT {fts}.rowid, bm25({fts}) FROM {fts} JOIN {table} t ON t.rowid = {fts}.rowid
                WHERE {fts} MATCH %s AND t.{column} IN ({in_sql}) ORDER BY {fts}.rowid DESC LIMIT %s""",
                [match, *in_params, fulltext.MAX_RESULTS + 1],
            )
            candidates.append([(kind, rid, -score) for rid, score in cursor.fetchall()])
    return candidates


def _search_snippets_sqlite(match: str, page: list[Candidate]) -> list[tuple[str, uuid.UUID, float, str]]:
    found: dict[tuple[str, int], tuple[uuid.UUID, str]] = {}
    with connection.cursor() as cursor:
        for kind, fts, table, _ in _SQLITE_SEARCHED:
            rids = [rid for row_kind, rid, _ in page if row_kind == kind]
            if not rids:
                continue
            snippet = f"snippet({fts}, 0, '{fulltext.MARK_START}', '{fulltext.MARK_END}', '…', 24)"
            cursor.execute(
                f"""SELECT t.rowid, t.id, {snippet} FROM {fts} JOIN {table} t ON t.rowid = {fts}.rowid
                WHERE {fts} MATCH %s AND {fts}.rowid IN ({", ".join(["%s"] * len(rids))})""",
                [match, *rids],
            )
            found.update({(kind, rid): (uuid.UUID(str(pk)), text) for rid, pk, text in cursor.fetchall()})
    page_found = []
    for kind, rid, rank in page:
        if (kind, rid) in found:  # else deleted meanwhile
            pk, text = found[(kind, rid)]
            page_found.append((kind, pk, rank, text))
    return page_found


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


def _search_document(model: type[Message] | type[Conversation]) -> RawSQL:
    from django.contrib.postgres.search import SearchVectorField

    # The stored generated column (migration 0007), which the models do not declare.
    return RawSQL(f'"{model._meta.db_table}"."search_vector"', [], output_field=SearchVectorField())


def _search_query_postgres(q: str) -> Any:
    from django.contrib.postgres.search import SearchQuery

    return SearchQuery(q, search_type="websearch", config=fulltext.PG_CONFIG)


def _search_candidates_postgres(q: str, conversations: QuerySet[Conversation]) -> list[list[Candidate]]:
    from django.contrib.postgres.search import SearchRank
    from django.db.models import F

    query = _search_query_postgres(q)
    candidates = []
    for kind, queryset in (
        ("m", Message.objects.filter(conversation__in=conversations)),
        ("c", conversations),
    ):
        # Newest first: walked in the (created_at, id) indexes of migration 0010 when most rows match, so
        # that ts_rank() reads only the candidates; the planner takes the GIN index when few do.
        newest = (
            queryset.alias(document=_search_document(queryset.model))
            .filter(document=query)
            .annotate(rank=SearchRank(F("document"), query))
            .order_by("-created_at", "-pk")
            .values_list("pk", "rank")[: fulltext.MAX_RESULTS + 1]
        )
        candidates.append([(kind, pk, float(rank)) for pk, rank in newest])
    return candidates


def _search_snippets_postgres(q: str, page: list[Candidate]) -> list[tuple[str, uuid.UUID, float, str]]:
    from django.contrib.postgres.search import SearchHeadline

    query = _search_query_postgres(q)
    headlines: dict[tuple[str, uuid.UUID], str] = {}
    for kind, model, column in (("m", Message, "content"), ("c", Conversation, "title")):
        ids = [pk for row_kind, pk, _ in page if row_kind == kind]
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
    return [(kind, pk, rank, headlines[(kind, pk)]) for kind, pk, rank in page if (kind, pk) in headlines]
