"""Per-key limits, through the live ASGI server and the real `openai` SDK against it: a refused request is a
429 with Retry-After and OpenAI's x-ratelimit-* headers, stores nothing, and never reaches the backend."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import requests
from django.core.management import CommandError, call_command

from accounts.models import APIKey
from accounts.services import api_key_create, api_key_usage_record
from conversations.models import Conversation, Message
from tests.live import read_events, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HEADERS = {
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
}


def session_for(raw_key: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {raw_key}"
    return session


def test_past_rpm_a_request_gets_429_stores_nothing_and_never_reaches_the_backend(user, live_url, backend):
    _, raw = api_key_create(user=user, limits={"rpm": 2, "tpm": 100_000})
    session = session_for(raw)

    passed = [session.post(f"{live_url}/conversations/new", json={"prompt": f"q{i}"}, timeout=30) for i in range(2)]
    refused = session.post(f"{live_url}/conversations/new", json={"prompt": "one too many"}, timeout=30)

    assert [r.status_code for r in passed] == [201, 201]
    assert {h.lower() for h in passed[0].headers} >= HEADERS
    assert passed[0].headers["x-ratelimit-remaining-requests"] == "1"
    assert passed[1].headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert len(backend.requests) == 2
    assert Conversation.objects.count() == 2
    assert not Message.objects.filter(content="one too many").exists()


def test_max_parallel_refuses_a_second_reply_while_one_is_in_progress(user, live_url, backend):
    _, raw = api_key_create(user=user, limits={"max_parallel": 1})
    session = session_for(raw)
    backend.hold()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(session.post, f"{live_url}/conversations/new", json={"prompt": "slow"}, timeout=30)
        assert wait_until(lambda: backend.waiting == 1)
        second = session.post(f"{live_url}/api/ask", json={"content": "meanwhile"}, timeout=30)
        backend.release()
        assert first.result().status_code == 201
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "1"
    assert "in progress" in second.json()["error"]  # /api/ask: the error is a string
    # Once it ended, however it ended, it counts no more.
    assert session.post(f"{live_url}/api/ask", json={"content": "now"}, timeout=30).status_code == 200
    assert len(backend.requests) == 2


def test_at_max_parallel_1_a_client_may_ask_again_as_soon_as_it_has_its_answer(user, live_url, backend):
    # The slot is freed before the answer (or the stream's end) can reach the client, on every front door.
    _, raw = api_key_create(user=user, limits={"max_parallel": 1})
    session = session_for(raw)
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0)
    messages: Any = [{"role": "user", "content": "again"}]
    for _ in range(5):
        assert session.post(f"{live_url}/conversations/new", json={"prompt": "again"}, timeout=30).status_code == 201
        assert session.post(f"{live_url}/api/ask", json={"content": "again"}, timeout=30).status_code == 200
        streamed = session.post(f"{live_url}/conversations/new", json={"prompt": "again", "stream": True}, timeout=30)
        assert streamed.status_code == 200 and "event: completed" in streamed.text
        assert session.post(f"{live_url}/api/complete", json={"content": "again"}, timeout=30).text
        assert client.chat.completions.create(model="auto", messages=messages).choices
        assert list(client.chat.completions.create(model="auto", messages=messages, stream=True))
    assert len(backend.requests) == 30


def test_a_cancelled_generation_releases_its_slot(user, live_url, backend):
    _, raw = api_key_create(user=user, limits={"max_parallel": 1})
    session = session_for(raw)
    backend.reply_with(" ".join(f"w{i}" for i in range(200)))
    backend.stream_slowly(0.05)
    response = session.post(f"{live_url}/conversations/new", json={"prompt": "long", "stream": True}, stream=True)
    created = next(line for line in response.iter_lines() if line.startswith(b"data:"))
    import json

    data = json.loads(created[5:])
    url = f"{live_url}/conversations/{data['conversation_id']}/messages/{data['response_id']}/cancel"
    assert session.post(url, timeout=30).status_code == 200
    response.close()
    assert wait_until(
        lambda: session.post(f"{live_url}/api/ask", json={"content": "after"}, timeout=30).status_code == 200
    )


def test_a_spent_budget_is_insufficient_quota(user, live_url, backend):
    api_key, raw = api_key_create(user=user, limits={"budget_tokens": 10, "budget_period": "day"})
    api_key_usage_record(api_key_id=api_key.pk, prompt_tokens=6, completion_tokens=4)

    refused = session_for(raw).post(f"{live_url}/api/ask", json={"content": "more"}, timeout=30)

    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) <= 86_400
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "budget" in refused.json()["error"]
    assert backend.requests == []
    listed = session_for(raw).get(f"{live_url}/api/keys", timeout=30).json()[0]
    assert listed["limits"] == {
        "rpm": None,
        "tpm": None,
        "max_parallel": None,
        "budget_tokens": 10,
        "budget_period": "day",
    }
    assert listed["standing"]["budget_tokens_used"] == 10
    assert listed["standing"]["budget_resets_at"] is not None


def test_tokens_are_counted_when_the_reply_ends_and_tpm_refuses_past_them(user, live_url, backend):
    api_key, raw = api_key_create(user=user, limits={"tpm": 5})
    session = session_for(raw)

    first = session.post(f"{live_url}/conversations/new", json={"prompt": "a prompt of some length"}, timeout=30)
    assert first.status_code == 201
    api_key.refresh_from_db()
    assert api_key.tpm_used == first.json()["response"]["usage"]["total_tokens"] > 5
    refused = session.post(f"{live_url}/conversations/new", json={"prompt": "again"}, timeout=30)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"


def test_the_openai_sdk_raises_rate_limit_error_stateless_and_stateful(user, live_url, backend):
    _, raw = api_key_create(user=user, limits={"rpm": 1})
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "hi"}]

    raw_reply = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert raw_reply.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="auto", messages=messages, stream=True)
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["Retry-After"]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="auto", messages=messages, extra_headers={"X-Conversation-Id": "new"})
    assert len(backend.requests) == 1
    assert Conversation.objects.count() == 0


def test_a_stateless_stream_releases_its_slot_when_it_ends(user, live_url, backend):
    _, raw = api_key_create(user=user, limits={"max_parallel": 1})
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0)
    for _ in range(3):
        chunks = list(
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}], stream=True)
        )
        assert chunks


def test_a_key_without_limits_gets_no_ratelimit_headers(user, live_url, backend):
    _, raw = api_key_create(user=user)
    response = session_for(raw).post(f"{live_url}/api/ask", json={"content": "free"}, timeout=30)
    assert response.status_code == 200
    assert not any(name.lower().startswith("x-ratelimit") for name in response.headers)


# --- setting limits ---------------------------------------------------------------------------


def test_new_keys_get_the_server_defaults(user, settings):
    settings.CHATAPI_DEFAULT_RPM = 30
    settings.CHATAPI_DEFAULT_BUDGET_TOKENS = 1000
    settings.CHATAPI_DEFAULT_BUDGET_PERIOD = "week"
    api_key, _ = api_key_create(user=user)
    assert (api_key.rpm, api_key.tpm, api_key.budget_tokens, api_key.budget_period) == (30, None, 1000, "week")
    unlimited, _ = api_key_create(user=user, limits={"rpm": 0, "budget_tokens": 0})
    assert (unlimited.rpm, unlimited.budget_tokens) == (None, None)


def test_commands_set_and_change_limits(user, capsys):
    call_command("create_api_key", "alice", "--rpm", "10", "--budget-tokens", "500", "--budget-period", "day")
    api_key = APIKey.objects.get()
    assert (api_key.rpm, api_key.budget_tokens, api_key.budget_period) == (10, 500, "day")

    call_command("update_api_key", api_key.prefix, "--rpm", "0", "--max-parallel", "2")

    api_key.refresh_from_db()
    assert (api_key.rpm, api_key.max_parallel, api_key.budget_tokens) == (None, 2, 500)
    assert "max_parallel=2" in capsys.readouterr().out


def test_a_key_made_through_the_api_is_never_looser_than_its_maker(user, live_url):
    _, raw = api_key_create(user=user, limits={"rpm": 10, "budget_tokens": 1000, "budget_period": "month"})
    session = session_for(raw)

    looser = session.post(f"{live_url}/api/keys", json={"rpm": 20}, timeout=30)
    unlimited = session.post(f"{live_url}/api/keys", json={"rpm": 0}, timeout=30)
    other_period = session.post(f"{live_url}/api/keys", json={"budget_period": "day"}, timeout=30)
    made = session.post(f"{live_url}/api/keys", json={"rpm": 5, "max_parallel": 3}, timeout=30)

    assert looser.status_code == 400 and looser.json()["error"]["param"] == "rpm"
    assert unlimited.status_code == 400 and unlimited.json()["error"]["param"] == "rpm"
    assert other_period.status_code == 400 and other_period.json()["error"]["param"] == "budget_period"
    assert made.status_code == 201
    body = made.json()
    assert body["limits"] == {
        "rpm": 5,
        "tpm": None,
        "max_parallel": 3,
        "budget_tokens": 1000,
        "budget_period": "month",
    }
    assert body["tightened"] == ["budget_tokens", "budget_period"]


@pytest.mark.parametrize("flag", ["--rpm", "--tpm", "--max-parallel", "--budget-tokens"])
@pytest.mark.parametrize("command", ["create_api_key", "update_api_key"])
def test_a_limit_too_big_for_the_database_is_a_clear_command_error(user, command, flag):
    api_key, _ = api_key_create(user=user, limits={"rpm": 7})
    target = "alice" if command == "create_api_key" else api_key.prefix

    with pytest.raises(CommandError, match=rf"argument {flag}: {10**30} is not between 0 \(no limit\) and 2147483647"):
        call_command(command, target, flag, str(10**30))
    with pytest.raises(CommandError, match=rf"argument {flag}: -1 is not between 0"):
        call_command(command, target, flag, "-1")

    assert APIKey.objects.count() == 1
    api_key.refresh_from_db()
    assert api_key.rpm == 7


# --- x-ratelimit-* on every answer -------------------------------------------------------------

RESET = re.compile(r"^(\d+h)?(\d+m)?\d+s$")


def test_every_answer_to_a_limited_key_carries_its_ratelimit_headers(user, live_url, backend):
    _, raw = api_key_create(user=user, limits={"rpm": 5, "tpm": 100_000})
    session = session_for(raw)
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0)
    asked = session.post(f"{live_url}/conversations/new", json={"prompt": "one"}, timeout=30).json()["response"]
    cid, rid = asked["conversation_id"], asked["id"]
    streamed = session.post(
        f"{live_url}/conversations/{cid}/ask", json={"prompt": "two", "stream": True}, stream=True, timeout=30
    )
    list(read_events(streamed))
    chunks = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "three"}], stream=True
    )
    list(chunks.parse())

    answers: dict[str, Any] = {
        "streamed ask": streamed,
        "list": session.get(f"{live_url}/conversations", timeout=30),
        "detail": session.get(f"{live_url}/conversations/{cid}", timeout=30),
        "keys": session.get(f"{live_url}/api/keys", timeout=30),
        "fork": session.post(f"{live_url}/conversations/{cid}/fork", json={}, timeout=30),
        "a 404": session.get(f"{live_url}/conversations/{uuid.uuid4()}", timeout=30),
        "a 400": session.post(
            f"{live_url}/conversations/{cid}/ask", json={"prompt": "x", "parent_id": "no"}, timeout=30
        ),
        "resumed stream": session.get(f"{live_url}/conversations/{cid}/messages/{rid}/stream", timeout=30),
        "models (SDK)": client.models.with_raw_response.list(),
        "v1 stream (SDK)": chunks,
    }

    for what, answer in answers.items():
        headers = {name.lower(): value for name, value in answer.headers.items()}
        assert set(headers) >= HEADERS, what
        assert headers["x-ratelimit-limit-requests"] == "5", what
        assert headers["x-ratelimit-limit-tokens"] == "100000", what
        assert RESET.match(headers["x-ratelimit-reset-requests"]) and RESET.match(headers["x-ratelimit-reset-tokens"])
        # Three requests called the model this minute; the others are not counted, only shown.
        if what != "streamed ask":
            assert headers["x-ratelimit-remaining-requests"] == "2", what
    assert answers["streamed ask"].headers["x-ratelimit-remaining-requests"] == "3"
    assert int(answers["list"].headers["x-ratelimit-remaining-tokens"]) < 100_000  # two replies' tokens counted
    assert len(backend.requests) == 3


def test_an_idempotent_repeat_and_a_budget_only_key_get_the_headers_too(user, live_url, backend):
    _, raw = api_key_create(user=user, limits={"budget_tokens": 1000, "budget_period": "day"})
    session = session_for(raw)
    headers = {"Idempotency-Key": "again"}
    first = session.post(f"{live_url}/api/ask", json={"content": "x"}, headers=headers, timeout=30)
    again = session.post(f"{live_url}/api/ask", json={"content": "x"}, headers=headers, timeout=30)

    assert again.headers["Idempotent-Replayed"] == "true"
    listed = session.get(f"{live_url}/conversations", timeout=30)
    for answer in (first, again, listed):
        assert answer.headers["x-ratelimit-limit-tokens"] == "1000"
        assert RESET.match(answer.headers["x-ratelimit-reset-tokens"])
        assert "x-ratelimit-limit-requests" not in answer.headers  # no rpm: no requests headers
    api_key = APIKey.objects.get(lookup_id=raw.split("_")[1])
    assert int(listed.headers["x-ratelimit-remaining-tokens"]) == 1000 - api_key.budget_used < 1000
