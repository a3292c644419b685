"""The OpenAPI schema says what the service does: the inputs it refuses as empty."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def response_content(schema: dict, path: str, status: int) -> dict:
    return schema["paths"][path]["post"]["responses"][str(status)]["content"]


def component(schema: dict, name: str) -> dict:
    return schema["components"]["schemas"][name]


def _empty_text_is_refused(api, path: str, field: str, body: dict) -> None:
    for empty in ("", " \n"):
        response = api.post(path, {**body, field: empty}, format="json")
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        if isinstance(error, str):  # the older proxies' flat error body
            assert error.startswith(field)
        else:
            assert error["param"] == field


@pytest.mark.parametrize(
    ("path", "name", "field"),
    [
        ("/conversations/new", "ConversationNewInput", "prompt"),
        ("/conversations/{conversation_id}/ask", "AskInput", "prompt"),
        ("/api/ask", "CompatAskInput", "content"),
        ("/api/complete", "CompleteInput", "content"),
    ],
)
def test_prompts_are_documented_and_validated_as_non_empty(schema, api, path, name, field):
    assert schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{name}"
    }
    assert field in component(schema, name)["required"]
    assert component(schema, name)["properties"][field]["type"] == "string"
    assert component(schema, name)["properties"][field]["minLength"] == 1

    conversation_id = api.post("/conversations", {}, format="json").json()["id"]
    _empty_text_is_refused(api, path.format(conversation_id=conversation_id), field, {})


def test_chat_messages_are_documented_and_validated_as_non_empty(schema, api):
    request = component(schema, "ChatCompletionRequest")
    assert "messages" in request["required"]
    assert request["properties"]["messages"]["type"] == "array"
    assert request["properties"]["messages"]["minItems"] == 1

    response = api.post("/v1/chat/completions", {"messages": []}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_chat_parameters_are_documented_with_the_ranges_the_view_checks(schema, api):
    properties = component(schema, "ChatCompletionRequest")["properties"]
    assert (properties["temperature"]["minimum"], properties["temperature"]["maximum"]) == (0, 2)
    assert properties["max_tokens"]["minimum"] == 1
    assert properties["stop"]["oneOf"][1]["maxItems"] == 4
    message = {"role": "user", "content": "hi"}
    for name, value in [("temperature", 2.5), ("max_tokens", 0), ("stop", ["a", "b", "c", "d", "e"])]:
        response = api.post("/v1/chat/completions", {"messages": [message], name: value}, format="json")
        assert response.status_code == 400
        assert response.json()["error"]["param"] == name
    assert api.post("/v1/chat/completions", {"messages": [message], "temperature": 2}, format="json").status_code == 200
