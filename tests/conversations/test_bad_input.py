"""Bad input gets a clear 4xx in the contract's error shape, and writes nothing."""

from __future__ import annotations

import uuid

import pytest

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def assert_error(response, status, *, type="invalid_request_error", param=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param", "details"}
    assert error["type"] == type
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture
def conversation_id(api, backend):
    return api.post("/conversations/new", {"prompt": "hi"}, format="json").json()["response"]["conversation_id"]


@pytest.mark.parametrize(
    "body",
    [{}, {"prompt": ""}, {"prompt": "   \n"}, {"title": "no prompt"}],
    ids=["missing", "empty", "blank", "only-title"],
)
def test_missing_or_empty_prompt_is_400_and_stores_nothing(api, backend, body):
    error = assert_error(api.post("/conversations/new", body, format="json"), 400, param="prompt")
    assert "prompt" in error["details"] or error["param"] == "prompt"
    assert Conversation.objects.count() == 0
    assert backend.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": 42}, "prompt"),
        ({"prompt": ["a"]}, "prompt"),
        ({"prompt": {"text": "a"}}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": True}, "prompt"),
        ({"prompt": "ok", "title": 5}, "title"),
        ({"prompt": "ok", "stream": "maybe"}, "stream"),
        ({"prompt": "ok", "autocontinue": 3}, "autocontinue"),
        ({"prompt": "ok", "model": 7}, "model"),
        ({"prompt": "ok", "system_prompt": []}, "system_prompt"),
        ({"prompt": "a\x00b"}, "prompt"),
    ],
)
def test_wrong_types_are_400_with_the_field_named(api, backend, body, param):
    error = assert_error(api.post("/conversations/new", body, format="json"), 400, param=param)
    assert param in error["details"]
    assert Message.objects.count() == 0


def test_malformed_json_is_400(api, backend):
    response = api.post("/conversations/new", '{"prompt": "unterminated', content_type="application/json")
    error = assert_error(response, 400)
    assert error["code"] == "parse_error"


@pytest.mark.parametrize("payload", ['["a list"]', '"a string"', "42", "null"])
def test_json_that_is_not_an_object_is_400(api, backend, payload):
    assert_error(api.post("/conversations/new", payload, content_type="application/json"), 400)


def test_unsupported_content_type_is_415(api, backend):
    response = api.post("/conversations/new", "prompt: hi", content_type="text/yaml")
    assert_error(response, 415)


def test_unknown_model_is_400_param_model(api, backend):
    error = assert_error(
        api.post("/conversations/new", {"prompt": "hi", "model": "gpt-99"}, format="json"), 400, param="model"
    )
    assert "gpt-99" in error["message"]
    assert Conversation.objects.count() == 0


def test_unknown_model_on_ask_stores_nothing(api, conversation_id):
    before = Message.objects.count()
    response = api.post(f"/conversations/{conversation_id}/ask", {"prompt": "x", "model": "nope"}, format="json")
    assert_error(response, 400, param="model")
    assert Message.objects.count() == before


def test_unknown_model_in_patch_is_400(api, conversation_id):
    assert_error(api.patch(f"/conversations/{conversation_id}", {"model": "nope"}, format="json"), 400, param="model")


def test_non_uuid_ids_on_paths_are_404(api, conversation_id):
    assert_error(api.get("/conversations/not-a-uuid"), 404, type="not_found_error")
    assert_error(api.post("/conversations/123/ask", {"prompt": "x"}, format="json"), 404, type="not_found_error")
    assert_error(api.delete(f"/conversations/{conversation_id}/messages/xyz"), 404, type="not_found_error")
    response = api.post(f"/conversations/{conversation_id}/messages/xyz/regenerate", format="json")
    assert_error(response, 404, type="not_found_error")


def test_unknown_ids_on_paths_are_404(api, conversation_id):
    assert_error(api.get(f"/conversations/{uuid.uuid4()}"), 404, type="not_found_error")
    assert_error(api.delete(f"/conversations/{conversation_id}/messages/{uuid.uuid4()}"), 404, type="not_found_error")


def test_unknown_path_is_a_json_404(api):
    assert_error(api.get("/no/such/endpoint"), 404, type="not_found_error")


def test_non_uuid_ids_in_bodies_are_400(api, conversation_id):
    url = f"/conversations/{conversation_id}"
    assert_error(api.post(f"{url}/ask", {"prompt": "x", "parent_id": "nope"}, format="json"), 400, param="parent_id")
    assert_error(api.patch(url, {"current_node": "nope"}, format="json"), 400, param="current_node")
    assert_error(api.post(f"{url}/fork", {"message_id": "nope"}, format="json"), 400, param="message_id")
    assert_error(api.get(f"{url}/messages", {"leaf": "nope"}), 400, param="leaf")


def test_parent_id_from_another_conversation_is_400_and_stores_nothing(api, backend, conversation_id):
    other = api.post("/conversations/new", {"prompt": "other"}, format="json").json()["response"]
    before = Message.objects.count()
    response = api.post(
        f"/conversations/{conversation_id}/ask", {"prompt": "x", "parent_id": other["id"]}, format="json"
    )
    assert_error(response, 400, param="parent_id")
    assert Message.objects.count() == before


def test_parent_id_of_another_user_is_400(api, other_api, backend, conversation_id):
    theirs = other_api.post("/conversations/new", {"prompt": "secret"}, format="json").json()["response"]
    response = api.post(
        f"/conversations/{conversation_id}/ask", {"prompt": "x", "parent_id": theirs["id"]}, format="json"
    )
    assert_error(response, 400, param="parent_id")


def test_current_node_from_another_conversation_is_400(api, backend, conversation_id):
    other = api.post("/conversations/new", {"prompt": "other"}, format="json").json()["response"]
    response = api.patch(f"/conversations/{conversation_id}", {"current_node": other["id"]}, format="json")
    assert_error(response, 400, param="current_node")


def test_huge_body_is_413(api, backend, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = api.post("/conversations/new", {"prompt": "x" * 20_000}, format="json")
    error = assert_error(response, 413)
    assert error["code"] == "request_too_large"
    assert Conversation.objects.count() == 0


def test_bad_list_parameters_are_400(api):
    assert_error(api.get("/conversations", {"limit": "lots"}), 400, param="limit")
    assert_error(api.get("/conversations", {"limit": 0}), 400, param="limit")
    assert_error(api.get("/conversations", {"offset": -1}), 400, param="offset")
    assert_error(api.get("/conversations", {"order": "random"}), 400, param="order")


def test_bad_messages_query_is_400(api, conversation_id):
    assert_error(api.get(f"/conversations/{conversation_id}/messages", {"all": "perhaps"}), 400, param="all")


def test_wrong_method_is_405(api, conversation_id):
    assert_error(api.get("/conversations/new"), 405)
    assert_error(api.put(f"/conversations/{conversation_id}", {"title": "x"}, format="json"), 405)


def test_huge_offset_is_400(api):
    assert_error(api.get("/conversations", {"offset": 10**20}), 400, param="offset")


@pytest.mark.parametrize("value", [1, 0, "yes", "1"])
def test_booleans_are_true_or_false_only(api, backend, value):
    assert_error(api.post("/conversations/new", {"prompt": "x", "stream": value}, format="json"), 400, param="stream")


def test_a_field_refused_by_the_service_layer_is_named_in_details(api, backend):
    cid = api.post("/conversations/new", {"prompt": "hi"}, format="json").json()["response"]["conversation_id"]
    other = api.post("/conversations/new", {"prompt": "elsewhere"}, format="json").json()["response"]["id"]
    response = api.post(f"/conversations/{cid}/ask", {"prompt": "x", "parent_id": other}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "parent_id"
    assert list(error["details"]) == ["parent_id"]
