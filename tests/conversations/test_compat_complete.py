"""`POST /api/complete`: plain text streamed as generated, continuing the caller's conversation."""

from __future__ import annotations

import pytest
import requests

from accounts.services import api_key_create
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def complete(user, live_url):
    headers = {"Authorization": f"Bearer {api_key_create(user=user)[1]}"}

    def post(body, **kwargs) -> requests.Response:
        return requests.post(f"{live_url}/api/complete", json=body, headers=headers, stream=True, timeout=30, **kwargs)

    return post


def test_complete_streams_plain_text_and_stores_the_exchange(complete, backend):
    backend.reply_with("The capital of France is Paris.")
    backend.stream_slowly(0.01)
    response = complete({"content": "Capital of France?"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    pieces = [piece for piece in response.iter_content(chunk_size=None, decode_unicode=True)]
    assert "".join(pieces) == "The capital of France is Paris."
    assert len(pieces) > 1  # arrived in pieces, as generated
    conversation = Conversation.objects.get()
    assert conversation.origin == "complete"
    assert [m.content for m in Message.objects.order_by("created_at")] == [
        "Capital of France?",
        "The capital of France is Paris.",
    ]


def test_complete_continues_its_latest_conversation(complete, backend, api):
    assert complete({"content": "first"}).text == "Reply 1 to: first"
    api.post("/conversations/new", {"prompt": "unrelated"}, format="json")
    assert complete({"content": "second"}).text == "Reply 3 to: second"  # the third backend call
    assert [m["content"] for m in backend.last_messages] == ["first", "Reply 1 to: first", "second"]
    assert Conversation.objects.filter(origin="complete").count() == 1


def test_complete_errors_are_strings(complete, live_url):
    response = complete({"content": ""})
    assert response.status_code == 400
    assert response.json() == {"error": "content must not be empty."}
    response = complete({"nothing": 1})
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)
    unauthenticated = requests.post(f"{live_url}/api/complete", json={"content": "hi"}, timeout=10)
    assert unauthenticated.status_code == 401
    assert isinstance(unauthenticated.json()["error"], str)


def test_complete_backend_failure_before_any_text_is_an_error_status_and_the_prompt_kept(complete, backend):
    backend.fail(500)
    response = complete({"content": "hello?"})
    assert response.status_code == 502
    assert response.json() == {"error": "The model backend answered with HTTP 500."}
    assert Message.objects.filter(role="user", content="hello?").exists()


def test_complete_backend_failure_after_some_text_ends_the_text_with_the_error(complete, backend):
    backend.reply_with("one two three four five six seven eight")
    backend.cut_streams_after(3)
    response = complete({"content": "count"})
    assert response.status_code == 200
    assert response.text.startswith("one two")
    assert response.text.endswith("[error: The model backend's stream was cut off before it ended.]\n")
    assert Message.objects.get(role="assistant").status == "interrupted"
