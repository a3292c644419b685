"""Replies outlive their connection: shown in progress, resumed from any point, cancelled, never stuck."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from conversations import generations
from conversations.models import Conversation, Message
from tests.live import Event, read_events, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

WORDS = " ".join(f"w{i}" for i in range(30))


def start_stream(http, prompt: str = "tell me") -> requests.Response:
    response = http.post(
        f"{http.base_url}/conversations/new", json={"prompt": prompt, "stream": True}, stream=True, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def events_until(response: requests.Response, deltas: int) -> list[Event]:
    """The events up to the `deltas`-th delta; then the client hangs up."""
    seen: list[Event] = []
    for item in read_events(response):
        if isinstance(item, Event):
            seen.append(item)
            if sum(e.event == "delta" for e in seen) == deltas:
                break
    response.close()
    return seen


def resume(http, reply: dict | Message, *, last_event_id: str | None = None, after: str | None = None):
    conversation_id = reply["conversation_id"] if isinstance(reply, dict) else reply.conversation_id
    reply_id = reply["id"] if isinstance(reply, dict) else reply.pk
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    params = {"after": after} if after is not None else {}
    return http.get(
        f"{http.base_url}/conversations/{conversation_id}/messages/{reply_id}/stream",
        headers=headers,
        params=params,
        stream=True,
        timeout=30,
    )


def test_a_reply_is_shown_in_progress_while_it_is_generated(http, backend):
    backend.hold()
    response = start_stream(http)
    created = next(e for e in read_events(response) if isinstance(e, Event))
    reply_id = created.data["response_id"]
    cid = created.data["conversation_id"]

    messages = http.get(f"{http.base_url}/conversations/{cid}/messages", timeout=10).json()
    assert [(m["author"]["role"], m["status"]) for m in messages] == [
        ("user", "completed"),
        ("assistant", "in_progress"),
    ]
    assert messages[-1]["id"] == reply_id and messages[-1]["message"] == ""
    assert http.get(f"{http.base_url}/conversations/{cid}", timeout=10).json()["current_node"] == reply_id
    backend.release()
    assert wait_until(lambda: Message.objects.get(pk=reply_id).status == "completed")
    response.close()


def test_a_stream_resumed_after_an_event_sends_exactly_the_rest(http, backend):
    backend.reply_with(WORDS)
    backend.stream_slowly(0.03)
    seen = events_until(start_stream(http), 3)
    created, last = seen[0], seen[-1]
    reply = {"conversation_id": created.data["conversation_id"], "id": created.data["response_id"]}

    rest = [e for e in read_events(resume(http, reply, last_event_id=last.id)) if isinstance(e, Event)]

    assert rest[0].id == str(int(str(last.id)) + 1)
    assert [e.event for e in rest][-1] == "completed"
    assert [int(str(e.id)) for e in seen + rest] == list(range(1, len(seen) + len(rest) + 1))
    text = "".join(e.data["delta"] for e in seen + rest if e.event == "delta")
    stored = Message.objects.get(pk=reply["id"])
    assert text == stored.content == WORDS
    assert rest[-1].data["response"]["status"] == "completed"
    assert stored.last_event_id == int(str(rest[-1].id))


def test_a_finished_reply_replays_from_the_start_or_after_an_id(http, backend):
    reply = http.post(f"{http.base_url}/conversations/new", json={"prompt": "hi"}, timeout=30).json()["response"]
    everything = [e for e in read_events(resume(http, reply)) if isinstance(e, Event)]
    assert [e.event for e in everything][0] == "created" and everything[-1].event == "completed"
    assert "".join(e.data["delta"] for e in everything if e.event == "delta") == reply["message"]
    after_two = [e for e in read_events(resume(http, reply, after="2")) if isinstance(e, Event)]
    assert after_two == everything[2:]
    assert list(read_events(resume(http, reply, after=everything[-1].id))) == []


def test_a_finished_reply_whose_log_is_gone_gives_its_last_event_from_the_database(http, backend, monkeypatch):
    reply = http.post(f"{http.base_url}/conversations/new", json={"prompt": "hi"}, timeout=30).json()["response"]
    stored = Message.objects.get(pk=reply["id"])
    log = generations.event_log()
    monkeypatch.setattr(log, "read", _missing_log)
    events = [e for e in read_events(resume(http, reply)) if isinstance(e, Event)]
    assert [(e.id, e.event) for e in events] == [(str(stored.last_event_id), "completed")]
    assert events[0].data["response"]["message"] == stored.content


async def _missing_log(generation_id, *, after=0, heartbeat=None):
    raise generations.LogMissing(generation_id)
    yield  # an async generator


@pytest.mark.parametrize(("header", "query"), [("abc", None), ("-1", None), (None, "x"), ("999", None)])
def test_an_event_id_that_is_not_one_of_the_reply_is_400(http, backend, header, query):
    reply = http.post(f"{http.base_url}/conversations/new", json={"prompt": "hi"}, timeout=30).json()["response"]
    response = resume(http, reply, last_event_id=header, after=query)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_event_id"


def test_resuming_or_cancelling_another_users_reply_is_404(http, backend, other_user):
    from accounts.services import api_key_create

    reply = http.post(f"{http.base_url}/conversations/new", json={"prompt": "mine"}, timeout=30).json()["response"]
    other = requests.Session()
    other.headers["Authorization"] = f"Bearer {api_key_create(user=other_user)[1]}"
    base = f"{http.base_url}/conversations/{reply['conversation_id']}/messages/{reply['id']}"
    assert other.get(f"{base}/stream", timeout=10).status_code == 404
    assert other.post(f"{base}/cancel", timeout=10).status_code == 404


def test_cancel_stops_the_backend_and_keeps_the_text_so_far(http, backend):
    backend.reply_with(WORDS)
    backend.stream_slowly(0.1)
    response = start_stream(http)
    seen = events_until(response, 3)
    cid, rid = seen[0].data["conversation_id"], seen[0].data["response_id"]

    cancelled = http.post(f"{http.base_url}/conversations/{cid}/messages/{rid}/cancel", timeout=10)

    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["status"], body["finish_details"]) == ("cancelled", "cancelled")
    assert body["message"].startswith("".join(e.data["delta"] for e in seen if e.event == "delta"))
    assert len(body["message"].split()) < 30
    assert wait_until(lambda: backend.streams_cut_by_client == 1), "the backend request was not closed"
    stored = Message.objects.get(pk=rid)
    assert (stored.status, stored.content) == ("cancelled", body["message"])
    # A resumed stream ends with the cancelled reply.
    rest = [e for e in read_events(resume(http, body, last_event_id=seen[-1].id)) if isinstance(e, Event)]
    assert rest[-1].event == "completed" and rest[-1].data["response"]["status"] == "cancelled"
    # Not in progress any more: a second cancel is a 409.
    again = http.post(f"{http.base_url}/conversations/{cid}/messages/{rid}/cancel", timeout=10)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_in_progress"


def test_a_non_streamed_ask_whose_client_gave_up_is_still_stored(http, backend):
    backend.hang(1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(f"{http.base_url}/conversations/new", json={"prompt": "patience"}, timeout=0.3)
    assert wait_until(lambda: Message.objects.filter(role="assistant", status="completed").exists())
    reply = Message.objects.get(role="assistant")
    assert reply.content == "Reply 1 to: patience"
    assert Conversation.objects.get().current_node_id == reply.pk


def test_a_reply_whose_worker_died_is_interrupted_with_its_text(user, backend):
    conversation = Conversation.objects.create(owner=user, title="orphan")
    prompt = Message.objects.create(conversation=conversation, role="user", content="hello?")
    orphan = Message.objects.create(
        conversation=conversation,
        parent=prompt,
        role="assistant",
        content="half a rep",
        status="in_progress",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    alive = Message.objects.create(
        conversation=conversation,
        parent=prompt,
        role="assistant",
        status="in_progress",
        lease_expires_at=timezone.now() + timedelta(seconds=30),
    )

    asyncio.run(generations._reap())

    orphan.refresh_from_db()
    alive.refresh_from_db()
    assert (orphan.status, orphan.finish_details, orphan.content) == ("interrupted", "interrupted", "half a rep")
    assert alive.status == "in_progress"


def test_a_reply_in_progress_shows_its_text_so_far(http, backend, settings):
    settings.CHATAPI_GENERATION_LEASE_SECONDS = 3  # its text is stored every second
    backend.reply_with(WORDS)
    backend.stream_slowly(0.1)
    response = start_stream(http)
    created = next(e for e in read_events(response) if isinstance(e, Event))
    url = f"{http.base_url}/conversations/{created.data['conversation_id']}/messages"

    def shown() -> dict:
        return next(m for m in http.get(url, timeout=10).json() if m["id"] == created.data["response_id"])

    assert wait_until(lambda: shown()["message"] != "", timeout=5)
    partial = shown()
    assert partial["status"] == "in_progress"
    assert WORDS.startswith(partial["message"]) and partial["message"] != WORDS
    response.close()


def test_a_reply_ended_elsewhere_while_generated_here_stops_its_generation(http, backend, settings):
    """A cancel that never reached the worker generating the reply (Redis down, its listener reconnecting):
    the worker that took it ended the reply after waiting. The generating worker finds out at its next lease
    renewal, and stops calling the backend for a result that would not be stored."""
    settings.CHATAPI_GENERATION_LEASE_SECONDS = 3  # renewed every second
    backend.reply_with(WORDS)
    backend.stream_slowly(0.2)  # 6 s in all
    response = start_stream(http)
    seen = events_until(response, 2)
    rid = seen[0].data["response_id"]

    # What generations.generation_cancel does when no worker answers: the reply ends where the cancel came.
    Message.objects.filter(pk=rid).update(status="cancelled", finish_details="cancelled", lease_expires_at=None)

    assert wait_until(lambda: backend.streams_cut_by_client == 1, timeout=3), "the backend request was not closed"
    assert Message.objects.get(pk=rid).status == "cancelled"


def test_cancelling_a_user_message_is_a_409(http, backend):
    reply = http.post(f"{http.base_url}/conversations/new", json={"prompt": "hi"}, timeout=30).json()["response"]
    response = http.post(
        f"{http.base_url}/conversations/{reply['conversation_id']}/messages/{reply['request_id']}/cancel", timeout=10
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_in_progress"


def test_asking_on_top_of_a_reply_still_being_generated_is_a_409(http, backend):
    backend.hold()
    response = start_stream(http)
    created = next(e for e in read_events(response) if isinstance(e, Event))
    cid = created.data["conversation_id"]
    again = http.post(f"{http.base_url}/conversations/{cid}/ask", json={"prompt": "still there?"}, timeout=10)
    assert again.status_code == 409
    error = again.json()["error"]
    assert (error["code"], error["details"]["message_id"]) == ("reply_in_progress", created.data["response_id"])
    assert not Message.objects.filter(content="still there?").exists()
    backend.release()
    response.close()


@pytest.mark.parametrize("last_event_id", ["50", str(2**70)])
def test_an_event_id_past_the_last_of_a_reply_in_progress_is_400(http, backend, last_event_id):
    backend.hold()
    response = start_stream(http)
    created = next(e for e in read_events(response) if isinstance(e, Event))
    reply = {"conversation_id": created.data["conversation_id"], "id": created.data["response_id"]}
    resumed = resume(http, reply, last_event_id=last_event_id)
    assert resumed.status_code == 400
    assert resumed.json()["error"]["code"] == "invalid_event_id"
    backend.release()
    response.close()


def test_a_reply_whose_conversation_is_deleted_meanwhile_still_counts_its_tokens(http, backend, user):
    from accounts.models import APIKey

    backend.reply_with(WORDS)
    backend.stream_slowly(0.02)
    response = start_stream(http)
    created = next(e for e in read_events(response) if isinstance(e, Event))
    assert (
        http.delete(f"{http.base_url}/conversations/{created.data['conversation_id']}", timeout=10).status_code == 204
    )
    assert wait_until(lambda: APIKey.objects.filter(user=user, total_tokens__gt=0).exists())
    response.close()


@pytest.mark.parametrize("what", ["conversation", "subtree", "bulk", "all"])
def test_deleting_a_reply_being_generated_stops_its_generation(http, backend, what, monkeypatch):
    # The deletion stops it itself, at once: not the worker's next lease renewal finding its row gone.
    monkeypatch.setattr(generations, "_stop_ended_elsewhere", lambda reply_id: None)
    backend.reply_with(WORDS)
    backend.stream_slowly(0.1)
    response = start_stream(http)
    seen = events_until(response, 2)
    cid, rid = seen[0].data["conversation_id"], seen[0].data["response_id"]
    request_id = seen[0].data["request"]["id"]
    base = f"{http.base_url}/conversations"

    if what == "conversation":
        deleted = http.delete(f"{base}/{cid}", timeout=10)
    elif what == "subtree":  # the prompt, and with it the reply below it
        deleted = http.delete(f"{base}/{cid}/messages/{request_id}", timeout=10)
    elif what == "bulk":
        deleted = http.post(f"{base}/bulk", json={"ids": [cid], "action": "delete"}, timeout=10)
    else:
        deleted = http.delete(f"{base}/all", timeout=10)

    assert deleted.status_code in (200, 204), deleted.text
    # The backend request is closed within a second or so, not left to run its 3 seconds to the end.
    assert wait_until(lambda: backend.streams_cut_by_client == 1, timeout=2), "the backend request was not closed"
    assert not Message.objects.filter(pk=rid).exists()


def test_generations_at_the_same_time_each_have_a_thread_and_later_ones_reuse_them():
    """A generation's database work runs on a thread of its own while it runs (one waiting for a row lock
    stalls no other), and the worker lends that thread to a later generation instead of starting another."""
    from asgiref.sync import sync_to_async

    def where(wait: threading.Event | None = None) -> threading.Thread:
        if wait is not None:
            assert wait.wait(10), "the other generation's work never ran: the two shared a thread"
        return threading.current_thread()  # (an ident, unlike the thread, can be a dead thread's again)

    async def run() -> tuple[list[threading.Thread], list[threading.Thread]]:
        release = threading.Event()

        async def waiting() -> threading.Thread:
            async with generations.own_thread():
                return await sync_to_async(where)(release)

        async def releasing() -> threading.Thread:
            async with generations.own_thread():
                thread = await sync_to_async(where)()
                release.set()
                return thread

        together = list(await asyncio.gather(waiting(), releasing()))
        later = []
        for _ in range(5):
            async with generations.own_thread():
                later.append(await sync_to_async(where)())
        return together, later

    together, later = asyncio.run(run())

    assert together[0] is not together[1]
    assert all(any(thread is lent for lent in together) for thread in later)  # none started for the later ones
