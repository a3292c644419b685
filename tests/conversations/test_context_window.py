"""The model is sent the system prompt and the newest part of the branch that fits in its context window."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import selectors
from conversations.models import Conversation, Message
from tests.conversations.test_query_counts import thread_queries
from tests.ops.test_settings import run_check

pytestmark = pytest.mark.django_db


def long_branch(user, depth: int, *, tokens: int = 100, system_prompt: str = "") -> Conversation:
    """A conversation whose one branch is `depth` messages deep, each of `tokens` tokens (4 characters each)."""
    conversation = Conversation.objects.create(owner=user, title="long", system_prompt=system_prompt)
    start = timezone.now() - timedelta(days=1)
    messages: list[Message] = []
    for i in range(depth):
        messages.append(
            Message(
                conversation=conversation,
                parent=messages[-1] if messages else None,
                depth=i,
                role="user" if i % 2 == 0 else "assistant",
                content=f"m{i:05d} " + "x" * (tokens * 4 - 7),
                token_count=tokens,
                finish_details=None if i % 2 == 0 else "stop",
                created_at=start + timedelta(milliseconds=i),
            )
        )
    Message.objects.bulk_create(messages, batch_size=500)
    conversation.current_node = messages[-1]
    conversation.save(update_fields=["current_node"])
    return conversation


def test_the_context_is_the_newest_part_of_the_branch_that_fits(user):
    conversation = long_branch(user, 5000)
    leaf = conversation.current_node_id
    assert leaf is not None
    with CaptureQueriesContext(connection) as queries:
        path, left_out = selectors.message_context_get(conversation=conversation, leaf_id=leaf, budget=2000)
    assert len(queries) == 1
    assert len(path) == 20  # 20 × 100 tokens
    assert left_out == 4980
    assert [m.content[:6] for m in path] == [f"m{i:05d}" for i in range(4980, 5000)]


def test_an_ask_deep_in_a_long_branch_costs_what_one_near_its_root_does(api, backend, user, settings):
    settings.CHATAPI_MODEL_CONTEXT = {"*": 4096}
    shallow, deep = long_branch(user, 10), long_branch(user, 5000)
    api.get("/conversations")  # the key's first use of the minute is recorded: not part of what is compared
    counts = []
    for conversation in (shallow, deep):
        with CaptureQueriesContext(connection) as queries:
            response = api.post(f"/conversations/{conversation.pk}/ask", {"prompt": "and now?"}, format="json")
        assert response.status_code == 201, response.content
        counts.append(thread_queries(queries))
    assert counts[0] == counts[1]
    window = response.json()["context_window"]
    sent = backend.last_messages
    # 4,096 tokens less a quarter kept for the reply: 3,072, that is the new prompt and 30 earlier messages.
    assert window == {"messages": len(sent), "left_out": 5000 + 1 - len(sent)}
    assert len(sent) == 31
    assert sent[-1] == {"role": "user", "content": "and now?"}
    assert sent[0]["content"].startswith("m04970")


def test_a_prompt_that_leaves_no_room_for_its_parent_is_sent_alone(api, backend, user, settings):
    settings.CHATAPI_MODEL_CONTEXT = {"*": 1024}  # 768 tokens, a quarter kept for the reply
    conversation = long_branch(user, 10)
    prompt = "word " * 560  # 700 tokens: the parent's 100 do not fit beside it
    response = api.post(f"/conversations/{conversation.pk}/ask", {"prompt": prompt}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["context_window"] == {"messages": 1, "left_out": 10}
    assert backend.last_messages == [{"role": "user", "content": prompt}]
    prompt_row = Message.objects.get(pk=response.json()["response"]["request_id"])
    assert (prompt_row.parent_id, prompt_row.depth) == (conversation.current_node_id, 10)  # it follows the branch


def test_the_system_prompt_and_max_tokens_count_against_the_window(api, backend, user, settings):
    settings.CHATAPI_MODEL_CONTEXT = {"*": 4096, "test-model-2": 100_000}
    conversation = long_branch(user, 200, system_prompt="s" * 4000)  # 1,000 tokens
    response = api.post(f"/conversations/{conversation.pk}/ask", {"prompt": "hi"}, format="json")
    # 4,096 - 1,024 for the reply - 1,000 for the system prompt: the prompt and 20 earlier messages.
    assert response.json()["context_window"] == {"messages": 21, "left_out": 180}
    assert backend.last_messages[0] == {"role": "system", "content": "s" * 4000}
    bigger = api.post(f"/conversations/{conversation.pk}/ask", {"prompt": "hi", "model": "test-model-2"}, format="json")
    assert bigger.json()["context_window"]["left_out"] == 0


def test_a_prompt_too_long_for_the_window_is_a_400_and_stores_nothing(api, backend, settings):
    settings.CHATAPI_MODEL_CONTEXT = {"*": 1024}
    response = api.post("/conversations/new", {"prompt": "word " * 1000}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
    assert not Message.objects.exists()
    assert backend.requests == []


def test_stored_messages_know_their_depth_and_tokens(api, backend):
    reply = api.post("/conversations/new", {"prompt": "one two three four"}, format="json").json()["response"]
    prompt, answer = Message.objects.get(pk=reply["request_id"]), Message.objects.get(pk=reply["id"])
    assert (prompt.depth, prompt.token_count) == (0, 5)  # 18 characters: about 5 tokens
    assert (answer.depth, answer.token_count) == (1, answer.completion_tokens)


@pytest.mark.parametrize("value", ["gpt=lots", "gpt", "gpt=12", "=100000"])
def test_a_bad_model_context_setting_stops_start_up(value):
    result = run_check(CHATAPI_MODEL_CONTEXT=value)
    assert result.returncode != 0
    assert "CHATAPI_MODEL_CONTEXT" in result.stderr and "Traceback" not in result.stderr
