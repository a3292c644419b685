"""Streamed replies over a real ASGI server (uvicorn): events, no buffering, disconnects, backend failures."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from conversations import generations
from conversations.models import Conversation, Message
from tests.live import Event, read_events

pytestmark = pytest.mark.django_db(transaction=True)

WORDS = " ".join(f"w{i}" for i in range(30))


def post_stream(http, path, body=None, **kwargs) -> requests.Response:
    response = http.post(f"{http.base_url}{path}", json=body, stream=True, timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"  # a proxy must not hold it back
    return response


def events_of(response) -> list[Event]:
    return [e for e in read_events(response) if isinstance(e, Event)]


def test_new_streams_created_deltas_completed_and_stores_the_reply(http, backend):
    response = post_stream(http, "/conversations/new", {"prompt": "Count for me", "stream": True})
    events = events_of(response)

    assert [e.event for e in events[:1]] == ["created"]
    assert [e.event for e in events[-1:]] == ["completed"]
    assert {e.event for e in events[1:-1]} == {"delta"}
    assert [e.id for e in events] == [str(n) for n in range(1, len(events) + 1)]
    created, completed = events[0].data, events[-1].data["response"]
    assert created["request"]["message"] == "Count for me"
    assert created["request"]["author"]["role"] == "user"
    assert created["response_id"] == completed["id"]
    joined = "".join(e.data["delta"] for e in events[1:-1])
    assert all(e.data["id"] == completed["id"] for e in events[1:-1])
    assert joined == completed["message"] == "Reply 1 to: Count for me"
    assert completed["parent_id"] == completed["id"]
    assert completed["request_id"] == created["request"]["id"]
    assert completed["finish_details"] == "stop"
    assert completed["usage"]["total_tokens"] > 0

    messages = http.get(f"{http.base_url}/conversations/{created['conversation_id']}/messages").json()
    stored = {**messages[-1], "parent_id": messages[-1]["id"], "request_id": messages[-1]["parent_id"]}
    assert stored == completed
    assert backend.requests[-1]["stream"] is True


def test_ask_streams_with_accept_header_and_sends_the_branch(http, backend):
    first = http.post(f"{http.base_url}/conversations/new", json={"prompt": "one"}).json()["response"]
    cid = first["conversation_id"]
    response = post_stream(
        http, f"/conversations/{cid}/ask", {"prompt": "two"}, headers={"Accept": "text/event-stream"}
    )
    events = events_of(response)
    assert events[-1].event == "completed"
    assert [m["content"] for m in backend.last_messages] == ["one", first["message"], "two"]
    conversation = http.get(f"{http.base_url}/conversations/{cid}").json()
    assert conversation["current_node"] == events[-1].data["response"]["id"]
    assert conversation["message_count"] == 4


def test_regenerate_streams_with_a_null_request(http, backend):
    first = http.post(f"{http.base_url}/conversations/new", json={"prompt": "one"}).json()["response"]
    backend.reply_with("second take")
    path = f"/conversations/{first['conversation_id']}/messages/{first['id']}/regenerate"
    events = events_of(post_stream(http, path, {"stream": "true"}))
    assert events[0].data["request"] is None
    completed = events[-1].data["response"]
    assert completed["message"] == "second take"
    assert completed["request_id"] == first["request_id"]


def test_form_body_can_ask_for_a_stream(http, backend):
    response = http.post(f"{http.base_url}/conversations/new", data={"prompt": "hi", "stream": "true"}, stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"  # a proxy must not hold it back
    assert events_of(response)[-1].event == "completed"


def test_errors_before_the_stream_are_plain_json(http, backend):
    response = http.post(
        f"{http.base_url}/conversations/new",
        json={"prompt": "", "stream": True},
        headers={"Accept": "text/event-stream"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_first_delta_leaves_before_the_backend_finishes(http, backend):
    backend.reply_with(WORDS)
    backend.stream_slowly(0.05)  # ~1.6 s for the whole reply
    started = time.monotonic()
    response = post_stream(http, "/conversations/new", {"prompt": "slowly", "stream": True})
    first_delta_at = None
    for event in read_events(response):
        if isinstance(event, Event) and event.event == "delta" and first_delta_at is None:
            first_delta_at = time.monotonic() - started
    total = time.monotonic() - started
    assert first_delta_at is not None
    assert total > 1.4
    assert first_delta_at < 0.6, f"first delta after {first_delta_at:.2f}s of {total:.2f}s: buffered?"


def _read_deltas_then_hang_up(response, count: int) -> list[str]:
    received = []
    for event in read_events(response):
        if isinstance(event, Event) and event.event == "delta":
            received.append(event.data["delta"])
            if len(received) == count:
                break
    response.close()  # the client goes away
    return received


def _reply_when(condition, timeout: float = 10) -> Message | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = Message.objects.filter(role="assistant").first()
        if reply is not None and condition(reply):
            return reply
        time.sleep(0.05)
    return None


def test_a_client_that_goes_away_does_not_stop_the_reply(http, backend):
    backend.reply_with(WORDS)
    backend.stream_slowly(0.02)
    response = post_stream(http, "/conversations/new", {"prompt": "long story", "stream": True})
    received = _read_deltas_then_hang_up(response, 3)

    reply = _reply_when(lambda r: r.status != "in_progress")
    assert reply is not None, "the reply was not finished"
    assert (reply.status, reply.finish_details) == ("completed", "stop")
    assert reply.content == WORDS
    assert reply.content.startswith("".join(received))
    assert backend.streams_cut_by_client == 0
    assert Conversation.objects.get().current_node_id == reply.pk


def test_with_stop_on_disconnect_a_client_that_goes_away_stops_the_backend(http, backend, settings):
    settings.CHATAPI_STOP_ON_DISCONNECT = True
    backend.reply_with(WORDS)
    backend.stream_slowly(0.1)
    response = post_stream(http, "/conversations/new", {"prompt": "long story", "stream": True})
    received = _read_deltas_then_hang_up(response, 3)

    reply = _reply_when(lambda r: r.status != "in_progress" and backend.streams_cut_by_client)
    assert reply is not None, "the partial reply was not stored"
    assert (reply.status, reply.finish_details) == ("interrupted", "interrupted")
    assert reply.content.startswith("".join(received))
    assert len(reply.content.split()) < 30
    assert backend.streams_cut_by_client == 1, "the backend request was not cancelled"
    assert Message.objects.count() == 2  # the prompt and the partial reply, nothing else
    assert Conversation.objects.get().current_node_id == reply.pk


def test_with_stop_on_disconnect_a_client_gone_before_the_first_delta_cancels_the_backend(http, backend, settings):
    settings.CHATAPI_STOP_ON_DISCONNECT = True
    backend.reply_with(WORDS)
    backend.hold()  # the model has not answered yet
    response = post_stream(http, "/conversations/new", {"prompt": "never mind", "stream": True})
    events = read_events(response)  # kept: dropping it would close the connection
    first = next(events)
    assert isinstance(first, Event) and first.event == "created"
    deadline = time.monotonic() + 10
    while backend.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.waiting == 1, "the backend was not asked"
    response.close()  # the client goes away
    time.sleep(0.3)
    backend.stream_slowly(0.05)
    backend.release()

    reply = _reply_when(lambda r: r.status != "in_progress" and backend.streams_cut_by_client)
    assert reply is not None
    assert backend.streams_cut_by_client == 1, "the backend request was not cancelled"
    assert (reply.content, reply.status) == ("", "interrupted")


def test_backend_error_before_the_first_token_sends_an_error_event_and_keeps_the_prompt(http, backend):
    backend.fail(500)
    events = events_of(post_stream(http, "/conversations/new", {"prompt": "doomed", "stream": True}))
    assert [e.event for e in events] == ["created", "error"]
    error = events[-1].data
    assert error["id"] == events[0].data["response_id"]
    assert error["error"]["type"] == "backend_error"
    assert error["error"]["details"]["message_id"] == events[0].data["request"]["id"]
    prompt = Message.objects.get(role="user")
    assert prompt.content == "doomed"
    failed = Message.objects.get(role="assistant")
    assert (failed.content, failed.finish_details, failed.status) == ("", "error", "failed")
    assert Conversation.objects.get().current_node_id == prompt.pk  # given back to the prompt


def test_backend_failing_mid_stream_sends_an_error_event_and_keeps_the_partial_text(http, backend):
    backend.reply_with(WORDS)
    backend.cut_streams_after(5)
    events = events_of(post_stream(http, "/conversations/new", {"prompt": "crash", "stream": True}))
    assert events[0].event == "created"
    assert events[-1].event == "error"
    error = events[-1].data["error"]
    assert (error["type"], error["code"]) == ("backend_error", "backend_stream_broken")
    assert "cut off" in error["message"]  # not "could not be reached": it was, and it started answering
    deltas = "".join(e.data["delta"] for e in events if e.event == "delta")
    assert deltas
    reply = Message.objects.get(role="assistant")
    assert reply.finish_details == "interrupted"
    assert reply.content == deltas
    assert Message.objects.filter(role="user", content="crash").exists()


def test_a_bug_mid_stream_ends_it_with_an_error_event_next_in_the_sequence(http, backend, monkeypatch):
    def broken(reply):
        raise RuntimeError("a bug while writing the completed event")

    monkeypatch.setattr(generations, "ReplyOutput", broken)
    events = events_of(post_stream(http, "/conversations/new", {"prompt": "Count for me", "stream": True}))
    assert [e.event for e in events[:2]] == ["created", "delta"]
    assert events[-1].event == "error"
    assert events[-1].data["error"]["code"] == "internal_error"
    assert [e.id for e in events] == [str(n) for n in range(1, len(events) + 1)]
    # The reply itself was stored before the event that failed.
    assert Message.objects.get(role="assistant").content == "Reply 1 to: Count for me"


def test_a_ping_is_sent_when_the_backend_is_silent(http, backend, settings):
    settings.CHATAPI_SSE_PING_SECONDS = 0.2
    backend.reply_with("a b c")
    backend.stream_slowly(0.5)
    response = post_stream(http, "/conversations/new", {"prompt": "wait", "stream": True})
    items = list(read_events(response))
    assert ": ping" in items
    assert isinstance(items[-1], Event) and items[-1].event == "completed"


def test_echo_model_streams_too(http):
    events = events_of(post_stream(http, "/conversations/new", {"prompt": "offline", "stream": True}))
    completed = events[-1].data["response"]
    assert completed["model"] == "echo"
    assert "".join(e.data["delta"] for e in events if e.event == "delta") == completed["message"]


def test_refused_backend_connection_is_an_unavailable_error_event(http, backend, settings):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
    response = post_stream(http, "/conversations/new", {"prompt": "anyone?", "stream": True})
    events = events_of(response)
    assert [e.event for e in events] == ["created", "error"]
    assert events[-1].data["error"]["code"] == "backend_unavailable"
    assert events[-1].data["error"]["details"]["message_id"] == events[0].data["request"]["id"]
