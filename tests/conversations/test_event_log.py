"""The generation event logs (conversations.events): in-process, and through Redis Streams between workers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from conversations import events
from conversations.events import Event, EventLog, LocalEventLog, LogMissing, LogUnavailable, RedisEventLog, stream_key

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
# Every generation id of this run starts with it, so that the streams left behind can be found and deleted.
PREFIX = f"test-{secrets.token_hex(4)}"


def new_id() -> str:
    return f"{PREFIX}-{secrets.token_hex(4)}"


def run(log: EventLog, body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` on a loop of its own, as a worker would, and close the log on that loop."""

    async def main() -> T:
        try:
            return await body()
        finally:
            await log.close()

    return asyncio.run(main())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def collect(log: EventLog, generation_id: str, **kwargs: Any) -> list[Event | None]:
    return [event async for event in log.read(generation_id, **kwargs)]


def seqs(events: list[Event | None]) -> list[int | None]:
    return [event.seq if event is not None else None for event in events]


async def publish_reply(log: EventLog, generation_id: str, deltas: int) -> list[Event]:
    published = [await log.publish(generation_id, "created", {"response_id": "m1"})]
    for i in range(deltas):
        published.append(await log.publish(generation_id, "delta", {"id": "m1", "delta": f"t{i} "}))
    published.append(await log.publish(generation_id, "completed", {"response": {"id": "m1", "status": "completed"}}))
    return published


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {url} ({exc}); set REDIS_URL to run the Redis event log tests")
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client of the test Redis; the streams the test made are deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(match=stream_key(f"{PREFIX}-*"), count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["local", "redis"])
def make_log(request: pytest.FixtureRequest) -> Callable[[], EventLog]:
    """Both logs; the Redis one on the test Redis (and skipped without it)."""
    if request.param == "local":
        return LocalEventLog
    request.getfixturevalue("redis_client")
    url = request.getfixturevalue("redis_url")
    return lambda: RedisEventLog(url)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "RETRY_DELAY", 0.05)


# Both logs


def test_a_reader_gets_the_events_after_n_in_order(make_log) -> None:
    log, generation_id = make_log(), new_id()

    async def body() -> None:
        published = await publish_reply(log, generation_id, deltas=5)
        assert [event.seq for event in published] == [1, 2, 3, 4, 5, 6, 7]
        for after in (0, 3, 6):
            assert await collect(log, generation_id, after=after) == published[after:]
        # After the terminal event there is nothing left: the reader ends at once.
        assert await collect(log, generation_id, after=7) == []

    run(log, body)


def test_a_reader_follows_the_live_events_to_the_terminal_one(make_log) -> None:
    log, generation_id = make_log(), new_id()

    async def body() -> None:
        await log.publish(generation_id, "created", {"response_id": "m1"})
        reader = asyncio.create_task(collect(log, generation_id, after=1))
        await asyncio.sleep(0.05)
        assert not reader.done()
        rest = [await log.publish(generation_id, "delta", {"delta": "a"})]
        await asyncio.sleep(0.02)
        rest.append(await log.publish(generation_id, "error", {"error": {"code": "backend_error"}}))
        assert await asyncio.wait_for(reader, 5) == rest

    run(log, body)


def test_a_quiet_generation_gets_heartbeats_and_no_event_is_lost(make_log) -> None:
    log, generation_id = make_log(), new_id()

    async def body() -> None:
        created = await log.publish(generation_id, "created", {})
        reader = asyncio.create_task(collect(log, generation_id, heartbeat=0.05))
        await asyncio.sleep(0.3)
        rest = [await log.publish(generation_id, "delta", {"delta": "a"})]
        rest.append(await log.publish(generation_id, "completed", {}))
        got = await asyncio.wait_for(reader, 5)
        assert got[0] == created and got[-2:] == rest
        # The quiet 0.3 s gives about 6 heartbeats (fewer on a busy machine, never more), and nothing else.
        assert 1 <= got.count(None) == len(got) - 3 <= 7

    run(log, body)


def test_an_unknown_generation_is_missing(make_log) -> None:
    log = make_log()

    async def body() -> None:
        with pytest.raises(LogMissing):
            await collect(log, new_id())
        assert not log.is_local(new_id())

    run(log, body)


def test_a_log_is_dropped_its_ttl_after_the_terminal_event(make_log, settings) -> None:
    settings.CHATAPI_GENERATION_LOG_TTL = 1
    log, live_id, done_id = make_log(), new_id(), new_id()

    async def body() -> None:
        await log.publish(live_id, "created", {})
        published = await publish_reply(log, done_id, deltas=2)
        await asyncio.sleep(0.5)
        assert await collect(log, done_id) == published
        await asyncio.sleep(0.8)
        with pytest.raises(LogMissing):
            await collect(log, done_id)
        assert not log.is_local(done_id)
        # A generation still running is kept, however long it takes.
        assert log.is_local(live_id)
        stream = log.read(live_id, heartbeat=0.01)
        assert [await anext(stream), await anext(stream)] == [Event(1, "created", {}), None]
        await stream.aclose()

    run(log, body)


def test_a_reader_cancelled_or_closed_midway_leaves_nothing_behind(make_log) -> None:
    log, generation_id = make_log(), new_id()

    async def body() -> None:
        await log.publish(generation_id, "created", {})
        await asyncio.sleep(0.05)  # the Redis log's background tasks have started
        before = asyncio.all_tasks()
        reader = asyncio.create_task(collect(log, generation_id, heartbeat=0.01))
        await asyncio.sleep(0.05)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        stream = log.read(generation_id)
        assert await anext(stream) == Event(1, "created", {})
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.02)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await stream.aclose()
        assert asyncio.all_tasks() == before
        assert log._logs[generation_id].waiters == []
        # The generation goes on for the others.
        assert (await log.publish(generation_id, "completed", {})).seq == 2
        assert seqs(await collect(log, generation_id)) == [1, 2]

    run(log, body)


def test_many_readers_of_one_generation_get_the_same_events(make_log) -> None:
    log, generation_id = make_log(), new_id()

    async def body() -> None:
        await log.publish(generation_id, "created", {})
        readers = [asyncio.create_task(collect(log, generation_id, heartbeat=1.0)) for _ in range(200)]
        await asyncio.sleep(0.01)
        published = [Event(1, "created", {})]
        for i in range(50):
            published.append(await log.publish(generation_id, "delta", {"delta": str(i)}))
            if i % 10 == 0:
                await asyncio.sleep(0.005)  # some readers have caught up, some are behind
        published.append(await log.publish(generation_id, "completed", {}))
        for got in await asyncio.wait_for(asyncio.gather(*readers), 10):
            assert got == published

    run(log, body)


def test_a_cancel_for_a_generation_running_here_calls_the_callback(make_log) -> None:
    log, generation_id = make_log(), new_id()
    cancelled: list[str] = []
    log.on_cancel(cancelled.append)

    async def body() -> None:
        await log.publish(generation_id, "created", {})
        await log.request_cancel(generation_id)
        assert cancelled == [generation_id]

    run(log, body)


def test_event_log_is_chosen_from_the_settings(settings) -> None:
    events.event_log.cache_clear()
    try:
        settings.REDIS_URL = ""
        assert type(events.event_log()) is LocalEventLog
        assert events.event_log() is events.event_log()
        events.event_log.cache_clear()
        settings.REDIS_URL = "redis://127.0.0.1:6379/15"
        assert type(events.event_log()) is RedisEventLog
    finally:
        events.event_log.cache_clear()


# Through Redis

READER = """
import asyncio, json, sys
import django
django.setup()
from conversations.events import RedisEventLog

async def main():
    log = RedisEventLog()
    try:
        async for event in log.read(sys.argv[1], after=int(sys.argv[2])):
            print(json.dumps([event.seq, event.name, event.data]), flush=True)
    finally:
        await log.close()

asyncio.run(main())
"""


def test_a_reader_in_another_process_gets_the_same_events(redis_url, redis_client) -> None:
    log, generation_id = RedisEventLog(redis_url), new_id()

    async def body() -> None:
        published = [await log.publish(generation_id, "created", {"response_id": "m1", "request": None})]
        published += [await log.publish(generation_id, "delta", {"delta": f"é{i} "}) for i in range(4)]
        await until(lambda: redis_client.xlen(stream_key(generation_id)) == 5)
        env = {**os.environ, "REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": "chatapi.settings"}
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, generation_id, "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            lines = [await asyncio.wait_for(asyncio.to_thread(reader.stdout.readline), 30)]  # type: ignore[union-attr]
            # Now it follows the live generation.
            for i in range(4, 10):
                published.append(await log.publish(generation_id, "delta", {"delta": f"é{i} "}))
                await asyncio.sleep(0.01)
            published.append(await log.publish(generation_id, "completed", {"response": {"text": "…"}}))
            rest = await asyncio.wait_for(asyncio.to_thread(reader.stdout.read), 30)  # type: ignore[union-attr]
            assert reader.wait(timeout=10) == 0
        finally:
            if reader.poll() is None:
                reader.kill()
        got = [json.loads(line) for line in lines + rest.splitlines()]
        assert got == [[event.seq, event.name, event.data] for event in published[2:]]

    run(log, body)


def test_stream_entries_have_the_seq_as_id_and_expire_after_the_end(redis_url, redis_client, settings) -> None:
    log, generation_id = RedisEventLog(redis_url), new_id()
    key = stream_key(generation_id)

    async def body() -> None:
        await log.publish(generation_id, "created", {"response_id": "m1"})
        await log.publish(generation_id, "delta", {"delta": "hi"})
        await until(lambda: redis_client.xlen(key) == 2)
        assert redis_client.ttl(key) > settings.CHATAPI_GENERATION_LOG_TTL  # a day, in case this worker dies
        await log.publish(generation_id, "completed", {"response": None})
        await until(lambda: redis_client.xlen(key) == 3)

    run(log, body)
    assert redis_client.xrange(key) == [
        (b"0-1", {b"e": b"created", b"d": b'{"response_id": "m1"}'}),
        (b"0-2", {b"e": b"delta", b"d": b'{"delta": "hi"}'}),
        (b"0-3", {b"e": b"completed", b"d": b'{"response": null}'}),
    ]
    assert 0 < redis_client.ttl(key) <= settings.CHATAPI_GENERATION_LOG_TTL


def test_another_instance_replays_follows_and_sees_heartbeats(redis_url, redis_client) -> None:
    """A RedisEventLog that does not run the generation reads it from Redis, like another worker."""
    log, other, generation_id = RedisEventLog(redis_url), RedisEventLog(redis_url), new_id()

    async def body() -> None:
        published = [await log.publish(generation_id, "created", {})]
        published += [await log.publish(generation_id, "delta", {"delta": str(i)}) for i in range(3)]
        await until(lambda: redis_client.xlen(stream_key(generation_id)) == 4)
        assert not other.is_local(generation_id)
        readers = [asyncio.create_task(collect(other, generation_id, after=n, heartbeat=0.05)) for n in range(5)]
        await asyncio.sleep(0.3)
        published.append(await log.publish(generation_id, "completed", {}))
        for after, reader in enumerate(readers):
            got = await asyncio.wait_for(reader, 5)
            assert [event for event in got if event is not None] == published[after:]
            assert 1 <= got.count(None) <= 7  # the quiet 0.3 s, in 0.05 s heartbeats
        assert await collect(other, generation_id, after=5) == []
        await other.close()

    run(log, body)


def test_a_replay_from_before_the_trimmed_events_is_unavailable(redis_url, redis_client, settings) -> None:
    settings.CHATAPI_GENERATION_LOG_MAXLEN = 10
    log, other, generation_id = RedisEventLog(redis_url), RedisEventLog(redis_url), new_id()

    async def body() -> None:
        for i in range(500):
            await log.publish(generation_id, "delta", {"delta": str(i)})
            if i % 50 == 0:
                await asyncio.sleep(0.03)  # several flushes, each trimming
        await log.publish(generation_id, "completed", {})
        await log.close()
        assert redis_client.xlen(stream_key(generation_id)) < 500
        with pytest.raises(LogUnavailable):
            await collect(other, generation_id, after=1)
        assert seqs(await collect(other, generation_id, after=495)) == [496, 497, 498, 499, 500, 501]
        await other.close()

    run(log, body)


def test_a_cancel_reaches_the_instance_running_the_generation(redis_url) -> None:
    running, other, generation_id = RedisEventLog(redis_url), RedisEventLog(redis_url), new_id()
    cancelled: list[str] = []

    async def body() -> None:
        running.on_cancel(cancelled.append)
        await running.publish(generation_id, "created", {})
        # Until its listener has subscribed, a cancel reaches nobody: ask again until one arrives.
        deadline = time.monotonic() + 5
        while not cancelled:
            assert time.monotonic() < deadline, "the cancel never arrived"
            await other.request_cancel(generation_id)
            await asyncio.sleep(0.05)
        assert set(cancelled) == {generation_id}
        await other.close()

    run(running, body)


def test_a_remote_reader_cancelled_midway_leaves_no_connection_behind(redis_url, redis_client) -> None:
    log, other, generation_id = RedisEventLog(redis_url), RedisEventLog(redis_url), new_id()

    async def body() -> None:
        await log.publish(generation_id, "created", {})
        await until(lambda: redis_client.exists(stream_key(generation_id)) == 1)
        with pytest.raises(LogMissing):
            await collect(other, new_id())  # `other` has its background tasks now
        reading = {client["id"] for client in redis_client.client_list() if client["cmd"] == "xread"}  # not ours
        before = asyncio.all_tasks()
        reader = asyncio.create_task(collect(other, generation_id))
        await asyncio.sleep(0.2)
        blocked = {c["id"] for c in redis_client.client_list() if c["cmd"] == "xread" and c["id"] not in reading}
        assert blocked, "the reader should be waiting in XREAD"
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await until(lambda: not blocked & {client["id"] for client in redis_client.client_list()})
        assert asyncio.all_tasks() == before
        await other.close()
        await log.publish(generation_id, "completed", {})

    run(log, body)


def test_publishing_goes_on_when_redis_is_unreachable(caplog, quick_retries) -> None:
    log, generation_id = RedisEventLog(f"redis://127.0.0.1:{free_port()}/0"), new_id()
    cancelled: list[str] = []
    log.on_cancel(cancelled.append)

    async def body() -> None:
        await log.publish(generation_id, "created", {})
        reader = asyncio.create_task(collect(log, generation_id))
        published = [Event(1, "created", {})] + [
            await log.publish(generation_id, "delta", {"delta": str(i)}) for i in range(20)
        ]
        await asyncio.sleep(0.3)  # several tries of the flusher
        published.append(await log.publish(generation_id, "completed", {}))
        assert await asyncio.wait_for(reader, 5) == published
        await log.request_cancel(generation_id)  # running here: no Redis needed
        assert cancelled == [generation_id]
        with pytest.raises(LogUnavailable):
            await log.request_cancel(new_id())
        with pytest.raises(LogUnavailable):
            await collect(log, new_id())

    with caplog.at_level(logging.WARNING, logger="conversations.events"):
        started = time.monotonic()
        run(log, body)
        assert time.monotonic() - started < 5
    unreachable = [r for r in caplog.records if "generation events are kept" in r.getMessage()]
    assert len(unreachable) == 1


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to stop and start one")
def test_events_published_while_redis_is_down_reach_it_when_it_is_back(caplog, quick_retries, tmp_path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    def start_redis() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                return server
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    server = start_redis()
    log, other, generation_id = RedisEventLog(url), RedisEventLog(url), new_id()
    client = redis.Redis.from_url(url)
    key = stream_key(generation_id)

    async def body() -> None:
        nonlocal server
        published = [await log.publish(generation_id, "created", {})]
        await until(lambda: client.xlen(key) == 1)
        server.terminate()
        server.wait()
        published += [await log.publish(generation_id, "delta", {"delta": str(i)}) for i in range(3)]
        await asyncio.sleep(0.2)
        server = start_redis()  # empty: what was sent before is lost with the old one
        published.append(await log.publish(generation_id, "completed", {}))
        await until(lambda: client.xlen(key) == 4)
        assert await collect(other, generation_id, after=1) == published[1:]
        with pytest.raises(LogUnavailable):
            await collect(other, generation_id)
        await other.close()

    try:
        with caplog.at_level(logging.WARNING, logger="conversations.events"):
            run(log, body)
    finally:
        server.terminate()
        server.wait()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("generation events are kept" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


def test_with_redis_a_finished_log_is_kept_here_briefly_then_read_from_redis(
    redis_url, redis_client, monkeypatch
) -> None:
    # The worker's own copy of a finished reply goes once Redis has every event; readers here then read Redis's.
    monkeypatch.setattr(events, "LOCAL_KEEP_SECONDS", 0.3)
    log, generation_id = RedisEventLog(redis_url), new_id()

    async def body() -> None:
        published = await publish_reply(log, generation_id, deltas=2)
        await until(lambda: redis_client.xlen(stream_key(generation_id)) == 4)
        assert log.is_local(generation_id)
        await asyncio.sleep(0.4)
        assert not log.is_local(generation_id)
        assert await collect(log, generation_id) == published

    run(log, body)


def test_with_redis_down_a_finished_log_is_kept_here_until_redis_has_it(caplog, quick_retries, monkeypatch) -> None:
    monkeypatch.setattr(events, "LOCAL_KEEP_SECONDS", 0.1)
    log, generation_id = RedisEventLog(f"redis://127.0.0.1:{free_port()}/0"), new_id()  # nothing listens there

    async def body() -> None:
        published = await publish_reply(log, generation_id, deltas=1)
        await asyncio.sleep(0.5)  # flushes have failed meanwhile
        assert log.is_local(generation_id)
        assert await collect(log, generation_id) == published

    with caplog.at_level(logging.WARNING, logger="conversations.events"):
        run(log, body)
