"""`POST /api/ask`: the older proxy's request and response, chained through `response_id`."""

from __future__ import annotations

import uuid

import pytest

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def test_ask_chained_over_three_turns(api, backend):
    first = api.post("/api/ask", {"content": "My name is Ada."}, format="json")
    assert first.status_code == 200, first.json()
    body = first.json()
    assert set(body) == {"id", "response_id", "conversation_id", "content", "error"}
    assert body["error"] == ""
    assert body["content"] == "Reply 1 to: My name is Ada."
    conversation_id = body["conversation_id"]

    second = api.post(
        "/api/ask",
        {"content": "I like tea.", "conversation_id": conversation_id, "parent_id": body["response_id"]},
        format="json",
    ).json()
    third = api.post(
        "/api/ask",
        {"content": "Who am I?", "conversation_id": conversation_id, "parent_id": second["response_id"]},
        format="json",
    ).json()

    assert [m["content"] for m in backend.last_messages] == [
        "My name is Ada.",
        body["content"],
        "I like tea.",
        second["content"],
        "Who am I?",
    ]
    assert Message.objects.get(pk=third["id"]).content == "Who am I?"
    assert Message.objects.get(pk=third["response_id"]).parent_id == uuid.UUID(third["id"])
    assert Conversation.objects.get(pk=conversation_id).origin == "ask"
    assert api.get(f"/conversations/{conversation_id}").json()["message_count"] == 6


def test_ask_from_an_earlier_response_branches(api, backend):
    first = api.post("/api/ask", {"content": "root"}, format="json").json()
    cid = first["conversation_id"]
    api.post("/api/ask", {"content": "a", "conversation_id": cid, "parent_id": first["response_id"]}, format="json")
    api.post("/api/ask", {"content": "b", "conversation_id": cid, "parent_id": first["response_id"]}, format="json")
    assert [m["content"] for m in backend.last_messages] == ["root", first["content"], "b"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"content": ""}, 400),
        ({"content": 5}, 400),
        ({"content": "x", "conversation_id": "nope"}, 400),
        ({"content": "x", "conversation_id": str(uuid.uuid4())}, 404),
    ],
)
def test_ask_errors_are_strings(api, backend, body, status):
    response = api.post("/api/ask", body, format="json")
    assert response.status_code == status
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_ask_backend_failure_keeps_the_prompt(api, backend):
    backend.fail(500)
    response = api.post("/api/ask", {"content": "kept"}, format="json")
    assert response.status_code == 502
    assert isinstance(response.json()["error"], str)
    assert Message.objects.filter(content="kept", role="user").exists()


def test_ask_in_another_users_conversation_is_404(api, other_api, backend):
    theirs = other_api.post("/api/ask", {"content": "private"}, format="json").json()
    response = api.post("/api/ask", {"content": "x", "conversation_id": theirs["conversation_id"]}, format="json")
    assert response.status_code == 404


def test_ask_with_an_unknown_parent_and_no_conversation_is_400_and_stores_nothing(api, backend):
    response = api.post("/api/ask", {"content": "x", "parent_id": str(uuid.uuid4())}, format="json")
    assert response.status_code == 400
    assert Conversation.objects.count() == 0


def test_ask_with_only_the_previous_response_id_continues_that_conversation(api, backend):
    first = api.post("/api/ask", {"content": "My name is Ada."}, format="json").json()
    second = api.post("/api/ask", {"content": "Who am I?", "parent_id": first["response_id"]}, format="json")
    assert second.status_code == 200, second.content
    assert second.json()["conversation_id"] == first["conversation_id"]
    assert [m["content"] for m in backend.last_messages] == [
        "My name is Ada.",
        "Reply 1 to: My name is Ada.",
        "Who am I?",
    ]


def test_ask_with_another_users_message_as_parent_is_400(api, other_api, backend):
    theirs = other_api.post("/api/ask", {"content": "private"}, format="json").json()
    response = api.post("/api/ask", {"content": "x", "parent_id": theirs["response_id"]}, format="json")
    assert response.status_code == 400
    assert Message.objects.filter(content="x").count() == 0
