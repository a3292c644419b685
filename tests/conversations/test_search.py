"""Full-text search of messages and titles: ranked, escaped snippets, web-search syntax, filters, paging,
ownership, and the index kept current by the database (deleted things gone, renamed ones found)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from conversations import fulltext
from conversations.fulltext import web_query_parse
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def conversation(owner, title: str, *texts: str, **fields) -> Conversation:
    """A conversation holding `texts` as one branch (user, assistant, user…), made directly in the database."""
    made = Conversation.objects.create(owner=owner, title=title, **fields)
    parent = None
    for i, text in enumerate(texts):
        role = Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT
        parent = Message.objects.create(conversation=made, parent=parent, role=role, content=text)
    if parent is not None:
        made.current_node = parent
        made.save(update_fields=["current_node"])
    return made


def search(api, q, **params):
    response = api.get("/conversations/search", {"q": q, **params})
    assert response.status_code == 200, response.content
    return response


def test_finds_messages_by_stem_with_marked_snippets(api, user):
    cats = conversation(user, "Pets", "I like running with my dog", "Dogs love to run.")
    conversation(user, "Taxes", "How do I file my tax return?", "Fill in the form.")

    response = search(api, "runs")
    hits = response.json()
    assert response["X-Total-Count"] == "2"
    assert {hit["conversation_id"] for hit in hits} == {str(cats.pk)}
    assert all("<mark>" in hit["snippet"] for hit in hits)
    first = hits[0]
    assert set(first) == {"conversation_id", "title", "message_id", "role", "snippet", "create_time", "rank"}
    assert first["title"] == "Pets" and first["role"] in ("user", "assistant")
    assert hits[0]["rank"] >= hits[1]["rank"]


def test_better_matches_rank_first(api, user):
    conversation(user, "a", "apple pie with banana")
    best = conversation(user, "b", "apple apple apple banana banana")
    hits = search(api, "apple banana").json()
    assert hits[0]["conversation_id"] == str(best.pk)


def test_snippets_are_html_escaped(api, user):
    conversation(user, "html", "<script>alert('x')</script> & the needle <b>here</b>")
    conversation(user, "maths", "if a < b then b > a, needle")
    snippets = [hit["snippet"] for hit in search(api, "needle").json()]
    assert len(snippets) == 2
    for snippet in snippets:
        assert "<mark>needle</mark>" in snippet
        # No markup but the marks (PostgreSQL leaves tags out of its snippets; SQLite keeps them, escaped).
        assert "<" not in re.sub("</?mark>", "", snippet) and ">" not in re.sub("</?mark>", "", snippet)
    assert any("&amp;" in snippet for snippet in snippets)
    assert any("&lt; b" in snippet for snippet in snippets)


def test_titles_are_found_with_a_null_message_id(api, user):
    trip = conversation(user, "Holiday in Rome", "where to eat")
    hits = search(api, "rome").json()
    assert len(hits) == 1
    assert hits[0]["message_id"] is None and hits[0]["role"] is None
    assert hits[0]["conversation_id"] == str(trip.pk)
    assert hits[0]["snippet"] == "Holiday in <mark>Rome</mark>"


def test_web_search_syntax(api, user):
    conversation(user, "1", "the quick brown fox")
    conversation(user, "2", "a brown quick dog")
    conversation(user, "3", "a lazy cat")

    def texts(q):
        return sorted(hit["snippet"].replace("<mark>", "").replace("</mark>", "") for hit in search(api, q).json())

    assert texts('"quick brown"') == ["the quick brown fox"]
    assert texts("quick -fox") == ["a brown quick dog"]
    assert texts("fox or cat") == ["a lazy cat", "the quick brown fox"]
    assert texts("fox OR cat") == ["a lazy cat", "the quick brown fox"]
    assert texts("quick brown") == ["a brown quick dog", "the quick brown fox"]


def test_only_the_callers_conversations_are_searched(api, other_api, user, other_user):
    conversation(other_user, "secret plans", "the secret is here")
    assert search(api, "secret").json() == []
    assert len(search(other_api, "secret").json()) == 2


def test_deleted_messages_and_conversations_are_never_found(api, user):
    gone = conversation(user, "to delete", "ephemeral words")
    kept = conversation(user, "keeper", "first words", "ephemeral reply")
    assert search(api, "ephemeral")["X-Total-Count"] == "2"

    assert api.delete(f"/conversations/{gone.pk}").status_code == 204
    assert [hit["conversation_id"] for hit in search(api, "ephemeral").json()] == [str(kept.pk)]
    reply = kept.messages.get(role="assistant")
    assert api.delete(f"/conversations/{kept.pk}/messages/{reply.pk}").status_code == 204
    assert search(api, "ephemeral").json() == []
    assert api.delete("/conversations/all").status_code == 204
    assert search(api, "words").json() == []


def test_renamed_titles_and_changed_texts_are_found(api, user):
    chat = conversation(user, "Old name", "hello")
    assert api.patch(f"/conversations/{chat.pk}", {"title": "Brand new name"}, format="json").status_code == 200
    assert search(api, "old").json() == []
    assert [hit["message_id"] for hit in search(api, "brand").json()] == [None]
    Message.objects.filter(conversation=chat).update(content="goodbye")
    assert search(api, "hello").json() == []
    assert len(search(api, "goodbye").json()) == 1


def test_filters_and_paging(api, user):
    archived = conversation(user, "a", "needle archived", archived=True)
    plain = [conversation(user, str(i), f"needle {i}") for i in range(5)]
    tagged = plain[0]
    api.patch(f"/conversations/{tagged.pk}", {"tags": ["work"]}, format="json")
    folder = api.post("/folders", {"name": "Work"}, format="json").json()
    api.patch(f"/conversations/{plain[1].pk}", {"folder_id": folder["id"]}, format="json")

    assert search(api, "needle")["X-Total-Count"] == "5"
    assert search(api, "needle", archived="all")["X-Total-Count"] == "6"
    assert [h["conversation_id"] for h in search(api, "needle", archived="true").json()] == [str(archived.pk)]
    assert [h["conversation_id"] for h in search(api, "needle", tag="work").json()] == [str(tagged.pk)]
    in_folder = search(api, "needle", folder_id=folder["id"]).json()
    assert [h["conversation_id"] for h in in_folder] == [str(plain[1].pk)]

    first = search(api, "needle", limit=2)
    assert len(first.json()) == 2 and 'rel="next"' in first["Link"]
    pages = [search(api, "needle", limit=2, offset=offset).json() for offset in (0, 2, 4)]
    ids = [hit["conversation_id"] for page in pages for hit in page]
    assert sorted(ids) == sorted(str(c.pk) for c in plain)
    beyond = search(api, "needle", limit=2, offset=10)
    assert beyond.json() == [] and beyond["X-Total-Count"] == "5"


@pytest.mark.parametrize(
    "q",
    [
        "-",
        '"',
        '"unterminated quote',
        "OR",
        "or or or",
        "-excluded",
        "* ^ : ( ) { } NEAR AND NOT",
        'col:umn "a" NEAR(b c) AND -',
        "x" * 1000,
        "word " * 199,
        "émoji 🙂 ünïcödé",
    ],
)
def test_odd_queries_give_results_or_nothing_never_an_error(api, user, q):
    conversation(user, "t", "a word and some text")
    response = api.get("/conversations/search", {"q": q})
    assert response.status_code == 200, response.content
    assert isinstance(response.json(), list)


@pytest.mark.parametrize("q", ["nul\x00byte", "x" * 10_000, ""])
def test_bad_queries_are_400(api, q):
    response = api.get("/conversations/search", {"q": q})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "q"


def test_missing_query_and_bad_filters_are_400(api):
    assert api.get("/conversations/search").status_code == 400
    assert api.get("/conversations/search", {"q": "x", "folder_id": "nope"}).status_code == 400
    assert api.get("/conversations/search", {"q": "x", "archived": "maybe"}).status_code == 400
    assert api.get("/conversations/search", {"q": "x", "limit": 0}).status_code == 400


def test_unknown_folder_filter_finds_nothing(api, user):
    conversation(user, "t", "needle")
    assert search(api, "needle", folder_id=str(uuid.uuid4())).json() == []


def test_query_parser_reads_websearch_syntax():
    parsed = web_query_parse('quick "brown fox" -lazy or cat')
    assert parsed.groups == [([["quick"], ["brown", "fox"]], [["lazy"]]), ([["cat"]], [])]
    assert parsed.fts5() == '(("quick" AND "brown fox") NOT ("lazy")) OR ("cat")'
    assert web_query_parse("-only -negative").empty
    assert web_query_parse('- or "').empty


def test_a_search_gives_at_most_max_results_the_best_of_the_newest_matches(api, user, monkeypatch):
    monkeypatch.setattr(fulltext, "MAX_RESULTS", 3)
    chat = Conversation.objects.create(owner=user, title="notes")
    start = timezone.now() - timedelta(hours=1)
    # The oldest is the best match, but only the 3 newest matches are ranked.
    texts = ["needle needle needle", "needle one", "needle two", "needle three", "needle four"]
    made = [
        Message.objects.create(conversation=chat, role="user", content=text, created_at=start + timedelta(minutes=i))
        for i, text in enumerate(texts)
    ]

    response = search(api, "needle")
    assert response["X-Total-Count"] == "3" and response["X-Total-Count-Capped"] == "true"
    assert {hit["message_id"] for hit in response.json()} == {str(m.pk) for m in made[2:]}
    last = search(api, "needle", limit=2, offset=2)
    assert len(last.json()) == 1 and 'rel="next"' not in last.get("Link", "")
    assert search(api, "needle", offset=3).json() == []

    only_best = search(api, '"needle needle"')  # one match: not capped, found though old
    assert only_best["X-Total-Count"] == "1" and "X-Total-Count-Capped" not in only_best
    assert [hit["message_id"] for hit in only_best.json()] == [str(made[0].pk)]


def test_titles_and_messages_are_capped_together(api, user, monkeypatch):
    monkeypatch.setattr(fulltext, "MAX_RESULTS", 3)
    conversation(user, "needle a", "needle", "needle again")
    conversation(user, "needle b")
    response = search(api, "needle")
    assert response["X-Total-Count"] == "3" and response["X-Total-Count-Capped"] == "true"
    exactly = search(api, "needle", tag="none-such")
    assert exactly["X-Total-Count"] == "0" and "X-Total-Count-Capped" not in exactly
