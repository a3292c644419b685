"""OpenAI's Conversations API over the message tree, driven by the official `openai` SDK against the live service."""

from __future__ import annotations

import uuid

import openai
import pytest
import requests

from conversations.models import Conversation, Message
from tests.live import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _uuid(prefixed: str) -> str:
    return prefixed.split("_", 1)[1]


def _items(*texts: str) -> list[dict]:
    """Message items alternating user and assistant, the user's first."""
    return [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        if i % 2 == 0
        else {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
        for i, text in enumerate(texts)
    ]


def _texts(items) -> list[str]:
    return [item.content[0].text for item in items]


def test_a_conversation_is_created_retrieved_updated_and_deleted(sdk, http, backend):
    conversation = sdk.conversations.create(
        items=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a cat"}],
        metadata={"topic": "cats"},
    )
    assert conversation.object == "conversation" and conversation.id.startswith("conv_")
    assert conversation.metadata == {"topic": "cats"}
    assert abs(conversation.created_at - Conversation.objects.get().created_at.timestamp()) < 1

    again = sdk.conversations.retrieve(conversation.id)
    assert again.id == conversation.id and again.metadata == {"topic": "cats"}
    # The same conversation as under /conversations: its branch, its title from the first prompt.
    detail = http.get(f"{http.base_url}/conversations/{_uuid(conversation.id)}", timeout=10).json()
    assert detail["title"] == "Name a cat"
    messages = http.get(f"{http.base_url}/conversations/{_uuid(conversation.id)}/messages", timeout=10).json()
    assert [(m["author"]["role"], m["message"]) for m in messages] == [("system", "Be brief."), ("user", "Name a cat")]

    updated = sdk.conversations.update(conversation.id, metadata={"topic": "dogs", "lang": "en"})
    assert updated.metadata == {"topic": "dogs", "lang": "en"}
    assert sdk.conversations.update(conversation.id, metadata={"lang": "fr"}).metadata == {"lang": "fr"}  # replaced
    assert sdk.conversations.retrieve(conversation.id).metadata == {"lang": "fr"}
    assert sdk.conversations.update(conversation.id, metadata=None).metadata == {}

    deleted = sdk.conversations.delete(conversation.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (conversation.id, "conversation.deleted", True)
    assert Conversation.objects.count() == 0 and Message.objects.count() == 0
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.retrieve(conversation.id)
    assert backend.requests == []  # nothing here asks the model


def test_a_conversation_of_the_conversation_api_is_reachable_by_its_bare_id(sdk, http, backend):
    made = http.post(f"{http.base_url}/conversations/new", json={"prompt": "hello"}, timeout=10).json()
    cid = made["response"]["conversation_id"]
    conversation = sdk.conversations.retrieve(cid)
    assert conversation.id == f"conv_{cid.replace('-', '')}" and conversation.metadata == {}
    items = sdk.conversations.items.list(cid, order="asc")
    assert [(i.role, i.content[0].type) for i in items.data] == [("user", "input_text"), ("assistant", "output_text")]
    assert _texts(items.data) == ["hello", "Reply 1 to: hello"]


def test_items_are_the_current_branch_newest_first_paged_with_after(sdk, backend):
    conversation = sdk.conversations.create(items=_items("a", "b", "c", "d", "e"))

    newest = sdk.conversations.items.list(conversation.id)
    assert newest.object == "list" and not newest.has_more
    assert _texts(newest.data) == ["e", "d", "c", "b", "a"]
    assert [i.role for i in newest.data] == ["user", "assistant", "user", "assistant", "user"]
    assert newest.data[1].content[0].type == "output_text" and newest.data[1].status == "completed"
    assert newest.first_id == newest.data[0].id and newest.last_id == newest.data[-1].id

    page = sdk.conversations.items.list(conversation.id, limit=2)
    assert _texts(page.data) == ["e", "d"] and page.has_more
    following = sdk.conversations.items.list(conversation.id, limit=2, after=page.last_id)
    assert _texts(following.data) == ["c", "b"] and following.has_more
    last = sdk.conversations.items.list(conversation.id, limit=2, after=following.last_id)
    assert _texts(last.data) == ["a"] and not last.has_more
    # The SDK's auto-pagination follows `after` through every page.
    assert _texts(sdk.conversations.items.list(conversation.id, limit=2)) == ["e", "d", "c", "b", "a"]
    assert _texts(sdk.conversations.items.list(conversation.id, limit=2, order="asc")) == ["a", "b", "c", "d", "e"]
    asc = sdk.conversations.items.list(conversation.id, limit=3, order="asc", after=newest.data[4].id)
    assert _texts(asc.data) == ["b", "c", "d"] and asc.has_more

    item = sdk.conversations.items.retrieve(newest.data[2].id, conversation_id=conversation.id)
    assert item.id == newest.data[2].id and item.role == "user" and item.content[0].text == "c"
    empty = sdk.conversations.create()
    listed = sdk.conversations.items.list(empty.id)
    assert listed.data == [] and not listed.has_more


def test_a_response_in_a_conversation_continues_it_and_is_listed_as_its_items(sdk, backend):
    conversation = sdk.conversations.create(
        items=[{"role": "developer", "content": "Answer in French."}, *_items("Hi", "Bonjour")]
    )
    response = sdk.responses.create(model="test-model", input="How are you?", conversation=conversation.id)

    assert response.conversation is not None and response.conversation.id == conversation.id
    assert backend.last_messages == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "How are you?"},
    ]
    items = sdk.conversations.items.list(conversation.id)
    assert items.data[0].id == response.output[0].id == f"msg_{_uuid(response.id)}"
    assert _texts(items.data) == ["Reply 1 to: How are you?", "How are you?", "Bonjour", "Hi", "Answer in French."]
    assert items.data[-1].role == "system"
    reply = sdk.conversations.items.retrieve(response.output[0].id, conversation_id=conversation.id)
    assert reply.role == "assistant" and reply.content[0].text == response.output_text

    added = sdk.conversations.items.create(conversation.id, items=_items("And you?"))
    follow = sdk.responses.create(model="test-model", input="Tell me.", conversation={"id": conversation.id})
    assert follow.previous_response_id == response.id  # the turn is the added item and the new input
    assert [m["content"] for m in backend.last_messages][-3:] == ["Reply 1 to: How are you?", "And you?", "Tell me."]
    assert _texts(sdk.conversations.items.list(conversation.id, limit=3).data) == [
        "Reply 2 to: Tell me.",
        "Tell me.",
        "And you?",
    ]
    assert added.data[0].content[0].text == "And you?"


def test_added_items_continue_the_branch_without_asking_the_model(sdk, http, backend):
    conversation = sdk.conversations.create(items=_items("first"))
    added = sdk.conversations.items.create(conversation.id, items=_items("second", "third"))

    assert added.object == "list" and not added.has_more
    assert _texts(added.data) == ["second", "third"]
    assert [i.role for i in added.data] == ["user", "assistant"]
    assert added.first_id == added.data[0].id and added.last_id == added.data[1].id
    assert backend.requests == []
    detail = http.get(f"{http.base_url}/conversations/{_uuid(conversation.id)}", timeout=10).json()
    assert detail["current_node"].replace("-", "") == _uuid(added.last_id)
    third = Message.objects.get(pk=_uuid(added.last_id))
    path = [m.content for m in Message.objects.filter(conversation_id=third.conversation_id).order_by("depth")]
    assert third.depth == 2 and path == ["first", "second", "third"]
    assert third.parent_id == Message.objects.get(content="second").pk
    assert _texts(sdk.conversations.items.list(conversation.id, order="asc")) == ["first", "second", "third"]


def test_deleting_an_item_takes_it_out_and_keeps_what_follows(sdk, http, backend):
    conversation = sdk.conversations.create(items=_items("a", "b", "c", "d"))
    a, b, c, d = sdk.conversations.items.list(conversation.id, order="asc").data
    cid = _uuid(conversation.id)
    # A second branch from b: "edit and resend" of c through the conversation API.
    http.post(f"{http.base_url}/conversations/{cid}/ask", json={"prompt": "c2", "parent_id": _uuid(b.id)}, timeout=10)
    http.patch(f"{http.base_url}/conversations/{cid}", json={"current_node": _uuid(d.id)}, timeout=10)

    answer = sdk.conversations.items.delete(b.id, conversation_id=conversation.id)

    assert answer.object == "conversation" and answer.id == conversation.id
    assert _texts(sdk.conversations.items.list(conversation.id, order="asc")) == ["a", "c", "d"]
    assert not Message.objects.filter(pk=_uuid(b.id)).exists()
    moved = Message.objects.filter(parent_id=uuid.UUID(_uuid(a.id))).order_by("created_at")
    assert [m.content for m in moved] == ["c", "c2"]  # both branches kept, one level up
    assert [m.depth for m in moved] == [1, 1]
    assert Message.objects.get(pk=_uuid(d.id)).depth == 2
    assert Message.objects.get(content="Reply 1 to: c2").depth == 2
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.items.retrieve(b.id, conversation_id=conversation.id)

    sdk.conversations.items.delete(d.id, conversation_id=conversation.id)  # the current node: back to its parent
    assert _texts(sdk.conversations.items.list(conversation.id, order="asc")) == ["a", "c"]
    sdk.conversations.items.delete(a.id, conversation_id=conversation.id)  # a root: its children become roots
    assert _texts(sdk.conversations.items.list(conversation.id, order="asc")) == ["c"]
    assert Message.objects.get(pk=_uuid(c.id)).parent_id is None
    response = sdk.responses.create(model="test-model", input="more", conversation=conversation.id)
    assert [m["content"] for m in backend.last_messages] == ["c", "more"]
    assert response.status == "completed"


def test_deleting_a_reply_being_generated_stops_it_first(sdk, backend):
    conversation = sdk.conversations.create(items=_items("slow"))
    backend.hold()
    response = sdk.responses.create(model="test-model", input="go", conversation=conversation.id, background=True)
    assert response.status == "in_progress"
    # Nothing may be added on top of a reply still being written.
    for too_soon in (
        lambda: sdk.conversations.items.create(conversation.id, items=_items("too soon")),
        lambda: sdk.responses.create(model="test-model", input="too soon", conversation=conversation.id),
        lambda: sdk.responses.create(model="test-model", input="too soon", previous_response_id=response.id),
    ):
        with pytest.raises(openai.ConflictError) as conflict:
            too_soon()
        assert conflict.value.code == "reply_in_progress"
    assert not Message.objects.filter(content="too soon").exists()

    sdk.conversations.items.delete(response.output[0].id, conversation_id=conversation.id)
    backend.release()
    assert not Message.objects.filter(pk=_uuid(response.id)).exists()
    assert _texts(sdk.conversations.items.list(conversation.id)) == ["go", "slow"]
    assert wait_until(lambda: not Message.objects.filter(status="in_progress").exists())


def test_a_prompt_taken_out_under_its_reply_leaves_the_reply_a_valid_place_to_end(sdk, http, backend):
    conversation = sdk.conversations.create(items=_items("a"))
    backend.hold()
    response = sdk.responses.create(model="test-model", input="go", conversation=conversation.id, background=True)
    assert wait_until(lambda: backend.waiting == 1)
    prompt = sdk.conversations.items.list(conversation.id).data[1]
    assert prompt.content[0].text == "go"

    sdk.conversations.items.delete(prompt.id, conversation_id=conversation.id)  # the reply moves up under "a"
    backend.fail(500)
    backend.release()

    assert wait_until(lambda: sdk.responses.retrieve(response.id).status == "failed")
    # A reply that failed gives the current node back to its parent: "a" now, not the prompt taken out.
    detail = http.get(f"{http.base_url}/conversations/{_uuid(conversation.id)}", timeout=10).json()
    a = Message.objects.get(content="a")
    assert detail["current_node"] == str(a.pk)
    assert _texts(sdk.conversations.items.list(conversation.id)) == ["a"]


def test_another_users_conversation_and_items_are_not_found(sdk, other_sdk, backend):
    mine = sdk.conversations.create(items=_items("mine"), metadata={"k": "v"})
    item = sdk.conversations.items.list(mine.id).data[0]
    theirs = other_sdk.conversations.create(items=_items("theirs"))
    for call in (
        lambda: other_sdk.conversations.retrieve(mine.id),
        lambda: other_sdk.conversations.update(mine.id, metadata={"k": "stolen"}),
        lambda: other_sdk.conversations.delete(mine.id),
        lambda: other_sdk.conversations.items.list(mine.id),
        lambda: other_sdk.conversations.items.create(mine.id, items=_items("x")),
        lambda: other_sdk.conversations.items.retrieve(item.id, conversation_id=mine.id),
        lambda: other_sdk.conversations.items.delete(item.id, conversation_id=mine.id),
        # One's own item through another conversation's path is no item of it.
        lambda: other_sdk.conversations.items.retrieve(item.id, conversation_id=theirs.id),
        lambda: other_sdk.conversations.items.delete(item.id, conversation_id=theirs.id),
        lambda: sdk.conversations.retrieve("conv_not-an-id"),
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert isinstance(missing.value.body, dict) and missing.value.body["type"] == "not_found_error"
    assert sdk.conversations.retrieve(mine.id).metadata == {"k": "v"}
    assert _texts(sdk.conversations.items.list(mine.id)) == ["mine"]


def test_bad_input_is_a_400_naming_it_and_stores_nothing(sdk, key, live_url, backend):
    def refused(call, param: str) -> None:
        with pytest.raises(openai.BadRequestError) as bad:
            call()
        assert isinstance(bad.value.body, dict) and bad.value.body["param"] == param, bad.value.body

    refused(
        lambda: sdk.conversations.create(
            items=[*_items("a"), {"type": "function_call_output", "call_id": "c", "output": "{}"}]
        ),
        "items[1].type",
    )
    refused(
        lambda: sdk.conversations.create(
            items=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.invalid/a.png"}]}]
        ),
        "items[0].content[0].type",
    )
    refused(lambda: sdk.conversations.create(items=[{"role": "tool", "content": "x"}]), "items[0].role")
    refused(lambda: sdk.conversations.create(items=_items(*"x" * 21)), "items")
    refused(lambda: sdk.conversations.create(metadata={str(i): "v" for i in range(17)}), "metadata")
    refused(lambda: sdk.conversations.create(metadata={"k" * 65: "v"}), "metadata")
    refused(lambda: sdk.conversations.create(metadata={"k": "v" * 513}), "metadata")
    refused(lambda: sdk.conversations.create(metadata={"k": 1}), "metadata")
    refused(lambda: sdk.responses.create(model="test-model", input="x", metadata={"k": "v" * 513}), "metadata")
    assert Conversation.objects.count() == 0

    conversation = sdk.conversations.create(items=_items("a"), metadata={"k": "v" * 512, "k" * 64: "v"})
    refused(lambda: sdk.conversations.items.create(conversation.id, items=[]), "items")
    refused(lambda: sdk.conversations.items.create(conversation.id, items=[{"type": "reasoning"}]), "items[0].type")
    refused(lambda: sdk.conversations.update(conversation.id, metadata={"k": ["v"]}), "metadata")
    refused(lambda: sdk.conversations.items.list(conversation.id, limit=0), "limit")
    refused(lambda: sdk.conversations.items.list(conversation.id, order="sideways"), "order")
    refused(lambda: sdk.conversations.items.list(conversation.id, after="msg_nope"), "after")
    other = sdk.conversations.create(items=_items("b"))
    elsewhere = sdk.conversations.items.list(other.id).data[0].id
    refused(lambda: sdk.conversations.items.list(conversation.id, after=elsewhere), "after")
    headers = {"Authorization": f"Bearer {key}"}
    for body in ([1, 2], "text", {"items": "a string"}):
        answer = requests.post(f"{live_url}/v1/conversations/{conversation.id}/items", json=body, headers=headers)
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
    update = requests.post(f"{live_url}/v1/conversations/{conversation.id}", json={}, headers=headers)
    assert update.status_code == 400 and update.json()["error"]["param"] == "metadata"
    assert Message.objects.filter(conversation_id=_uuid(conversation.id)).count() == 1
    assert sdk.conversations.retrieve(conversation.id).metadata == {"k": "v" * 512, "k" * 64: "v"}


def test_a_repeated_idempotency_key_makes_one_conversation_and_adds_items_once(sdk, backend):
    once = {"Idempotency-Key": "conv-once"}
    first = sdk.conversations.create(items=_items("hello"), metadata={"a": "b"}, extra_headers=once)
    again = sdk.conversations.create(items=_items("hello"), metadata={"a": "b"}, extra_headers=once)
    assert again.id == first.id and Conversation.objects.count() == 1
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.conversations.create(items=_items("other"), extra_headers=once)

    twice = {"Idempotency-Key": "items-once"}
    added = sdk.conversations.items.create(first.id, items=_items("more"), extra_headers=twice)
    repeat = sdk.conversations.items.create(first.id, items=_items("more"), extra_headers=twice)
    assert repeat.data[0].id == added.data[0].id
    assert _texts(sdk.conversations.items.list(first.id)) == ["more", "hello"]
