"""Listing, pagination, deletion, and one user never seeing another's data."""

from __future__ import annotations

import uuid

import pytest

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def new(api, prompt, **extra):
    response = api.post("/conversations/new", {"prompt": prompt, **extra}, format="json")
    assert response.status_code == 201
    return response.json()["response"]


def test_list_is_newest_first_with_total_and_links(api, backend):
    ids = [new(api, f"chat {i}")["conversation_id"] for i in range(5)]

    response = api.get("/conversations", {"limit": 2})
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert [c["id"] for c in body] == ids[::-1][:2]
    assert response["X-Total-Count"] == "5"
    assert 'rel="next"' in response["Link"] and "offset=2" in response["Link"]
    assert 'rel="prev"' not in response["Link"]
    assert body[0]["mapping"] is None and body[0]["current_node"] is None
    assert body[0]["message_count"] == 2

    middle = api.get("/conversations", {"limit": 2, "offset": 2})
    assert [c["id"] for c in middle.json()] == ids[::-1][2:4]
    assert 'rel="next"' in middle["Link"] and 'rel="prev"' in middle["Link"]
    last = api.get("/conversations", {"limit": 2, "offset": 4})
    assert [c["id"] for c in last.json()] == [ids[0]]
    assert 'rel="next"' not in last["Link"]


def test_asking_moves_a_conversation_to_the_top(api, backend):
    first = new(api, "older")["conversation_id"]
    new(api, "newer")
    api.post(f"/conversations/{first}/ask", {"prompt": "bump"}, format="json")
    assert api.get("/conversations").json()[0]["id"] == first


def test_list_searches_titles_and_orders(api, backend):
    new(api, "x", title="Holiday in Rome")
    new(api, "x", title="Tax return")
    new(api, "x", title="ROME again")
    response = api.get("/conversations", {"q": "rome"})
    assert sorted(c["title"] for c in response.json()) == ["Holiday in Rome", "ROME again"]
    assert response["X-Total-Count"] == "2"
    titles = [c["title"] for c in api.get("/conversations", {"order": "title"}).json()]
    assert titles == ["Holiday in Rome", "ROME again", "Tax return"]


def test_empty_list(api):
    response = api.get("/conversations")
    assert response.json() == []
    assert response["X-Total-Count"] == "0"


def test_delete_conversation_takes_its_messages(api, backend):
    cid = new(api, "bye")["conversation_id"]
    keep = new(api, "stay")["conversation_id"]
    response = api.delete(f"/conversations/{cid}")
    assert response.status_code == 204
    assert response.content == b""
    assert api.get(f"/conversations/{cid}").status_code == 404
    assert not Message.objects.filter(conversation_id=cid).exists()
    assert api.get(f"/conversations/{keep}").status_code == 200


def test_other_user_gets_404_on_everything(api, other_api, backend):
    reply = new(api, "private")
    cid, mid = reply["conversation_id"], reply["id"]
    url = f"/conversations/{cid}"

    for response in [
        other_api.get(url),
        other_api.patch(url, {"title": "mine now"}, format="json"),
        other_api.delete(url),
        other_api.post(f"{url}/ask", {"prompt": "hi"}, format="json"),
        other_api.get(f"{url}/messages"),
        other_api.post(f"{url}/messages/{mid}/regenerate", format="json"),
        other_api.delete(f"{url}/messages/{mid}"),
        other_api.post(f"{url}/fork", format="json"),
    ]:
        assert response.status_code == 404, response.content
        assert response.json()["error"]["type"] == "not_found_error"
    assert other_api.get("/conversations").json() == []
    assert Message.objects.filter(conversation_id=cid).count() == 2
    assert Conversation.objects.get(pk=cid).title == "private"


def test_unknown_and_foreign_conversations_look_the_same(api, other_api, backend):
    cid = new(api, "private")["conversation_id"]
    foreign = other_api.get(f"/conversations/{cid}")
    unknown = other_api.get(f"/conversations/{uuid.uuid4()}")
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()


def test_delete_all_touches_only_the_callers_conversations(api, other_api, backend):
    new(api, "mine 1")
    new(api, "mine 2")
    theirs = new(other_api, "theirs")["conversation_id"]

    response = api.delete("/conversations/all")
    assert response.status_code == 204
    assert api.get("/conversations").json() == []
    assert [c["id"] for c in other_api.get("/conversations").json()] == [theirs]
    assert Message.objects.filter(conversation_id=theirs).count() == 2


def test_no_key_is_401_everywhere(client, backend):
    for method, url in [
        ("get", "/conversations"),
        ("post", "/conversations/new"),
        ("delete", "/conversations/all"),
        ("get", f"/conversations/{uuid.uuid4()}"),
    ]:
        response = getattr(client, method)(url)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["type"] == "authentication_error"
