"""`Idempotency-Key` through the live ASGI server: a repeat gets the same answer with nothing done again."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import StringIO
from typing import Any

import openai
import pytest
import requests
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey, IdempotencyRecord
from accounts.services import api_key_create
from chatapi import idempotency
from conversations.models import Conversation, Message
from tests.live import Event, read_events, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def session_for(raw_key: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {raw_key}"
    return session


@pytest.fixture
def session(user) -> requests.Session:
    return session_for(api_key_create(user=user)[1])


def test_a_repeat_gets_the_same_answer_and_nothing_is_done_twice(session, live_url, backend):
    headers = {"Idempotency-Key": "ask-1"}
    first = session.post(f"{live_url}/conversations/new", json={"prompt": "once"}, headers=headers, timeout=30)
    again = session.post(f"{live_url}/conversations/new", json={"prompt": "once"}, headers=headers, timeout=30)

    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(backend.requests) == 1
    assert Message.objects.filter(role="user").count() == 1


def test_the_same_key_with_another_body_is_422(session, live_url, backend):
    headers = {"Idempotency-Key": "k"}
    assert session.post(f"{live_url}/api/ask", json={"content": "a"}, headers=headers).status_code == 200
    reused = session.post(f"{live_url}/api/ask", json={"content": "b"}, headers=headers)
    assert reused.status_code == 422
    assert "different request" in reused.json()["error"]
    assert len(backend.requests) == 1


def test_concurrent_duplicates_are_carried_out_exactly_once(session, live_url, backend):
    backend.hold()
    headers = {"Idempotency-Key": "dup"}

    def ask(_: int) -> requests.Response:
        return session.post(f"{live_url}/conversations/new", json={"prompt": "dup"}, headers=headers, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(ask, i) for i in range(8)]
        deadline = time.monotonic() + 15
        while sum(a.done() for a in answers) < 7 and time.monotonic() < deadline:
            time.sleep(0.02)
        backend.release()
        responses = [a.result() for a in answers]

    assert sorted(r.status_code for r in responses) == [201] + [409] * 7
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"idempotency_key_in_progress"}
    assert len(backend.requests) == 1
    assert Conversation.objects.count() == 1
    repeat = ask(0)
    assert repeat.status_code == 201
    assert repeat.json() == next(r.json() for r in responses if r.status_code == 201)


def test_a_streamed_original_is_repeated_as_its_replys_events_from_the_start(session, live_url, backend):
    headers = {"Idempotency-Key": "stream-1"}
    body = {"prompt": "stream it", "stream": True}
    first = [
        e
        for e in read_events(session.post(f"{live_url}/conversations/new", json=body, headers=headers, stream=True))
        if isinstance(e, Event)
    ]
    again = [
        e
        for e in read_events(session.post(f"{live_url}/conversations/new", json=body, headers=headers, stream=True))
        if isinstance(e, Event)
    ]

    assert [e.event for e in again][0] == "created" and again[-1].event == "completed"
    assert [(e.id, e.event, e.data) for e in again] == [(e.id, e.event, e.data) for e in first]
    assert len(backend.requests) == 1


def test_a_refused_request_is_not_kept_so_it_can_be_retried(session, live_url, backend):
    headers = {"Idempotency-Key": "retry-me"}
    bad = session.post(f"{live_url}/conversations/new", json={"prompt": ""}, headers=headers)
    good = session.post(f"{live_url}/conversations/new", json={"prompt": "fixed"}, headers=headers)
    assert (bad.status_code, good.status_code) == (400, 201)


def test_keys_are_per_api_key_and_bounded(user, live_url, backend):
    headers = {"Idempotency-Key": "shared"}
    for _ in range(2):
        other = session_for(api_key_create(user=user)[1])
        assert other.post(f"{live_url}/api/ask", json={"content": "x"}, headers=headers).status_code == 200
    assert len(backend.requests) == 2
    too_long = other.post(f"{live_url}/api/ask", json={"content": "x"}, headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 400


def test_a_repeated_key_creation_makes_one_key_and_never_keeps_it(session, live_url):
    headers = {"Idempotency-Key": "new-key"}
    first = session.post(f"{live_url}/api/keys", json={"name": "ci"}, headers=headers)
    again = session.post(f"{live_url}/api/keys", json={"name": "ci"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["key"].startswith("ck_") and again.json()["key"] is None
    assert APIKey.objects.filter(name="ci").count() == 1
    assert first.json()["key"] not in str(IdempotencyRecord.objects.get(key="new-key").body)


def test_fork_and_v1_are_idempotent_too(session, live_url, backend):
    reply = session.post(f"{live_url}/conversations/new", json={"prompt": "root"}).json()["response"]
    headers = {"Idempotency-Key": "fork"}
    forks = [
        session.post(f"{live_url}/conversations/{reply['conversation_id']}/fork", json={}, headers=headers)
        for _ in range(2)
    ]
    assert forks[0].json()["id"] == forks[1].json()["id"]
    assert Conversation.objects.count() == 2
    body = {"messages": [{"role": "user", "content": "hi"}]}
    completions = [
        session.post(f"{live_url}/v1/chat/completions", json=body, headers={"Idempotency-Key": "v1"}) for _ in range(2)
    ]
    assert completions[0].json() == completions[1].json()
    assert len(backend.requests) == 2  # the first ask, and one completion


# --- records are kept 24 hours --------------------------------------------------------------


def _records(api_key: APIKey, *ages_in_hours: float) -> list[IdempotencyRecord]:
    now = timezone.now()
    return [
        IdempotencyRecord.objects.create(
            api_key=api_key, key=f"aged-{age}", fingerprint="f", created_at=now - timedelta(hours=age)
        )
        for age in ages_in_hours
    ]


def test_purge_idempotency_keys_deletes_only_the_records_past_24_hours(user):
    api_key, _ = api_key_create(user=user)
    _records(api_key, 0, 23.9, 24.1, 100)
    out = StringIO()

    call_command("purge_idempotency_keys", stdout=out)

    assert out.getvalue().strip() == "Deleted 2 expired idempotency records."
    assert sorted(IdempotencyRecord.objects.values_list("key", flat=True)) == ["aged-0", "aged-23.9"]


def test_a_worker_purges_expired_records_by_itself_about_once_an_hour(user, monkeypatch):
    monkeypatch.setattr(idempotency, "_purged_at", float("-inf"))
    api_key, raw = api_key_create(user=user)
    other_key, _ = api_key_create(user=user)
    _records(other_key, 30)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert client.post("/api/keys", {"name": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="one").status_code == 201
    assert not IdempotencyRecord.objects.filter(key="aged-30").exists()

    # Within the hour the next request leaves them be (the command is there for the rest).
    _records(other_key, 31)
    assert client.post("/api/keys", {"name": "b"}, format="json", HTTP_IDEMPOTENCY_KEY="two").status_code == 201
    assert IdempotencyRecord.objects.filter(key="aged-31").exists()
    assert IdempotencyRecord.objects.filter(key__in=["one", "two"]).count() == 2


# --- streamed originals of the /v1 endpoints ------------------------------------------------


def test_a_streamed_stateful_completion_is_repeated_as_the_same_chunks_from_the_start(user, live_url, backend):
    _, raw = api_key_create(user=user)
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0)
    backend.reply_with("one two three four five six")
    backend.stream_slowly(0.05)

    def ask() -> Any:
        return client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"Idempotency-Key": "v1-stream", "X-Conversation-Id": "new"},
        )

    first = ask()
    first_chunks = first.parse()
    early = [next(first_chunks), next(first_chunks)]
    # A repeat while the original is still being generated follows it from the start, live.
    again = ask()
    again_chunks = [chunk.model_dump() for chunk in again.parse()]
    first_all = [chunk.model_dump() for chunk in [*early, *first_chunks]]

    assert again_chunks == first_all
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in again_chunks if c["choices"]) == (
        "one two three four five six"
    )
    assert again_chunks[-1]["usage"]["total_tokens"] > 0
    assert again.headers["x-conversation-id"] == first.headers["x-conversation-id"]
    assert again.headers["idempotent-replayed"] == "true"
    # And once it has ended, the same again; one backend call, one stored turn in all.
    later = [chunk.model_dump() for chunk in ask().parse()]
    assert later == first_all
    assert len(backend.requests) == 1
    assert Message.objects.filter(role="user").count() == 1


def test_a_streamed_stored_response_is_repeated_as_the_same_events_from_the_start(user, live_url, backend):
    _, raw = api_key_create(user=user)
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0)

    def create() -> list[dict[str, Any]]:
        stream = client.responses.create(
            model="auto", input="Tell me", stream=True, extra_headers={"Idempotency-Key": "resp-stream"}
        )
        return [event.model_dump() for event in stream]

    first, again = create(), create()

    assert again == first
    assert [e["type"] for e in again][0] == "response.created" and again[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in again] == list(range(len(again)))
    assert len(backend.requests) == 1
    assert Message.objects.filter(role="assistant").count() == 1


def test_the_repeat_of_a_stream_whose_reply_was_deleted_is_a_404(session, live_url, backend):
    headers = {"Idempotency-Key": "gone"}
    body = {"prompt": "stream it", "stream": True}
    list(read_events(session.post(f"{live_url}/conversations/new", json=body, headers=headers, stream=True)))
    Conversation.objects.all().delete()

    again = session.post(f"{live_url}/conversations/new", json=body, headers=headers)

    assert again.status_code == 404
    assert again.json()["error"]["code"] == "idempotent_reply_deleted"
    assert len(backend.requests) == 1


def test_a_stored_response_and_a_background_one_are_made_once(user, live_url, backend):
    _, raw = api_key_create(user=user)
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0)

    done = [client.responses.create(model="auto", input="Hi", extra_headers={"Idempotency-Key": "r1"}) for _ in "ab"]
    queued = [
        client.responses.create(model="auto", input="Later", background=True, extra_headers={"Idempotency-Key": "r2"})
        for _ in "ab"
    ]

    assert done[0].id == done[1].id and done[0].output_text == done[1].output_text
    assert queued[0].id == queued[1].id
    assert Message.objects.filter(role="assistant").count() == 2
    assert wait_until(lambda: len(backend.requests) == 2)
