"""Event logs of generations: what a reply being generated publishes, and what every stream of it reads."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from asgiref.sync import AsyncToSync, async_to_sync
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# The last event of every generation.
TERMINAL = frozenset({"completed", "error"})

CANCEL_CHANNEL = "chatapi:cancel"
# Events published within this time go to Redis together, in one round trip: the CPU cost per event is then
# a small part of a round trip rather than a whole one.
FLUSH_INTERVAL = 0.02
# At most this many events per round trip, so that the backlog of an outage is sent in bounded pieces.
FLUSH_MAX_EVENTS = 10_000
RETRY_DELAY = 1.0
# A Redis that has not answered a command within this many seconds (beyond its XREAD BLOCK) is taken to be down.
REDIS_TIMEOUT = 5.0
# With Redis, how long this worker keeps its own copy of a finished generation's events once Redis has them
# all: readers here after that read Redis's, which keeps them CHATAPI_GENERATION_LOG_TTL. (A copy kept the whole
# TTL was ~13 KB a reply held for ten minutes: most of a busy worker's memory.) A log with events not yet in
# Redis (unsent, or in a flush not yet answered) stays until they are, or until the TTL.
LOCAL_KEEP_SECONDS = 10.0
# A reader waiting without a heartbeat still hears from Redis this often, so that a dead connection shows.
MAX_BLOCK = 5.0
# The stream of a generation whose worker died before its terminal event still goes away, a day later.
UNFINISHED_EXPIRY = 24 * 3600
READ_COUNT = 1000

# What a flush sends per event: (index of its stream in KEYS, entry id "0-{seq}", name, JSON data, seconds to EXPIRE
# the stream in after adding it, or 0).
Entry = tuple[int, str, str, str, int]

# Adds a flush's events to their streams in one command. A pipeline of XADDs was the plain way, but redis-py spends
# some 20 us of CPU on each pipelined command (packing its arguments, parsing its reply): more than a worker's
# whole budget per token. One command with a JSON list of events costs 3 us per event, and Redis about the same
# as for the XADDs themselves (bench/event_log.py). ARGV[1]: MAXLEN, ARGV[2]: the JSON list of entries, ARGV[3]: a
# JSON list of [index in KEYS of a sorted set, member] to remove (what rides along: see remove_with_next_flush).
MIRROR_SCRIPT = """
for _, r in ipairs(cjson.decode(ARGV[3])) do redis.call('ZREM', KEYS[r[1]], r[2]) end
local refused, first_error = 0, ''
for _, e in ipairs(cjson.decode(ARGV[2])) do
  local added = redis.pcall('XADD', KEYS[e[1]], 'MAXLEN', '~', ARGV[1], e[2], 'e', e[3], 'd', e[4])
  -- An event sent again after a lost reply is already there, and refused as "equal or smaller than the top item".
  if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller', 1, true) then
    refused = refused + 1
    if first_error == '' then first_error = added.err end
  end
  if e[5] > 0 then redis.call('EXPIRE', KEYS[e[1]], e[5]) end
end
return {refused, first_error}
"""


def stream_key(generation_id: str) -> str:
    return f"chatapi:gen:{generation_id}"


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a generation. `seq` (1, 2, 3, …) is its SSE id: event N is the same for every reader, forever."""

    seq: int
    name: str  # "created", "delta", "completed", "error"
    data: dict[str, Any]  # JSON-serialisable; not copied, so not to be changed once published


class LogUnavailable(Exception):
    """The log cannot be read (Redis is down, or the events after `after` were trimmed): send an error event."""


class LogMissing(LookupError):
    """No log for this generation here: it never existed, it expired, or it is another worker's (and no Redis)."""


class EventLog(ABC):
    """What the runner of a generation publishes to and its streams read from; `event_log()` gives the process's."""

    @abstractmethod
    async def publish(self, generation_id: str, name: str, data: dict[str, Any]) -> Event:
        """Append the generation's next event (seq = previous + 1) and wake its readers.

        Only the generation's runner calls it, in the worker that runs it. It never waits for I/O and never
        fails because Redis does.
        """

    @abstractmethod
    def read(
        self, generation_id: str, *, after: int = 0, heartbeat: float | None = None
    ) -> AsyncGenerator[Event | None, None]:
        """The events with seq > `after` in order, then the live ones as they come, up to the terminal one.

        Yields None whenever nothing came for `heartbeat` seconds (send a keep-alive), and carries on. Raises
        LogMissing before yielding anything if there is no such log, LogUnavailable if it cannot go on.
        Closing it early (aclose, cancellation) leaves nothing behind.
        """

    @abstractmethod
    def is_local(self, generation_id: str) -> bool:
        """Whether this process holds the generation's log: it runs here (or ran here and has not expired)."""

    @abstractmethod
    async def request_cancel(self, generation_id: str) -> None:
        """Ask the worker running the generation to cancel it: its `on_cancel` callback gets the id."""

    @abstractmethod
    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Register the process's one cancel callback, called on the loop with the id of each cancelled generation
        (ids of other workers' generations too: it ignores those it does not know)."""

    @abstractmethod
    async def close(self) -> None:
        """Send what is pending and stop the background tasks (worker shutdown)."""

    def remove_with_next_flush(self, redis_url: str, key: str, member: str, sent: Callable[[], None]) -> bool:
        """Have `member` removed from the sorted set `key` of the Redis at `redis_url` by the round trip that sends
        the events published so far (so, for a generation's runner, together with its last event), and `sent`
        called on the loop once it is done. False where this log sends nothing to that Redis: the caller removes
        it itself."""
        return False


class _Log:
    """One generation's events, and the futures of the readers waiting for the next one."""

    __slots__ = ("events", "waiters")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.waiters: list[asyncio.Future[bool]] = []

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1].name in TERMINAL


class LocalEventLog(EventLog):
    """The logs of the generations running in this process, in memory; readers are woken, never poll.

    Not thread-safe: it belongs to the process's event loop (one loop at a time).
    """

    def __init__(self) -> None:
        self._logs: dict[str, _Log] = {}
        # (time of the terminal event, generation id), oldest first: the sweep only ever looks at the head.
        self._ended: deque[tuple[float, str]] = deque()
        self._on_cancel: Callable[[str], None] | None = None

    async def publish(self, generation_id: str, name: str, data: dict[str, Any]) -> Event:
        return self._append(generation_id, name, data)

    def _append(self, generation_id: str, name: str, data: dict[str, Any]) -> Event:
        log = self._logs.get(generation_id)
        if log is None:
            log = self._logs[generation_id] = _Log()
        elif log.ended:
            raise ValueError(f"generation {generation_id} has already ended")
        event = Event(len(log.events) + 1, name, data)
        log.events.append(event)
        if log.waiters:
            for waiter in log.waiters:
                if not waiter.done():
                    waiter.set_result(True)
            log.waiters.clear()
        if name in TERMINAL:
            self._ended.append((time.monotonic(), generation_id))
            self._sweep()
        return event

    def _sweep(self) -> None:
        """Drop the logs of generations that ended more than CHATAPI_GENERATION_LOG_TTL seconds ago (or as
        _kept_after_end says)."""
        now = time.monotonic()
        expired = now - settings.CHATAPI_GENERATION_LOG_TTL
        while self._ended and self._ended[0][0] <= now - self._kept_after_end():
            ended_at, generation_id = self._ended[0]
            if ended_at > expired and not self._only_copy_elsewhere(generation_id):
                break  # the oldest must stay; the sweep looks no further than the head
            self._ended.popleft()
            self._logs.pop(generation_id, None)

    def _kept_after_end(self) -> float:
        """How long a finished generation's log is kept here at least."""
        return float(settings.CHATAPI_GENERATION_LOG_TTL)

    def _only_copy_elsewhere(self, generation_id: str) -> bool:
        """Whether the log's events are all kept elsewhere too, so that the copy here may go before the TTL."""
        return False

    async def read(
        self, generation_id: str, *, after: int = 0, heartbeat: float | None = None
    ) -> AsyncGenerator[Event | None, None]:
        self._sweep()
        log = self._logs.get(generation_id)
        if log is None:
            raise LogMissing(generation_id)
        loop = asyncio.get_running_loop()
        sent = max(after, 0)  # == the seq of the last event sent, and the index of the next one
        # A future of its own per wait (a shared one would be cancelled with the first reader cancelled), which
        # the next event resolves with True, or the heartbeat's timer with False.
        waiter: asyncio.Future[bool] | None = None
        quiet_since = loop.time()
        timer: asyncio.TimerHandle | None = None

        def heartbeat_timer() -> None:
            nonlocal timer
            timer = None
            if waiter is not None and not waiter.done():
                waiter.set_result(False)

        try:
            while True:
                while sent < len(log.events):
                    sent += 1
                    yield log.events[sent - 1]
                    quiet_since = loop.time()
                if log.ended:
                    return
                waiter = loop.create_future()
                log.waiters.append(waiter)
                if heartbeat is not None and timer is None:
                    # One timer, set again only when it goes off: one per wait costs a third of the whole wait.
                    timer = loop.call_at(quiet_since + heartbeat, heartbeat_timer)
                woken = False
                try:
                    woken = await waiter
                finally:
                    if not woken and waiter in log.waiters:  # timer or cancellation, rather than an event
                        log.waiters.remove(waiter)
                if woken:
                    continue
                assert heartbeat is not None  # only its timer resolves a waiter with False
                if loop.time() >= quiet_since + heartbeat:  # else events came since the timer was set
                    yield None
                    quiet_since = loop.time()
        finally:
            if timer is not None:
                timer.cancel()

    def is_local(self, generation_id: str) -> bool:
        self._sweep()
        return generation_id in self._logs

    async def request_cancel(self, generation_id: str) -> None:
        if self._on_cancel is not None:
            self._on_cancel(generation_id)

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        self._on_cancel = callback

    async def close(self) -> None:
        pass  # nothing runs in the background


@dataclass
class _Runtime:
    """What RedisEventLog keeps per event loop: redis-py's asyncio client and tasks belong to one loop."""

    loop: asyncio.AbstractEventLoop
    client: redis.asyncio.Redis
    mirror: AsyncScript  # MIRROR_SCRIPT
    wake: asyncio.Event  # set when there are events to send, or by close()
    closing: bool = False
    flusher: asyncio.Task[None] | None = None
    listener: asyncio.Task[None] | None = None


class RedisEventLog(LocalEventLog):
    """The local log, mirrored to Redis Streams for the readers in other workers; other workers' logs read from Redis.

    A generation's stream is `chatapi:gen:{id}`, entry id `0-{seq}` (the SSE id), fields `e` (name) and `d` (JSON).
    Readers of a generation running here read the local log: no round trip per event. Publishing never touches
    Redis: one background task sends what was published, every FLUSH_INTERVAL, in one command (MIRROR_SCRIPT).
    When Redis is unreachable the events stay unsent and are sent again when it is back (ids are explicit, so a
    resent event that did arrive is refused as a duplicate, not stored twice), as long as the local log is kept.
    """

    def __init__(self, url: str | None = None) -> None:
        super().__init__()
        self._url = url or settings.REDIS_URL
        self._rt: _Runtime | None = None
        # generation id → seq of its first event not yet sent to Redis
        self._unsent: dict[str, int] = {}
        self._sending: dict[str, int] = {}  # the batch of the flush in flight
        # What the next flush also removes: (sorted set, member, called once removed)
        self._removals: list[tuple[str, str, Callable[[], None]]] = []
        self._outage = False  # so that an outage is logged once, not once per try

    def _here(self) -> _Runtime:
        """The client and tasks of the running loop, started on first use on a loop."""
        loop = asyncio.get_running_loop()
        rt = self._rt
        if rt is None or rt.loop is not loop:
            # Its own retries would hold a flush or a read for seconds: the flusher tries again later, and a
            # reader's client resumes the stream. No socket_timeout: with one, redis-py sends through
            # asyncio.wait_for, which on Python 3.11 can swallow a cancellation (and close(), or the loop's
            # shutdown, then waits forever for the task); the calls here have an asyncio.timeout instead.
            client = redis.asyncio.from_url(
                self._url, socket_connect_timeout=REDIS_TIMEOUT, retry=Retry(NoBackoff(), 1)
            )
            mirror = client.register_script(MIRROR_SCRIPT)
            rt = self._rt = _Runtime(loop=loop, client=client, mirror=mirror, wake=asyncio.Event())
            # No background tasks on a loop that lives for one call of a synchronous caller (Django's test
            # client runs each async view so): it ends with that call, cancelling them midway through
            # redis-py, whose clean-up does not always survive it. The next loop's flusher sends its events.
            if getattr(AsyncToSync.executors, "current", None) is None:
                rt.flusher = loop.create_task(self._flush_forever(rt), name="chatapi event log flusher")
                if self._on_cancel is not None:
                    rt.listener = loop.create_task(self._listen(rt), name="chatapi cancel listener")
            if self._unsent or self._removals:  # left by a loop that ended before its flusher sent them
                rt.wake.set()
        return rt

    async def publish(self, generation_id: str, name: str, data: dict[str, Any]) -> Event:
        event = self._append(generation_id, name, data)
        self._unsent.setdefault(generation_id, event.seq)
        self._here().wake.set()
        return event

    def _kept_after_end(self) -> float:
        return min(LOCAL_KEEP_SECONDS, settings.CHATAPI_GENERATION_LOG_TTL)

    def _only_copy_elsewhere(self, generation_id: str) -> bool:
        return generation_id not in self._unsent and generation_id not in self._sending

    def remove_with_next_flush(self, redis_url: str, key: str, member: str, sent: Callable[[], None]) -> bool:
        if redis_url != self._url:
            return False
        self._removals.append((key, member, sent))
        self._here().wake.set()
        return True

    async def _flush_forever(self, rt: _Runtime) -> None:
        while not rt.closing:  # then close() sends the rest
            await rt.wake.wait()
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                sent = await self._flush(rt)
            except Exception:  # not Redis (that is handled): a bug, which must not end the mirroring for good
                logger.exception("Could not send generation events to Redis; they are dropped")
                continue
            if not sent:
                if _cancelling():
                    return  # as in _listen: a cancellation that came back as a Redis error
                await asyncio.sleep(RETRY_DELAY)

    async def _flush(self, rt: _Runtime) -> bool:
        """Send the unsent events (FLUSH_MAX_EVENTS at most) in one round trip; False if Redis failed (kept unsent)."""
        rt.wake.clear()
        batch, self._unsent = self._unsent, {}
        self._sending = batch  # still unsent until Redis has them (the sweep keeps their logs)
        removals, self._removals = self._removals, []
        ttl = settings.CHATAPI_GENERATION_LOG_TTL
        keys: list[str] = []
        entries: list[Entry] = []
        for generation_id, first in batch.items():
            log = self._logs.get(generation_id)
            if log is None:
                continue  # expired here before Redis could take it
            room = FLUSH_MAX_EVENTS - len(entries)
            if room <= 0:
                self._unsent[generation_id] = first
                continue
            events = log.events[first - 1 : first - 1 + room]
            if events[-1].seq < len(log.events):
                self._unsent[generation_id] = events[-1].seq + 1
            try:
                data = [json.dumps(event.data) for event in events]
            except (TypeError, ValueError):  # a bug in the runner: only this generation's readers elsewhere miss it
                logger.exception("Events of generation %s are not JSON: not sent to Redis", generation_id)
                continue
            keys.append(stream_key(generation_id))
            for event, event_data in zip(events, data, strict=True):
                expire = ttl if event.name in TERMINAL else UNFINISHED_EXPIRY if event.seq == 1 else 0
                entries.append((len(keys), f"0-{event.seq}", event.name, event_data, expire))
        if self._unsent:
            rt.wake.set()
        if not entries and not removals:
            self._sending = {}
            return True
        removed: list[tuple[int, str]] = []
        for key, member, _ in removals:
            keys.append(key)
            removed.append((len(keys), member))
        try:
            refused, error = await self._send(rt, keys, entries, removed)
        except BaseException as exc:
            # All of the batch again: what came since is newer, and what did arrive is refused as a duplicate.
            self._unsent.update(batch)
            self._sending = {}
            self._removals[:0] = removals
            rt.wake.set()
            if not isinstance(exc, (RedisError, OSError)):
                raise
            if not self._outage:
                self._outage = True
                logger.warning("Redis is unreachable (%s): generation events are kept and sent when it is back", exc)
            return False
        self._sending = {}
        if self._outage:
            self._outage = False
            logger.warning("Redis is reachable again: the generation events kept meanwhile are sent")
        if refused:
            logger.warning("Redis refused %d of %d generation events, e.g.: %s", refused, len(entries), error)
        for _, _, sent in removals:
            sent()
        return True

    async def _send(
        self, rt: _Runtime, keys: list[str], entries: list[Entry], removed: list[tuple[int, str]]
    ) -> tuple[int, str]:
        """Add the entries to their streams (KEYS[index]) and remove the members `removed` names from their sorted
        sets (KEYS[index]); how many entries Redis refused, and the first error."""
        args: list[int | str] = [settings.CHATAPI_GENERATION_LOG_MAXLEN, json.dumps(entries), json.dumps(removed)]
        async with asyncio.timeout(REDIS_TIMEOUT):
            refused, error = await rt.mirror(keys=keys, args=args)
        return int(refused), error.decode() if isinstance(error, bytes) else str(error)

    def read(
        self, generation_id: str, *, after: int = 0, heartbeat: float | None = None
    ) -> AsyncGenerator[Event | None, None]:
        if self.is_local(generation_id):
            return super().read(generation_id, after=after, heartbeat=heartbeat)
        return self._read_redis(generation_id, after, heartbeat)

    async def _read_redis(
        self, generation_id: str, after: int, heartbeat: float | None
    ) -> AsyncGenerator[Event | None, None]:
        client = self._here().client
        key = stream_key(generation_id)
        last = max(after, 0)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                # redis-py's own types say every command may answer anything: these are lists of (id, fields).
                entries: Any = await client.xrange(key, f"(0-{last}", "+", count=READ_COUNT)
                newest: Any = await client.xrevrange(key, "+", "-", count=1) if not entries else None
            if not entries:
                if not newest:
                    raise LogMissing(generation_id)
                if _seq(newest[0][0]) <= last and newest[0][1][b"e"].decode() in TERMINAL:
                    return  # the reader has had everything
            quiet = heartbeat if heartbeat is not None else math.inf
            quiet_until = time.monotonic() + quiet
            while True:
                for entry_id, fields in entries:
                    seq = _seq(entry_id)
                    if seq != last + 1:  # trimmed by MAXLEN, or never sent (Redis was down until the log expired)
                        raise LogUnavailable(f"events {last + 1} to {seq - 1} of {generation_id} are not in Redis")
                    last = seq
                    event = Event(seq, fields[b"e"].decode(), json.loads(fields[b"d"]))
                    yield event
                    if event.name in TERMINAL:
                        return
                if entries:
                    quiet_until = time.monotonic() + quiet
                elif time.monotonic() >= quiet_until:
                    yield None
                    quiet_until = time.monotonic() + quiet
                # Redis never answers a timed-out XREAD early: rounded up, the heartbeat is due when it answers.
                block = math.ceil(min(quiet_until - time.monotonic(), MAX_BLOCK) * 1000)
                async with asyncio.timeout(block / 1000 + REDIS_TIMEOUT):
                    reply: Any = await client.xread({key: f"0-{last}"}, count=READ_COUNT, block=max(block, 1))
                entries = reply[0][1] if reply else []
        except (RedisError, OSError) as exc:
            raise LogUnavailable(f"cannot read the events of {generation_id} from Redis: {exc}") from exc

    async def request_cancel(self, generation_id: str) -> None:
        if self.is_local(generation_id):
            await super().request_cancel(generation_id)
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._here().client.publish(CANCEL_CHANNEL, generation_id)
        except (RedisError, OSError) as exc:
            raise LogUnavailable(f"cannot reach Redis to cancel {generation_id}: {exc}") from exc

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        super().on_cancel(callback)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # the listener starts with the first use on a loop
        rt = self._here()
        if rt.listener is None and rt.flusher is not None:  # (no background tasks: see _here)
            rt.listener = rt.loop.create_task(self._listen(rt), name="chatapi cancel listener")

    async def _listen(self, rt: _Runtime) -> None:
        """Hand each generation id published on the cancel channel to the callback."""
        warned = False
        while True:
            try:
                async with rt.client.pubsub() as pubsub:
                    async with asyncio.timeout(REDIS_TIMEOUT):
                        await pubsub.subscribe(CANCEL_CHANNEL)
                    warned = False
                    async for message in pubsub.listen():
                        if message["type"] == "message" and self._on_cancel is not None:
                            # Through the loop, so that a callback that raises is logged and the listener lives on.
                            rt.loop.call_soon(self._on_cancel, message["data"].decode())
            except (RedisError, OSError) as exc:
                if _cancelling():
                    return  # redis-py can turn a cancellation into a connection error: it was a cancellation
                if not warned:
                    warned = True
                    logger.warning("Redis is unreachable (%s): cancels from other workers wait until it is back", exc)
                await asyncio.sleep(RETRY_DELAY)

    async def close(self) -> None:
        rt, self._rt = self._rt, None
        if rt is None:
            return
        if rt.loop is not asyncio.get_running_loop():
            return  # that loop has ended, and its tasks with it
        rt.closing = True
        rt.wake.set()
        if rt.flusher is not None:
            await rt.flusher  # within a flush, or a RETRY_DELAY
        if rt.listener is not None:
            rt.listener.cancel()
            await asyncio.gather(rt.listener, return_exceptions=True)
        # What is pending, in one or more round trips; if Redis is down, it is lost with the process.
        while (self._unsent or self._removals) and await self._flush(rt):
            pass
        await rt.client.aclose()


def cancel_generations(generation_ids: list[str]) -> None:
    """From synchronous code (a service, once a deletion has committed): ask whichever worker runs each of
    these generations to stop it. One that cannot be told (Redis is down) runs to its end."""

    async def tell() -> None:
        log = event_log()
        for generation_id in generation_ids:
            try:
                await log.request_cancel(generation_id)
            except LogUnavailable as exc:
                logger.warning("Generation %s could not be stopped: %s", generation_id, exc)

    if generation_ids:
        async_to_sync(tell)()


def _cancelling() -> bool:
    """Whether the running task is being cancelled (a loop that ends cancels its tasks once, and waits)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _seq(entry_id: bytes) -> int:
    return int(entry_id.rpartition(b"-")[2])


@functools.cache
def event_log() -> EventLog:
    """The process's event log, chosen once: through Redis when REDIS_URL is set, else within this process."""
    return RedisEventLog(settings.REDIS_URL) if settings.REDIS_URL else LocalEventLog()
