"""Generations across real worker processes: two uvicorn workers sharing PostgreSQL and Redis.

A stream started on one worker is resumed and cancelled through the other; a worker killed with SIGKILL
mid-reply leaves its reply interrupted with its text, ended by a surviving worker, and a reader of it
through another worker is told so instead of waiting forever.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.cluster import manage, services_absent, worker_site
from tests.fake_openai import FakeOpenAI
from tests.live import Event, read_events, wait_until
from tests.ops.test_serving import _free_port, _serving

REDIS = os.environ.get("CHATAPI_TEST_REDIS", "redis://127.0.0.1:6379/14")
WORDS = " ".join(f"w{i}" for i in range(40))

_absent = services_absent(REDIS)
pytestmark = pytest.mark.skipif(_absent is not None, reason=_absent or "")


@dataclass
class Cluster:
    env: dict[str, str]
    key: str
    urls: list[str]

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        return session


@pytest.fixture(scope="module")
def cluster(fake_openai_server: FakeOpenAI) -> Iterator[Cluster]:
    with worker_site(fake_openai_server, redis_url=REDIS, name="workers") as env:
        key = manage(env, "create_api_key", "alice").strip()
        with _serving(env) as (first, _), _serving(env) as (second, _):
            yield Cluster(env=env, key=key, urls=[first, second])


@pytest.fixture
def backend(fake_openai_server: FakeOpenAI) -> FakeOpenAI:
    fake_openai_server.reset()
    return fake_openai_server


def start_stream(session: requests.Session, url: str, prompt: str) -> requests.Response:
    response = session.post(
        f"{url}/conversations/new", json={"prompt": prompt, "stream": True}, stream=True, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def first_events(events: Iterator[Event | str], deltas: int) -> list[Event]:
    """Events from `events` up to the `deltas`-th delta (the rest stay in it)."""
    seen: list[Event] = []
    for item in events:
        if isinstance(item, Event):
            seen.append(item)
            if sum(e.event == "delta" for e in seen) == deltas:
                return seen
    raise AssertionError(f"the stream ended after {seen}")


def reply_url(url: str, created: Event) -> str:
    return f"{url}/conversations/{created.data['conversation_id']}/messages/{created.data['response_id']}"


def stored_reply(session: requests.Session, url: str, created: Event) -> dict:
    messages = session.get(f"{url}/conversations/{created.data['conversation_id']}/messages?all=true", timeout=10)
    return next(m for m in messages.json() if m["id"] == created.data["response_id"])


def test_a_stream_started_on_one_worker_is_resumed_through_the_other(cluster, backend):
    first, second = cluster.urls
    session = cluster.session()
    backend.reply_with(WORDS)
    backend.stream_slowly(0.03)
    response = start_stream(session, first, "across workers")
    seen = first_events(read_events(response), 4)
    response.close()  # the client goes away; the reply goes on

    resumed = session.get(
        f"{reply_url(second, seen[0])}/stream", headers={"Last-Event-ID": seen[-1].id or ""}, stream=True, timeout=30
    )
    assert resumed.status_code == 200
    rest = [e for e in read_events(resumed) if isinstance(e, Event)]

    assert [int(str(e.id)) for e in seen + rest] == list(range(1, len(seen) + len(rest) + 1))
    assert rest[-1].event == "completed"
    text = "".join(e.data["delta"] for e in seen + rest if e.event == "delta")
    assert text == WORDS == stored_reply(session, second, seen[0])["message"]


def test_a_generation_on_one_worker_is_cancelled_through_the_other(cluster, backend):
    first, second = cluster.urls
    session = cluster.session()
    backend.reply_with(WORDS)
    backend.stream_slowly(0.1)
    response = start_stream(session, first, "stop me")
    events = read_events(response)
    seen = first_events(events, 3)

    cancelled = session.post(f"{reply_url(second, seen[0])}/cancel", timeout=30)

    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled"
    assert body["message"].startswith("".join(e.data["delta"] for e in seen if e.event == "delta"))
    assert len(body["message"].split()) < 40
    # The stream on the first worker ends too, with the cancelled reply.
    rest = [e for e in events if isinstance(e, Event)]
    assert rest[-1].event == "completed" and rest[-1].data["response"]["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while not backend.streams_cut_by_client and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.streams_cut_by_client == 1, "the backend request was not closed"


def test_a_conversation_deleted_through_the_other_worker_stops_its_generation(cluster, backend):
    first, second = cluster.urls
    session = cluster.session()
    backend.reply_with(WORDS)
    backend.stream_slowly(0.1)
    response = start_stream(session, first, "delete me")
    events = read_events(response)
    seen = first_events(events, 2)

    deleted = session.delete(f"{second}/conversations/{seen[0].data['conversation_id']}", timeout=30)

    assert deleted.status_code == 204, deleted.text
    # The stream on the first worker ends, told the reply is gone, and the backend request is closed.
    rest = [e for e in events if isinstance(e, Event)]
    assert rest[-1].event == "error" and rest[-1].data["error"]["code"] == "conversation_not_found"
    assert wait_until(lambda: backend.streams_cut_by_client == 1, timeout=5), "the backend request was not closed"


def test_a_worker_killed_mid_reply_leaves_it_interrupted_with_its_text(cluster, backend):
    survivor = cluster.urls[0]
    session = cluster.session()
    backend.reply_with(WORDS)
    backend.stream_slowly(0.2)
    with _serving(cluster.env) as (doomed_url, doomed):
        response = start_stream(session, doomed_url, "famous last words")
        seen = first_events(read_events(response), 5)
        # Someone follows the reply through the surviving worker.
        follower = session.get(f"{reply_url(survivor, seen[0])}/stream", stream=True, timeout=30)
        assert follower.status_code == 200
        time.sleep(0.1)  # a worker sends its events to Redis every 20 ms: what it sent is what is kept
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)

        followed = [e for e in read_events(follower) if isinstance(e, Event)]
        reply = stored_reply(session, survivor, seen[0])

    assert followed[-1].event == "error"
    assert followed[-1].data["error"]["code"] == "generation_interrupted"
    assert (reply["status"], reply["finish_details"]) == ("interrupted", "interrupted")
    # With Redis, the text it had is kept: all the client saw before the last 20 ms (and what came after, if any).
    received = "".join(e.data["delta"] for e in seen if e.event == "delta")
    assert reply["message"].startswith(received)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A Redis server of this test's own, which it may stop: (url, process)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the Redis outage cannot be staged")
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0", server
    finally:
        server.kill()
        server.wait(timeout=10)


def test_a_redis_outage_mid_reply_loses_nothing_stored_and_readers_elsewhere_are_told(cluster, backend, private_redis):
    redis_url, redis_server = private_redis
    env = {**cluster.env, "REDIS_URL": redis_url}
    session = cluster.session()
    backend.reply_with(WORDS)
    backend.stream_slowly(0.05)
    with _serving(env) as (generating, _), _serving(env) as (elsewhere, _):
        response = start_stream(session, generating, "through the storm")
        events = read_events(response)
        seen = first_events(events, 3)
        follower = session.get(f"{reply_url(elsewhere, seen[0])}/stream", stream=True, timeout=30)
        assert follower.status_code == 200
        followed = read_events(follower)
        first_events(followed, 1)
        redis_server.kill()  # Redis goes away mid-reply
        redis_server.wait(timeout=10)

        rest = [e for e in events if isinstance(e, Event)]
        told = [e for e in followed if isinstance(e, Event)]
        reply = stored_reply(session, generating, seen[0])

    # The worker generating it goes on from its own memory: its stream and what is stored are whole.
    assert rest[-1].event == "completed"
    assert "".join(e.data["delta"] for e in seen + rest if e.event == "delta") == WORDS
    assert (reply["status"], reply["message"]) == ("completed", WORDS)
    # A reader through another worker cannot follow it any more, and is told so.
    assert told[-1].event == "error"
    assert told[-1].data["error"]["code"] == "event_log_unavailable"


def test_a_reply_is_followed_from_its_start_through_another_worker(cluster, backend):
    first, second = cluster.urls
    session = cluster.session()
    backend.reply_with("just begun")
    backend.hold()
    response = start_stream(session, first, "quick")
    created = first_events_created(read_events(response))
    # At once (its first events reach Redis within 20 ms: a reader that comes sooner waits for them).
    follower = session.get(f"{reply_url(second, created)}/stream", stream=True, timeout=30)
    backend.release()
    followed = [e for e in read_events(follower) if isinstance(e, Event)]
    assert [e.event for e in followed][0] == "created"
    assert followed[-1].event == "completed"
    assert followed[-1].data["response"]["message"] == "just begun"
    response.close()


def first_events_created(events: Iterator[Event | str]) -> Event:
    return next(e for e in events if isinstance(e, Event) and e.event == "created")
