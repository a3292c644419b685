"""SQL query counts stay constant whatever the thread depth or the number of conversations."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations.models import Attachment, Conversation, Message

pytestmark = pytest.mark.django_db


def thread(owner, depth: int) -> Conversation:
    """A conversation whose current branch is `depth` messages deep, made directly in the database."""
    conversation = Conversation.objects.create(owner=owner, title=f"depth {depth}")
    start = timezone.now() - dt.timedelta(hours=1)
    messages, parent = [], None
    for i in range(depth):
        role = Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT
        message = Message(
            conversation=conversation,
            parent=parent,
            role=role,
            depth=i,
            content=f"message {i}",
            created_at=start + dt.timedelta(seconds=i),
        )
        messages.append(message)
        parent = message
    Message.objects.bulk_create(messages)
    conversation.current_node = parent
    conversation.save()
    return conversation


def thread_queries(queries: CaptureQueriesContext) -> int:
    """How many of the captured queries were not the key's usage being counted: that is one statement, or two
    (a locked read first) for the key's first reply in this process or the first of a new minute, whatever
    the thread; the key's lookup is counted."""

    def usage(sql: str) -> bool:  # its UPDATE, or its read of the key's windows (locked on PostgreSQL)
        return sql.startswith(('UPDATE "accounts_apikey"', 'SELECT "accounts_apikey"."budget_period"'))

    return sum(1 for query in queries.captured_queries if not usage(query["sql"]))


def count_queries(call) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = call()
    assert response.status_code in (200, 201, 204), response.content
    return thread_queries(queries)


def test_ask_costs_the_same_queries_at_depth_2_and_200(api, user, backend):
    shallow, deep = thread(user, 2), thread(user, 200)
    api.get("/conversations")  # the key's first use writes last_used_at once; keep it out of the counts

    shallow_count = count_queries(lambda: api.post(f"/conversations/{shallow.pk}/ask", {"prompt": "hi"}))
    deep_count = count_queries(lambda: api.post(f"/conversations/{deep.pk}/ask", {"prompt": "hi"}))

    assert shallow_count == deep_count
    assert len(backend.requests[-1]["messages"]) == 201  # the whole branch was still sent


def test_ask_with_parent_id_costs_the_same_queries_at_any_depth(api, user, backend):
    shallow, deep = thread(user, 2), thread(user, 200)
    api.get("/conversations")
    shallow_parent = shallow.messages.order_by("created_at")[0]
    deep_parent = deep.messages.order_by("created_at")[150]

    shallow_count = count_queries(
        lambda: api.post(f"/conversations/{shallow.pk}/ask", {"prompt": "hi", "parent_id": str(shallow_parent.pk)})
    )
    deep_count = count_queries(
        lambda: api.post(f"/conversations/{deep.pk}/ask", {"prompt": "hi", "parent_id": str(deep_parent.pk)})
    )
    assert shallow_count == deep_count
    assert len(backend.requests[-1]["messages"]) == 152


def test_reading_a_branch_costs_the_same_queries_at_any_depth(api, user):
    shallow, deep = thread(user, 2), thread(user, 200)
    api.get("/conversations")
    assert count_queries(lambda: api.get(f"/conversations/{shallow.pk}/messages")) == count_queries(
        lambda: api.get(f"/conversations/{deep.pk}/messages")
    )
    assert len(api.get(f"/conversations/{deep.pk}/messages").json()) == 200
    assert count_queries(lambda: api.get(f"/conversations/{shallow.pk}")) == count_queries(
        lambda: api.get(f"/conversations/{deep.pk}")
    )


def test_regenerate_and_delete_cost_the_same_queries_at_any_depth(api, user, backend):
    shallow, deep = thread(user, 2), thread(user, 200)
    api.get("/conversations")
    counts = []
    for conversation in (shallow, deep):
        leaf = conversation.current_node
        counts.append(
            count_queries(lambda c=conversation, m=leaf: api.post(f"/conversations/{c.pk}/messages/{m.pk}/regenerate"))
        )
    assert counts[0] == counts[1]
    roots = [c.messages.get(parent=None) for c in (shallow, deep)]
    delete_counts = [
        count_queries(lambda c=c, r=r: api.delete(f"/conversations/{c.pk}/messages/{r.pk}"))
        for c, r in zip((shallow, deep), roots, strict=True)
    ]
    assert delete_counts[0] == delete_counts[1]
    assert not deep.messages.exists()


def test_listing_conversations_costs_a_constant_number_of_queries(api, user):
    thread(user, 4)
    api.get("/conversations")
    few = count_queries(lambda: api.get("/conversations", {"limit": 50}))
    for _ in range(49):
        thread(user, 4)
    many = count_queries(lambda: api.get("/conversations", {"limit": 50}))
    assert few == many
    assert len(api.get("/conversations", {"limit": 50}).json()) == 50


def test_messages_with_attachments_cost_the_same_queries_as_without(api, user):
    plain, illustrated = thread(user, 200), thread(user, 200)
    Attachment.objects.bulk_create(
        Attachment(
            message=message,
            conversation=illustrated,
            kind="image",
            content_type="image/png",
            size=10,
            source_text="a cat",
            file=f"attachments/{message.pk}.png",
        )
        for message in illustrated.messages.filter(role=Message.Role.ASSISTANT)
    )
    api.get("/conversations")
    for path in ("", "/messages", "/messages?all=true"):
        assert count_queries(lambda p=path: api.get(f"/conversations/{plain.pk}{p}")) == count_queries(
            lambda p=path: api.get(f"/conversations/{illustrated.pk}{p}")
        )
    messages = api.get(f"/conversations/{illustrated.pk}/messages").json()
    assert sum(len(m["attachments"]) for m in messages) == 100


def test_a_page_of_v1_conversation_items_costs_the_same_queries_at_any_depth(api, user):
    shallow, deep = thread(user, 3), thread(user, 300)
    api.get("/conversations")

    def page(conversation: Conversation, **query: str) -> int:
        return count_queries(lambda: api.get(f"/v1/conversations/{conversation.pk}/items", query))

    assert page(shallow) == page(deep)
    deep_leaf = deep.current_node
    assert deep_leaf is not None and deep_leaf.parent_id is not None
    after = f"msg_{deep_leaf.parent_id.hex}"
    assert shallow.current_node_id is not None
    assert page(shallow, limit="1", after=f"msg_{shallow.current_node_id.hex}") == page(deep, limit="1", after=after)
    listed = api.get(f"/v1/conversations/{deep.pk}/items", {"limit": "2", "after": after}).json()
    assert [item["content"][0]["text"] for item in listed["data"]] == ["message 297", "message 296"]
    assert listed["has_more"] is True


@pytest.mark.django_db(transaction=True)  # the service's own transactions, not savepoints inside a test's
def test_an_ask_costs_fourteen_queries_and_answers_what_a_reread_gives(api, user, backend):
    """Key; one transaction storing the prompt and the reply in progress (the conversation read locked, the
    parent with the context, prompt, reply, current node); one storing the answer (the conversation, which
    locks it, reply, the key's usage windows read and written). The answer is not read back: it must be
    what reading the reply gives."""
    conversation = thread(user, 4)
    api.get("/conversations")

    with CaptureQueriesContext(connection) as queries:
        response = api.post(f"/conversations/{conversation.pk}/ask", {"prompt": "hi"})
    assert response.status_code == 201, response.content

    statements = [query["sql"].split(" ", 1)[0] for query in queries.captured_queries]
    assert len(statements) == 14, "\n".join(query["sql"][:100] for query in queries.captured_queries)
    assert statements.count("COMMIT") == 2  # the prompt and the reply in progress are stored together
    reply = response.json()["response"]
    branch = api.get(f"/conversations/{conversation.pk}/messages").json()
    reread = next(message for message in branch if message["id"] == reply["id"])
    assert reread["parent_id"] == reply["request_id"]
    same = set(reread) - {"parent_id", "children"}
    assert {key: reply[key] for key in same} == {key: reread[key] for key in same}
    assert reread["usage"] and reread["create_time"]
    assert reply["message"] == "Reply 1 to: hi" and reply["status"] == "completed"
