"""`Idempotency-Key` through the live ASGI server: a repeat gets the same answer with nothing done again."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from accounts.models import APIKey, IdempotencyRecord
from accounts.services import api_key_create
from conversations.models import Conversation, Message
from tests.live import Event, read_events

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
