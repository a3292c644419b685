"""The OpenAI-compatible API, driven by the official `openai` SDK against the service under uvicorn."""

from __future__ import annotations

import openai
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import APIKey
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


def test_chat_completion_through_the_sdk_stores_nothing_but_counts_usage(sdk, backend, key):
    completion = sdk.chat.completions.create(
        model="test-model",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Reply 1 to: Hi there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 4 + 5  # words, as the fake counts
    assert backend.last_messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    assert Conversation.objects.count() == 0
    stored = APIKey.objects.get(name="sdk")
    assert (stored.request_count, stored.total_tokens) == (1, 9)


def test_parameters_are_passed_on_and_unknown_ones_do_not_crash(sdk, backend):
    sdk.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "x"}],
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        stop=["\n\n"],
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.1,
        user="end-user-1",
        response_format={"type": "json_object"},
        extra_body={"some_future_option": True},
    )
    sent = backend.requests[-1]
    assert sent["model"] == "test-model"  # auto: the default
    for name, value in {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["\n\n"],
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
        "user": "end-user-1",
        "response_format": {"type": "json_object"},
    }.items():
        assert sent[name] == value, name
    assert "some_future_option" not in sent


def test_streaming_through_the_sdk(sdk, backend):
    backend.reply_with("one two three four")
    chunks = list(
        sdk.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "count"}], stream=True)
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert all(chunk.usage is None for chunk in chunks)  # not asked for
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_streaming_with_include_usage_ends_with_a_usage_chunk(sdk, backend):
    backend.reply_with("one two three four")
    chunks = list(
        sdk.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_models_list_and_retrieve(sdk, backend):
    assert [m.id for m in sdk.models.list()] == ["test-model", "test-model-2"]
    assert sdk.models.retrieve("test-model-2").id == "test-model-2"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nope")


def test_echo_model_through_the_sdk_without_a_backend(sdk):
    completion = sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "offline?"}])
    assert "offline?" in completion.choices[0].message.content
    assert "echo" in completion.choices[0].message.content
    streamed = sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "hi" in "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)


def test_error_classes_are_the_sdks_own(sdk, backend, live_url):
    bad_key = openai.OpenAI(base_url=f"{live_url}/v1", api_key="ck_nope_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="test-model", messages=[])
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="test-model", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    backend.fail(429, times=1, retry_after="3")
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "3"
    backend.fail(500, times=1)
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502
    assert isinstance(failed.value.body, dict)
    assert set(failed.value.body) == {"message", "type", "param", "code"}
    backend.fail(400, times=1)
    with pytest.raises(openai.BadRequestError) as rejected:
        sdk.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
    assert rejected.value.code == "backend_rejected_request"


def test_malformed_json_is_a_bad_request(live_url, key):
    import requests

    response = requests.post(
        f"{live_url}/v1/chat/completions",
        data="{nope",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_stateful_mode_keeps_the_chat_across_three_turns(sdk, backend, api):
    first = sdk.chat.completions.with_raw_response.create(
        model="test-model",
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "My name is Ada."}],
        extra_headers={"X-Conversation-Id": "new"},
    )
    conversation_id = first.headers["x-conversation-id"]
    reply1 = first.parse().choices[0].message.content
    second = sdk.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "I like tea."}],
        extra_headers={"X-Conversation-Id": conversation_id},
    )
    third = sdk.chat.completions.with_raw_response.create(
        model="test-model",
        messages=[{"role": "user", "content": "What is my name?"}],
        extra_headers={"X-Conversation-Id": conversation_id},
    )
    assert third.headers["x-conversation-id"] == conversation_id
    assert backend.last_messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": reply1},
        {"role": "user", "content": "I like tea."},
        {"role": "assistant", "content": second.choices[0].message.content},
        {"role": "user", "content": "What is my name?"},
    ]
    listed = api.get("/conversations").json()
    assert [c["id"] for c in listed] == [conversation_id]
    assert listed[0]["message_count"] == 6
    messages = api.get(f"/conversations/{conversation_id}/messages").json()
    assert [m["author"]["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[-1]["message"] == third.parse().choices[0].message.content
    assert api.get(f"/conversations/{conversation_id}").json()["system_prompt"] == "Be kind."


def test_a_stateful_turn_of_several_messages_is_stored_in_order(sdk, backend, api):
    # A client that starts a kept chat from a history it already has sends it all in the first turn.
    backend.reply_with("Blue.")
    first = sdk.chat.completions.with_raw_response.create(
        model="test-model",
        messages=[
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Sky colour?"},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "And the sea?"},
        ],
        extra_headers={"X-Conversation-Id": "new"},
    )
    conversation_id = first.headers["x-conversation-id"]
    assert backend.last_messages == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Sky colour?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And the sea?"},
    ]
    messages = api.get(f"/conversations/{conversation_id}/messages").json()
    assert [(m["author"]["role"], m["message"]) for m in messages] == [
        ("user", "Sky colour?"),
        ("assistant", "Blue."),
        ("user", "And the sea?"),
        ("assistant", "Blue."),
    ]
    assert [m["finish_details"] for m in messages] == [None, "stop", None, "stop"]
    assert all(m["parent_id"] == p["id"] for p, m in zip(messages, messages[1:], strict=False))
    conversation = api.get(f"/conversations/{conversation_id}").json()
    assert conversation["system_prompt"] == "Answer in one word."
    assert conversation["title"] == "Sky colour?"


def test_a_long_history_sent_as_the_first_turn_is_stored_whole_in_a_few_statements(api):
    # An imported chat of 1,201 messages: stored in order, many rows to each INSERT, not one by one.
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(1201)]
    with CaptureQueriesContext(connection) as queries:
        response = api.post(
            "/v1/chat/completions",
            {"model": "echo", "messages": history},
            format="json",
            HTTP_X_CONVERSATION_ID="new",
        )
    assert response.status_code == 200, response.content
    table = connection.ops.quote_name(Message._meta.db_table)
    inserts = [q for q in queries if q["sql"].startswith(f"INSERT INTO {table}")]
    # The history in bulk_create's batches (as many rows as the database takes values in one), then the reply.
    per_batch = connection.ops.bulk_batch_size([f for f in Message._meta.concrete_fields], [Message()] * 1201)
    assert len(inserts) == -(-1201 // per_batch) + 1
    messages = api.get(f"/conversations/{response['X-Conversation-Id']}/messages").json()
    assert [m["message"] for m in messages[:-1]] == [m["content"] for m in history]
    assert all(m["parent_id"] == p["id"] for p, m in zip(messages, messages[1:], strict=False))


def test_stateful_streaming_stores_the_reply(sdk, backend):
    backend.reply_with("streamed and stored")
    stream = sdk.chat.completions.with_raw_response.create(
        model="test-model",
        messages=[{"role": "user", "content": "go"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Conversation-Id": "new"},
    )
    conversation_id = stream.headers["x-conversation-id"]
    chunks = list(stream.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed and stored"
    assert chunks[-1].usage is not None
    reply = Message.objects.get(conversation_id=conversation_id, role="assistant")
    assert reply.content == "streamed and stored"
    assert Conversation.objects.get(pk=conversation_id).current_node_id == reply.pk


def test_stateful_mode_with_an_unknown_or_foreign_conversation_is_not_found(sdk, backend, other_api):
    theirs = other_api.post("/conversations/new", {"prompt": "private"}, format="json").json()["response"]
    for conversation_id in ["0b5d6a8e-5d0b-4f3c-9d7e-2f1e9b6c1a00", theirs["conversation_id"], "not-an-id"]:
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(
                model="test-model",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"X-Conversation-Id": conversation_id},
            )
    assert Message.objects.filter(conversation_id=theirs["conversation_id"]).count() == 2


def test_usage_is_visible_per_key(sdk, backend, key, live_url):
    import requests

    sdk.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "one two"}])
    keys = requests.get(f"{live_url}/api/keys", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    usage = next(k["usage"] for k in keys if k["name"] == "sdk")
    assert usage["requests"] == 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": ["user"], "content": "x"}, "messages[0].role"),
        ({"role": "user", "content": "a\u0000b"}, "messages[0].content"),
        ({"role": "user", "content": "\ud800"}, "messages[0].content"),
        ({"role": "user", "content": [{"type": "text", "text": "a\u0000"}]}, "messages[0].content"),
        ({"role": "user", "content": 5}, "messages[0].content"),
    ],
)
def test_bad_messages_are_400_and_store_nothing(live_url, key, backend, message, param):
    import json

    import requests

    for conversation in (None, "new"):
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if conversation:
            headers["X-Conversation-Id"] = conversation
        body = json.dumps({"model": "test-model", "messages": [message]}, ensure_ascii=True)
        response = requests.post(f"{live_url}/v1/chat/completions", data=body, headers=headers, timeout=10)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    assert Conversation.objects.count() == 0
    assert backend.requests == []


def test_stateful_backend_failure_still_names_the_conversation(sdk, backend):
    backend.fail(500)
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "kept"}],
            extra_headers={"X-Conversation-Id": "new"},
        )
    conversation_id = failed.value.response.headers["x-conversation-id"]
    prompt, reply = Message.objects.filter(conversation_id=conversation_id).order_by("created_at")
    assert (prompt.content, reply.status, reply.content) == ("kept", "failed", "")


def test_model_ids_with_slashes(sdk, backend, settings):
    settings.CHATAPI_MODELS = ["meta-llama/Llama-3-8B", "test-model"]
    assert sdk.models.retrieve("meta-llama/Llama-3-8B").id == "meta-llama/Llama-3-8B"


@pytest.mark.parametrize("stateful", [False, True])
def test_a_stream_failing_before_its_first_chunk_raises_the_sdks_error_class(sdk, backend, stateful):
    headers = {"X-Conversation-Id": "new"} if stateful else {}
    backend.fail(429, times=1, retry_after="2")
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in sdk.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "x"}], stream=True, extra_headers=headers
        ):
            pass
    assert limited.value.response.headers["retry-after"] == "2"
    backend.fail(500, times=1)
    with pytest.raises(openai.InternalServerError) as failed:
        for _ in sdk.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "y"}], stream=True, extra_headers=headers
        ):
            pass
    assert failed.value.status_code == 502
    if stateful:  # the turn is kept, and the answer says where
        assert Message.objects.filter(content="y", role="user").exists()
        assert failed.value.response.headers["x-conversation-id"]


def test_a_stored_turn_the_backend_refuses_still_names_its_conversation(sdk, backend):
    backend.fail(400)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "kept anyway"}],
            extra_headers={"X-Conversation-Id": "new"},
        )
    conversation_id = refused.value.response.headers["x-conversation-id"]
    assert Message.objects.filter(conversation_id=conversation_id, content="kept anyway").exists()
