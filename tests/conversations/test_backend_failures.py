"""When the model backend fails: the right status, the user's message kept, the conversation consistent."""

from __future__ import annotations

import socket
import time

import pytest

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def start(api):
    return api.post("/conversations/new", {"prompt": "first"}, format="json").json()["response"]


def assert_backend_error(response, status, code=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["type"] == "backend_error"
    if code:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(("backend_status", "status"), [(500, 502), (400, 502), (401, 502), (429, 503)])
def test_backend_http_errors_map_to_the_contract_and_keep_the_prompt(api, backend, backend_status, status):
    first = start(api)
    cid = first["conversation_id"]
    backend.fail(backend_status)

    response = api.post(f"/conversations/{cid}/ask", {"prompt": "lost?"}, format="json")

    error = assert_backend_error(response, status)
    kept = Message.objects.get(pk=error["details"]["message_id"])
    assert kept.content == "lost?"
    assert kept.role == "user"
    assert str(kept.parent_id) == first["id"]
    assert error["details"]["conversation_id"] == cid
    # The failed reply (no text) is kept, and gives current_node back to the prompt, to regenerate it.
    failed = Message.objects.get(parent=kept)
    assert (failed.role, failed.status, failed.finish_details, failed.content) == ("assistant", "failed", "error", "")
    assert api.get(f"/conversations/{cid}").json()["current_node"] == str(kept.pk)


def test_backend_429_passes_retry_after_on(api, backend):
    backend.fail(429, retry_after="7")
    response = api.post("/conversations/new", {"prompt": "hi"}, format="json")
    assert_backend_error(response, 503, "backend_rate_limited")
    assert response["Retry-After"] == "7"


def test_failed_new_keeps_the_conversation_and_prompt_so_it_can_be_regenerated(api, backend):
    backend.fail(500, times=1)
    response = api.post("/conversations/new", {"prompt": "keep me"}, format="json")
    error = assert_backend_error(response, 502)
    cid, message_id = error["details"]["conversation_id"], error["details"]["message_id"]
    assert Conversation.objects.filter(pk=cid).exists()

    retry = api.post(f"/conversations/{cid}/messages/{message_id}/regenerate", format="json")
    assert retry.status_code == 201, retry.json()
    reply = retry.json()["response"]
    assert reply["request_id"] == message_id
    messages = api.get(f"/conversations/{cid}/messages").json()
    assert [m["message"] for m in messages] == ["keep me", reply["message"]]


def test_backend_timeout_is_504(api, backend, settings):
    settings.CHATAPI_BACKEND_TIMEOUT = 0.3
    backend.hang(1.5)
    response = api.post("/conversations/new", {"prompt": "slow"}, format="json")
    assert_backend_error(response, 504, "backend_timeout")
    assert Message.objects.filter(content="slow").exists()


def test_the_timeout_is_the_deadline_of_the_whole_call_retries_included(api, backend, settings):
    settings.CHATAPI_BACKEND_TIMEOUT = 1.0
    settings.CHATAPI_BACKEND_MAX_RETRIES = 4
    backend.hang(0.6)  # each attempt answers 500 after 0.6 s: five attempts would take over 3 s
    backend.fail(500)
    started = time.monotonic()
    response = api.post("/conversations/new", {"prompt": "slow and failing"}, format="json")
    elapsed = time.monotonic() - started
    error = assert_backend_error(response, 504, "backend_timeout")
    assert "1 s" in error["message"]
    assert len(backend.requests) < 5  # the deadline came before the retries ran out
    assert elapsed < 2.5, elapsed  # not 5 × 0.6 s plus some 7 s of back-off between them
    assert Message.objects.filter(content="slow and failing").exists()


def test_refused_connection_is_503(api, backend, settings):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
    response = api.post("/conversations/new", {"prompt": "anyone?"}, format="json")
    assert_backend_error(response, 503, "backend_unavailable")
    assert Message.objects.filter(content="anyone?").exists()


def test_backend_not_knowing_the_model_is_502(api, backend, settings):
    settings.CHATAPI_MODELS = ["test-model", "missing-at-backend"]
    response = api.post("/conversations/new", {"prompt": "hi", "model": "missing-at-backend"}, format="json")
    assert_backend_error(response, 502, "backend_model_not_found")


def test_retries_are_made_as_configured(api, backend, settings):
    settings.CHATAPI_BACKEND_MAX_RETRIES = 2
    backend.fail(500, times=2)
    response = api.post("/conversations/new", {"prompt": "third time lucky"}, format="json")
    assert response.status_code == 201, response.content
    assert len(backend.requests) == 3


def test_no_backend_configured_for_a_model_is_503(api, settings):
    settings.CHATAPI_MODELS = ["echo", "gpt-4o-mini"]
    response = api.post("/conversations/new", {"prompt": "hi", "model": "gpt-4o-mini"}, format="json")
    assert_backend_error(response, 503, "backend_not_configured")


def test_regenerate_failure_keeps_everything_and_gives_current_node_to_the_prompt(api, backend):
    first = start(api)
    cid = first["conversation_id"]
    backend.fail(500)
    response = api.post(f"/conversations/{cid}/messages/{first['id']}/regenerate", format="json")
    error = assert_backend_error(response, 502)
    assert error["details"]["message_id"] == first["request_id"]
    messages = Message.objects.filter(conversation_id=cid)
    assert sorted(m.status for m in messages) == ["completed", "completed", "failed"]
    assert Message.objects.get(pk=first["id"]).content == first["message"]
    assert api.get(f"/conversations/{cid}").json()["current_node"] == first["request_id"]
