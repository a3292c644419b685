"""A stored reply's max_parallel slot, with Redis: removed by the round trip that sends the reply's last event
(not one of its own), and free at once for this worker's next request of the key meanwhile."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from accounts import limits
from accounts.models import APIKey
from chatapi.errors import RateLimited
from conversations import events
from conversations.events import RedisEventLog

REDIS = os.environ.get("CHATAPI_TEST_LIMITS_REDIS", "redis://127.0.0.1:6379/13")


@pytest.fixture
def redis_client(settings: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS} ({exc}); set CHATAPI_TEST_LIMITS_REDIS to run this test")
    settings.REDIS_URL = REDIS
    yield client
    client.close()


@pytest.fixture
def slow_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush a test can see coming: 0.5 s after the events it sends were published."""
    monkeypatch.setattr(events, "FLUSH_INTERVAL", 0.5)


def key_with(**limits_: int) -> APIKey:
    return APIKey(id=uuid.uuid4(), **limits_)


async def admitted(api_key: APIKey) -> limits.Slot:
    slot = await limits.limit_admit(SimpleNamespace(auth=api_key))  # type: ignore[arg-type]
    assert slot is not None
    return slot


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run(log: RedisEventLog, body: Callable[[], Any]) -> None:
    async def main() -> None:
        try:
            await body()
        finally:
            await log.close()

    asyncio.run(main())


def test_a_slot_leaves_redis_with_the_flush_of_the_replys_last_event(redis_client, slow_flushes) -> None:
    api_key, log, generation_id = key_with(max_parallel=1), RedisEventLog(REDIS), uuid.uuid4().hex
    held = limits.slots_key(str(api_key.pk))
    stream = events.stream_key(generation_id)

    async def body() -> None:
        slot = await admitted(api_key)
        await log.publish(generation_id, "created", {})
        await slot.release_along(log)
        await log.publish(generation_id, "completed", {})
        # Nothing of its own went to Redis: the slot is still there, with the events not sent yet.
        assert redis_client.zcard(held) == 1 and redis_client.exists(stream) == 0
        await until(lambda: redis_client.exists(stream) == 1)
        assert redis_client.zcard(held) == 0  # gone in the same round trip
        await until(lambda: str(api_key.pk) not in limits._releasing)

    try:
        run(log, body)
    finally:
        redis_client.delete(held, stream)


def test_before_that_flush_this_worker_admits_the_key_again_and_another_does_not(redis_client, slow_flushes) -> None:
    api_key, log = key_with(max_parallel=1), RedisEventLog(REDIS)
    held = limits.slots_key(str(api_key.pk))

    async def body() -> None:
        first = await admitted(api_key)
        await first.release_along(log)
        # Another worker, which knows nothing of this one's pending removal: the slot still counts there.
        elsewhere = await limits.counter().admit(
            str(api_key.pk), rpm=0, max_parallel=1, slot_id="elsewhere", now=time.time(), lease_end=time.time() + 60
        )
        assert elsewhere.refused_by == "max_parallel"
        # Here, the admission removes it first: the client that had its answer may ask again at once.
        second = await admitted(api_key)
        assert [m.decode() for m in redis_client.zrange(held, 0, -1)] == [second.id]
        with pytest.raises(RateLimited):  # and the limit still holds
            await admitted(api_key)
        await second.release()
        assert redis_client.zcard(held) == 0

    try:
        run(log, body)
    finally:
        redis_client.delete(held)


def test_a_worker_that_stops_sends_the_removals_still_pending(redis_client, slow_flushes) -> None:
    api_key, log = key_with(max_parallel=1), RedisEventLog(REDIS)
    held = limits.slots_key(str(api_key.pk))

    async def body() -> None:
        slot = await admitted(api_key)
        await slot.release_along(log)
        assert redis_client.zcard(held) == 1

    try:
        run(log, body)  # closes the log at once, before its flusher's turn
        assert redis_client.zcard(held) == 0
    finally:
        redis_client.delete(held)
