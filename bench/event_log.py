"""Micro-benchmark of the generation event logs: CPU and wall time per event, with a local reader per generation.

    .venv/bin/python bench/event_log.py              # 1,000 generations x 50 events, as fast as the loop goes
    .venv/bin/python bench/event_log.py --rate 50    # each generation at 50 events/s: the target load of a worker

Runs on uvloop (what uvicorn uses when it is installed) unless --loop asyncio. The Redis rows use REDIS_URL, or
redis://127.0.0.1:6379/15, and delete their streams afterwards. "pipelined XADDs" is for comparison only: the same
flusher sending a pipeline of XADD commands rather than its one script call per flush.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatapi.settings")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402

from conversations.events import Entry, EventLog, LocalEventLog, RedisEventLog, stream_key  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"


class PipelinedXaddLog(RedisEventLog):
    """For comparison: the same flusher, sending a pipeline of XADD (and EXPIRE) commands instead of the script."""

    async def _send(
        self, rt: Any, keys: list[str], entries: list[Entry], removed: list[tuple[int, str]]
    ) -> tuple[int, str]:
        pipe = rt.client.pipeline(transaction=False)
        for index, member in removed:
            pipe.zrem(keys[index - 1], member)
        maxlen = settings.CHATAPI_GENERATION_LOG_MAXLEN
        for index, entry_id, name, data, expire in entries:
            pipe.xadd(keys[index - 1], {"e": name, "d": data}, id=entry_id, maxlen=maxlen)
            if expire:
                pipe.expire(keys[index - 1], expire)
        results = await pipe.execute(raise_on_error=False)
        refused = [r for r in results if isinstance(r, redis.ResponseError) and "equal or smaller" not in str(r)]
        return len(refused), str(refused[0]) if refused else ""


async def generation(log: EventLog | None, generation_id: str, events: int, interval: float) -> int:
    """Publish `events` events (created, deltas, completed) with a local reader following them; the events read.

    Without a log, only the pauses between events: what the loop costs anyway.
    """
    if log is None:
        for _ in range(events - 2):
            await asyncio.sleep(interval)
        return events
    await log.publish(generation_id, "created", {"conversation_id": "c", "request": None, "response_id": "m"})
    reader = asyncio.create_task(count(log, generation_id))
    for _ in range(events - 2):
        await log.publish(generation_id, "delta", {"id": "m", "delta": "token "})
        await asyncio.sleep(interval)
    await log.publish(generation_id, "completed", {"response": {"id": "m", "content": "token " * (events - 2)}})
    return await reader


async def count(log: EventLog, generation_id: str) -> int:
    return sum([1 async for event in log.read(generation_id, heartbeat=15.0) if event is not None])


async def measure(
    log: EventLog | None, prefix: str, generations: int, events: int, interval: float
) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    read = await asyncio.gather(*(generation(log, f"{prefix}-{i}", events, interval) for i in range(generations)))
    if log is not None:
        await log.close()  # RedisEventLog: what is still unsent goes now, and counts
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert read == [events] * generations, "a reader missed events"
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generations", type=int, default=1000)
    parser.add_argument("--events", type=int, default=50, help="events per generation (at least 2)")
    parser.add_argument("--rate", type=float, default=0.0, help="events per second per generation (0: flat out)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    interval = 1 / args.rate if args.rate else 0.0
    total = args.generations * args.events
    sync_redis = redis.Redis.from_url(REDIS_URL)
    try:
        sync_redis.ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis is not reachable at {REDIS_URL}: {exc}")

    rate = f"{args.rate:g} events/s each" if args.rate else "flat out"
    print(f"{args.generations} generations x {args.events} events, {rate}, {args.loop}")
    print(f"{'log':<24} {'CPU us/event':>12} {'wall s':>8} {'CPU/wall':>9}")
    makers: list[tuple[str, Callable[[], EventLog | None]]] = [
        ("(no log: pauses only)", lambda: None),
        ("LocalEventLog", LocalEventLog),
        ("RedisEventLog", lambda: RedisEventLog(REDIS_URL)),
        ("pipelined XADDs", lambda: PipelinedXaddLog(REDIS_URL)),
    ]
    for label, make in makers:
        prefix = f"bench-{secrets.token_hex(4)}"
        log = make()
        cpu, wall = asyncio.run(measure(log, prefix, args.generations, args.events, interval))
        print(f"{label:<24} {cpu / total * 1e6:>12.1f} {wall:>8.2f} {cpu / wall:>9.0%}")
        if isinstance(log, RedisEventLog):
            streams = list(sync_redis.scan_iter(match=stream_key(f"{prefix}-*"), count=1000))
            lengths = {sync_redis.xlen(key) for key in streams}
            assert len(streams) == args.generations and lengths == {args.events}, "Redis did not get every event"
            sync_redis.delete(*streams)


if __name__ == "__main__":
    main()
