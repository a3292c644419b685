"""OpenAI's Responses API over the message tree, driven by the official `openai` SDK against the live service."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from accounts.models import APIKey
from accounts.services import api_key_create
from conversations.models import Conversation, Message
from tests.live import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

WORDS = "one two three four five six seven eight"


def _uuid(prefixed: str) -> str:
    return prefixed.split("_", 1)[1]


def test_a_response_is_stored_as_a_reply_in_a_new_conversation(sdk, backend, http):
    response = sdk.responses.create(
        model="test-model", input="Hi there", instructions="Be brief.", max_output_tokens=50
    )

    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "Reply 1 to: Hi there"
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.output[0].id.startswith("msg_")
    assert response.usage is not None and response.usage.total_tokens == response.usage.input_tokens + 5
    assert response.instructions == "Be brief."
    assert response.previous_response_id is None
    assert response.max_output_tokens == 50
    assert backend.last_messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    assert backend.requests[-1]["max_tokens"] == 50
    reply = Message.objects.get(pk=_uuid(response.id))
    assert reply.role == "assistant" and reply.content == "Reply 1 to: Hi there"
    assert response.conversation is not None and _uuid(response.conversation.id) == reply.conversation_id.hex
    messages = http.get(f"{http.base_url}/conversations/{reply.conversation_id}/messages", timeout=10).json()
    assert [m["author"]["role"] for m in messages] == ["system", "user", "assistant"]
    assert APIKey.objects.get(name="sdk").request_count == 1

    again = sdk.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.status == "completed"
    assert again.instructions == "Be brief."


def test_previous_response_id_chains_and_branches(sdk, backend, http):
    first = sdk.responses.create(model="test-model", input="first")
    second = sdk.responses.create(model="test-model", input="second", previous_response_id=first.id)
    sibling = sdk.responses.create(model="test-model", input="other", previous_response_id=first.id)

    assert second.previous_response_id == first.id
    assert backend.last_messages == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Reply 1 to: first"},
        {"role": "user", "content": "other"},
    ]
    assert second.conversation == sibling.conversation == first.conversation
    cid = _uuid(first.conversation.id)
    messages = http.get(f"{http.base_url}/conversations/{cid}/messages", params={"all": "true"}, timeout=10).json()
    by_id = {m["id"].replace("-", ""): m for m in messages}
    first_reply = by_id[_uuid(first.id)]
    assert len(first_reply["children"]) == 2  # two branches from it
    detail = http.get(f"{http.base_url}/conversations/{cid}", timeout=10).json()
    assert detail["current_node"].replace("-", "") == _uuid(sibling.id)

    items = sdk.responses.input_items.list(second.id)
    assert [(i.role, i.content[0].text) for i in items.data] == [("user", "second"), ("user", "first")]
    asc = sdk.responses.input_items.list(second.id, order="asc", limit=1)
    assert [i.content[0].text for i in asc.data] == ["first"] and asc.has_more


def test_a_turn_in_a_conversation_continues_its_current_node(sdk, backend):
    first = sdk.responses.create(model="test-model", input="first")
    assert first.conversation is not None
    second = sdk.responses.create(model="test-model", input="next", conversation=first.conversation.id)
    assert second.previous_response_id == first.id
    assert [m["content"] for m in backend.last_messages] == ["first", "Reply 1 to: first", "next"]
    third = sdk.responses.create(model="test-model", input="third", conversation={"id": first.conversation.id})
    assert third.previous_response_id == second.id


def test_store_false_stores_nothing(sdk, backend):
    response = sdk.responses.create(model="test-model", input="Hi", store=False)
    assert response.output_text == "Reply 1 to: Hi" and response.status == "completed"
    assert Conversation.objects.count() == 0 and Message.objects.count() == 0
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)
    streamed = list(sdk.responses.create(model="test-model", input="Hi", store=False, stream=True))
    assert "".join(e.delta for e in streamed if e.type == "response.output_text.delta") == "Reply 2 to: Hi"
    assert [e.sequence_number for e in streamed] == list(range(len(streamed)))
    assert Message.objects.count() == 0


def test_streaming_sends_openais_typed_events_numbered_one_by_one(sdk, backend):
    backend.reply_with(WORDS)
    events = list(sdk.responses.create(model="test-model", input="count", stream=True))

    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == WORDS
    final = events[-1].response
    assert final.status == "completed" and final.output_text == WORDS
    assert Message.objects.get(pk=_uuid(final.id)).content == WORDS
    assert final.model_dump() == sdk.responses.retrieve(final.id).model_dump()  # the stored response, as it is


def test_a_stream_resumes_after_any_sequence_number(sdk, backend):
    backend.reply_with(WORDS)
    events = list(sdk.responses.create(model="test-model", input="count", stream=True))
    rid = events[0].response.id
    for n in (0, 3, 5, len(events) - 4, len(events) - 2):
        rest = list(sdk.responses.retrieve(rid, stream=True, starting_after=n))
        assert [e.sequence_number for e in rest] == list(range(n + 1, len(events)))
        assert [e.type for e in rest] == [e.type for e in events[n + 1 :]]
    whole = list(sdk.responses.retrieve(rid, stream=True))
    assert [e.type for e in whole] == [e.type for e in events]


def test_background_answers_at_once_and_is_polled_resumed_and_cancelled(sdk, backend):
    backend.hold()
    response = sdk.responses.create(model="test-model", input="slow", background=True)
    assert response.status == "in_progress" and response.background
    assert sdk.responses.retrieve(response.id).status == "in_progress"

    cancelled = sdk.responses.cancel(response.id)
    assert cancelled.status == "cancelled"
    assert Message.objects.get(pk=_uuid(response.id)).status == "cancelled"
    assert sdk.responses.cancel(response.id).status == "cancelled"  # idempotent
    backend.release()

    done = sdk.responses.create(model="test-model", input="quick", background=True)
    assert wait_until(lambda: sdk.responses.retrieve(done.id).status == "completed")
    events = list(sdk.responses.retrieve(done.id, stream=True, starting_after=2))
    assert events[0].sequence_number == 3 and events[-1].type == "response.completed"


def test_a_background_stream_can_be_followed_live(sdk, backend):
    backend.reply_with(WORDS)
    backend.stream_slowly(0.03)
    stream = sdk.responses.create(model="test-model", input="count", stream=True, background=True)
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) > 5:
            break
    stream.close()
    rid = seen[0].response.id
    rest = list(sdk.responses.retrieve(rid, stream=True, starting_after=seen[-1].sequence_number))
    allof = seen + rest
    assert [e.sequence_number for e in allof] == list(range(len(allof)))
    assert "".join(e.delta for e in allof if e.type == "response.output_text.delta") == WORDS


def test_delete_removes_the_response_and_its_subtree(sdk, backend):
    first = sdk.responses.create(model="test-model", input="first")
    second = sdk.responses.create(model="test-model", input="second", previous_response_id=first.id)
    sdk.responses.delete(first.id)
    assert not Message.objects.filter(pk__in=[_uuid(first.id), _uuid(second.id)]).exists()
    assert Message.objects.filter(role="user", content="first").exists()  # the prompt stays
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(second.id)


def test_another_users_response_is_not_found(sdk, other_sdk, backend):
    mine = sdk.responses.create(model="test-model", input="mine")
    for call in (
        lambda: other_sdk.responses.retrieve(mine.id),
        lambda: other_sdk.responses.delete(mine.id),
        lambda: other_sdk.responses.cancel(mine.id),
        lambda: other_sdk.responses.input_items.list(mine.id),
        lambda: other_sdk.responses.create(model="test-model", input="x", previous_response_id=mine.id),
        lambda: other_sdk.responses.create(model="test-model", input="x", conversation=mine.conversation.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert Message.objects.count() == 2


def test_unsupported_input_is_a_400_naming_the_item(sdk, backend):
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(
            model="test-model",
            input=[
                {"role": "user", "content": "look"},
                {"role": "user", "content": [{"type": "input_image", "image_url": "https://example.invalid/a.png"}]},
            ],
        )
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["param"] == "input[1].content[0].type"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(
            model="test-model",
            input=[
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"type": "function_call_output", "call_id": "c", "output": "{}"},
            ],
        )
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["param"] == "input[2].type"
    assert Message.objects.count() == 0


def test_truncation_disabled_refuses_a_branch_that_does_not_fit(sdk, backend, settings):
    settings.CHATAPI_MODEL_CONTEXT = {"*": 400}
    first = sdk.responses.create(model="test-model", input="word " * 150)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(
            model="test-model",
            input="word " * 150,
            previous_response_id=first.id,
            truncation="disabled",
            max_output_tokens=50,
        )
    assert bad.value.code == "context_length_exceeded"
    assert Message.objects.count() == 2  # nothing of the refused turn was stored
    fitted = sdk.responses.create(model="test-model", input="word " * 150, previous_response_id=first.id)
    assert fitted.status == "completed"
    assert len(backend.last_messages) == 1  # the earlier messages were left out


def test_a_backend_failure_is_the_sdks_error_and_a_failed_response(sdk, backend):
    backend.fail(500)
    with pytest.raises(openai.APIStatusError):
        sdk.responses.create(model="test-model", input="x")
    reply = Message.objects.get(role="assistant")
    assert sdk.responses.retrieve(f"resp_{reply.pk.hex}").status == "failed"
    events = list(sdk.responses.create(model="test-model", input="y", stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.error is not None
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_key_past_its_limit_gets_the_sdks_rate_limit_error_and_nothing_is_stored(user, live_url, backend):
    _, raw = api_key_create(user=user, limits={"rpm": 1})
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0, timeout=20)
    client.responses.create(model="test-model", input="first")
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="test-model", input="second")
    assert len(backend.requests) == 1
    assert not Message.objects.filter(content="second").exists()


def test_a_repeated_idempotency_key_gets_the_same_response_without_a_second_turn(sdk, backend):
    headers = {"Idempotency-Key": "resp-once"}
    first = sdk.responses.create(model="test-model", input="only once", extra_headers=headers)
    again = sdk.responses.create(model="test-model", input="only once", extra_headers=headers)
    assert again.id == first.id and again.output_text == first.output_text
    assert len(backend.requests) == 1
    assert Message.objects.filter(content="only once").count() == 1


def test_an_input_part_whose_type_is_not_a_string_is_a_400(sdk, backend, key, live_url):
    import requests

    body: dict[str, Any] = {
        "model": "test-model",
        "input": [{"type": "message", "role": "user", "content": [{"type": {}, "text": ""}]}],
    }
    response = requests.post(
        f"{live_url}/v1/responses", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 400  # (found by the fuzzer: it was a 500)
    assert response.json()["error"]["param"] == "input[0].content[0].type"
