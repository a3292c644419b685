"""The OpenAPI schema says what the service does: streamed answers, and the inputs it refuses as empty."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

REPLY_PATHS = [
    "/conversations/new",
    "/conversations/{conversation_id}/ask",
    "/conversations/{conversation_id}/messages/{message_id}/regenerate",
]


@pytest.fixture
def schema(client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def response_content(schema: dict, path: str, status: int) -> dict:
    return schema["paths"][path]["post"]["responses"][str(status)]["content"]


def component(schema: dict, name: str) -> dict:
    return schema["components"]["schemas"][name]


@pytest.mark.parametrize("path", REPLY_PATHS)
def test_replies_are_documented_as_json_or_as_an_event_stream(schema, path):
    assert response_content(schema, path, 201) == {
        "application/json": {"schema": {"$ref": "#/components/schemas/AskOutput"}}
    }
    assert set(response_content(schema, path, 200)) == {"text/event-stream"}
    event = response_content(schema, path, 200)["text/event-stream"]["schema"]  # one event, as SSE parsers give it
    assert event["properties"]["event"]["enum"] == ["created", "delta", "completed", "error"]
    assert set(event["required"]) == {"id", "event", "data"}
    assert "409" in schema["paths"][path]["post"]["responses"]  # the prompt deleted while the reply was generated
    regenerate = schema["paths"][path]["post"]["responses"]["201"]["links"]["regenerate"]
    assert regenerate == {
        "operationId": "conversations_regenerate",
        "parameters": {
            "conversation_id": "$response.body#/response/conversation_id",
            "message_id": "$response.body#/response/id",
        },
    }
    description = schema["paths"][path]["post"]["responses"]["200"]["description"]
    assert all(event in description for event in ("created", "delta", "completed", "error"))


def test_chat_completions_are_documented_as_json_or_as_an_event_stream(schema):
    content = response_content(schema, "/v1/chat/completions", 200)
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionResponse"}
    assert "text/event-stream" in content
    assert "[DONE]" in schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["description"]
    assert "409" in schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "409" in schema["paths"]["/api/ask"]["post"]["responses"]


def test_complete_is_documented_as_streamed_plain_text_or_the_file_a_tool_made(schema):
    content = response_content(schema, "/api/complete", 200)
    assert set(content) == {"text/plain", "image/png", "image/jpeg", "image/webp", "image/gif", "audio/mpeg"}
    assert content["image/png"]["schema"] == {"type": "string", "format": "binary"}


def test_attachments_are_documented_as_files(schema):
    responses = schema["paths"]["/attachments/{attachment_id}"]["get"]["responses"]
    assert {"image/png", "audio/mpeg"} <= set(responses["200"]["content"])
    assert "404" in responses
    message = schema["components"]["schemas"]["MessageOutput"]["properties"]
    assert message["attachments"]["items"] == {"$ref": "#/components/schemas/AttachmentOutput"}


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


@pytest.mark.django_db(transaction=True)
def test_streamed_answers_go_out_with_a_documented_status_and_content_type(http):
    url = http.base_url
    schema = http.get(f"{url}/api/schema/?format=json").json()
    first = http.post(f"{url}/conversations/new", json={"prompt": "hi"}).json()["response"]
    cid, mid = first["conversation_id"], first["id"]
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    for path, address, body in [
        (REPLY_PATHS[0], "/conversations/new", {"prompt": "hi", "stream": True}),
        (REPLY_PATHS[1], f"/conversations/{cid}/ask", {"prompt": "hi", "stream": True}),
        (REPLY_PATHS[2], f"/conversations/{cid}/messages/{mid}/regenerate", {"stream": True}),
        ("/v1/chat/completions", "/v1/chat/completions", chat),
        ("/api/complete", "/api/complete", {"content": "hi"}),
    ]:
        response = http.post(f"{url}{address}", json=body, timeout=30)
        assert response.status_code == 200, (path, response.text)
        media_type = response.headers["Content-Type"].split(";")[0]
        assert media_type != "application/json", path
        documented = response_content(schema, path, 200)
        assert media_type in documented, path
        if media_type == "text/event-stream":
            names = [_event_name(block) for block in response.text.split("\n\n") if block.strip()]
            assert names, path
            assert set(names) <= set(documented[media_type]["schema"]["properties"]["event"]["enum"]), path


def _event_name(block: str) -> str:
    """The name an SSE parser gives the event in `block` ("message" when it has no `event:` line)."""
    fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
    return fields.get("event", "message")


def test_list_pagination_headers_are_documented(schema, api):
    headers = schema["paths"]["/conversations"]["get"]["responses"]["200"]["headers"]
    assert headers["X-Total-Count"] == {
        "schema": {"type": "integer"},
        "description": headers["X-Total-Count"]["description"],
        "required": True,
    }
    assert "Link" in headers
    for _ in range(2):
        api.post("/conversations", {}, format="json")
    response = api.get("/conversations?limit=1")
    assert response["X-Total-Count"] == "2"
    assert 'rel="next"' in response["Link"]


def test_export_and_import_are_documented_with_their_bodies(schema):
    export = schema["paths"]["/conversations/export"]["get"]["responses"]["200"]["content"]
    assert export["application/json"]["schema"]["type"] == "array"  # ChatGPT's conversations.json
    assert export["application/x-ndjson"]["schema"] == {"type": "string", "format": "binary"}
    one = schema["paths"]["/conversations/{conversation_id}/export"]["get"]["responses"]["200"]["content"]
    assert set(one) == {"application/json", "application/x-ndjson", "text/markdown"}
    body = schema["paths"]["/conversations/import"]["post"]["requestBody"]["content"]
    assert body["application/zip"]["schema"] == {"type": "string", "format": "binary"}
    assert "multipart/form-data" in body
    assert "413" in schema["paths"]["/conversations/import"]["post"]["responses"]
