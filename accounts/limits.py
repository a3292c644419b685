"""Per-key limits, checked before a request that calls the model stores anything or reaches the backend.

Requests a minute (`rpm`) and generations in progress (`max_parallel`) are counted across every worker in
Redis when REDIS_URL is set (one Lua script, one round trip, per request), in the process otherwise. A
generation in progress holds a *slot*: a member of the key's sorted set whose score is its lease's end,
renewed by the worker's keeper with the generations' leases and removed when the generation ends, however
it ends; a killed worker stops renewing, so its slots fall out of the count within
CHATAPI_GENERATION_LEASE_SECONDS, as its replies are reaped. A stored reply's slot is removed by the round
trip that sends its last event to Redis (Slot.release_along), not one of its own: until that flush (at most
conversations.events.FLUSH_INTERVAL later) this worker's next admission of the key removes it first, so its
client can ask again at once; another worker may count it that long. (Counting in-progress rows in the database
instead would miss the stateless `/v1` calls, which store no row, and a count then an insert lets two
concurrent requests both in.)

Tokens are only known once a reply ends; they are added to the key's row in the UPDATE that records its
usage (accounts.services.api_key_usage_record), so `tpm` and the token budget are checked here against the
row authentication has just read: no extra round trip, and a budget survives a Redis restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import redis.asyncio
from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import APIKey, BudgetPeriod
from chatapi.errors import RateLimited

logger = logging.getLogger(__name__)

REDIS_PREFIX = "chatapi:limits"
_TOTAL_START = datetime(2000, 1, 1, tzinfo=UTC)
# A spent `total` budget never resets: this is only how long a client should wait before asking again.
_TOTAL_RETRY_SECONDS = 86_400


# --- windows --------------------------------------------------------------------------------


def minute_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(second=0, microsecond=0)


def period_start(period: str, now: datetime) -> datetime:
    """Start of the budget period (`day`, `week` from Monday, `month`, `total`) holding `now`, in UTC."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.DAY:
        return day
    if period == BudgetPeriod.WEEK:
        return day - timedelta(days=day.weekday())
    if period == BudgetPeriod.MONTH:
        return day.replace(day=1)
    return _TOTAL_START


def period_end(period: str, now: datetime) -> datetime | None:
    """When the budget period holding `now` ends; None for `total`."""
    start = period_start(period, now)
    if period == BudgetPeriod.DAY:
        return start + timedelta(days=1)
    if period == BudgetPeriod.WEEK:
        return start + timedelta(days=7)
    if period == BudgetPeriod.MONTH:
        return (start + timedelta(days=32)).replace(day=1)
    return None


def budget_used(api_key: APIKey, now: datetime) -> int:
    """Tokens used in the key's current budget period."""
    if not api_key.budget_period or api_key.budget_window != period_start(api_key.budget_period, now):
        return 0
    return api_key.budget_used


def tpm_used(api_key: APIKey, now: datetime) -> int:
    return api_key.tpm_used if api_key.tpm_window == minute_start(now) else 0


def _seconds_until(then: datetime, now: datetime) -> int:
    return max(1, math.ceil((then - now).total_seconds()))


# --- counters -------------------------------------------------------------------------------


@dataclass
class Counted:
    allowed: bool
    refused_by: str  # "" when allowed, "rpm" or "max_parallel"
    requests: int  # requests counted in this minute (with this one, when allowed)


class Counter(Protocol):
    async def admit(
        self,
        key_id: str,
        *,
        rpm: int,
        max_parallel: int,
        slot_id: str,
        now: float,
        lease_end: float,
        released: Collection[str] = (),
    ) -> Counted:
        """Count a request (and take a slot, with `max_parallel`) unless a limit is reached; the key's slots
        `released` (whose removal has not reached the counter yet) are removed first."""

    async def release(self, key_id: str, slot_id: str) -> None: ...

    async def refund(self, key_id: str, now: float) -> None:
        """Take back one request admit() counted at `now` (in its minute), as if it had not been made."""

    async def renew(self, slots: list[tuple[str, str]], lease_end: float) -> None: ...

    async def in_progress(self, key_id: str, now: float) -> int: ...

    async def requests_used(self, key_id: str, now: float) -> int | None: ...


class LocalCounter:
    """In the process (no REDIS_URL): one worker, so its own memory is every worker's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, tuple[int, int]] = {}  # key id -> (minute, requests in it)
        self._slots: dict[str, dict[str, float]] = {}  # key id -> slot id -> lease end

    _PRUNE_AT = 10_000  # counted ids (client addresses too) past which past minutes' counts are dropped

    async def admit(
        self,
        key_id: str,
        *,
        rpm: int,
        max_parallel: int,
        slot_id: str,
        now: float,
        lease_end: float,
        released: Collection[str] = (),
    ) -> Counted:
        minute = int(now // 60)
        with self._lock:
            if len(self._requests) > self._PRUNE_AT:
                self._requests = {k: v for k, v in self._requests.items() if v[0] == minute}
            window, used = self._requests.get(key_id, (minute, 0))
            used = used if window == minute else 0
            if rpm and used >= rpm:
                return Counted(False, "rpm", used)
            if max_parallel:
                slots = self._slots.setdefault(key_id, {})
                for expired in [s for s, end in slots.items() if end <= now]:
                    del slots[expired]
                if len(slots) >= max_parallel:
                    return Counted(False, "max_parallel", used)
                slots[slot_id] = lease_end
            self._requests[key_id] = (minute, used + 1)
            return Counted(True, "", used + 1)

    async def release(self, key_id: str, slot_id: str) -> None:
        with self._lock:
            self._slots.get(key_id, {}).pop(slot_id, None)

    async def refund(self, key_id: str, now: float) -> None:
        minute = int(now // 60)
        with self._lock:
            window, used = self._requests.get(key_id, (minute, 0))
            if window == minute and used > 0:
                self._requests[key_id] = (minute, used - 1)

    async def renew(self, slots: list[tuple[str, str]], lease_end: float) -> None:
        with self._lock:
            for key_id, slot_id in slots:
                held = self._slots.get(key_id, {})
                if slot_id in held:
                    held[slot_id] = lease_end

    async def in_progress(self, key_id: str, now: float) -> int:
        with self._lock:
            return sum(end > now for end in self._slots.get(key_id, {}).values())

    async def requests_used(self, key_id: str, now: float) -> int | None:
        with self._lock:
            window, used = self._requests.get(key_id, (0, 0))
            return used if window == int(now // 60) else 0


# KEYS[1]: the key's requests in this minute; KEYS[2]: its slots (sorted set: slot id -> lease end).
# ARGV: rpm (0: none), max_parallel (0: none), now, lease end, slot id, then the ids of slots released whose
# removal has not been sent yet. Check and count in one step, so that two workers can never both take the
# last request or the last slot.
_ADMIT = """
local rpm = tonumber(ARGV[1])
local parallel = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if rpm > 0 and used >= rpm then return {0, 1, used} end
if parallel > 0 then
  for i = 6, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
  if redis.call('ZCARD', KEYS[2]) >= parallel then return {0, 2, used} end
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
  redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[4]) - tonumber(ARGV[3])) + 60)
end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], 120) end
return {1, 0, used}
"""

# KEYS[1]: a key's requests in one minute. Take one back, never below zero, never making a key that has
# expired (a DECR would, without an expiry).
_REFUND = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class RedisCounter:
    """Across workers, in Redis. A Redis that cannot be reached lets requests through (logged): limits
    must not take the service down with them."""

    def __init__(self, url: str) -> None:
        self.url = url
        # redis-py's asyncio clients belong to the loop they were made on.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def _client(self) -> tuple[redis.asyncio.Redis, Any, Any]:
        loop = asyncio.get_running_loop()
        made = self._clients.get(loop)
        if made is None:
            client = redis.asyncio.from_url(self.url, socket_connect_timeout=2)
            made = self._clients[loop] = (client, client.register_script(_ADMIT), client.register_script(_REFUND))
        return made

    @staticmethod
    def _keys(key_id: str, minute: int) -> list[str]:
        # One hash tag per API key: both keys live in one cluster slot.
        return [f"{REDIS_PREFIX}:{{{key_id}}}:rpm:{minute}", slots_key(key_id)]

    async def admit(
        self,
        key_id: str,
        *,
        rpm: int,
        max_parallel: int,
        slot_id: str,
        now: float,
        lease_end: float,
        released: Collection[str] = (),
    ) -> Counted:
        _, script, _ = self._client()
        try:
            allowed, refused, used = await script(
                keys=self._keys(key_id, int(now // 60)), args=[rpm, max_parallel, now, lease_end, slot_id, *released]
            )
        except (RedisError, OSError) as exc:
            logger.warning("Limits not checked, Redis cannot be reached: %s", exc)
            return Counted(True, "", 0)
        return Counted(bool(allowed), {0: "", 1: "rpm", 2: "max_parallel"}[int(refused)], int(used))

    async def release(self, key_id: str, slot_id: str) -> None:
        client, _, _ = self._client()
        try:
            await client.zrem(self._keys(key_id, 0)[1], slot_id)
        except (RedisError, OSError) as exc:
            logger.warning("A generation's slot could not be released (it expires with its lease): %s", exc)

    async def refund(self, key_id: str, now: float) -> None:
        _, _, script = self._client()
        try:
            await script(keys=self._keys(key_id, int(now // 60))[:1])
        except (RedisError, OSError) as exc:
            logger.warning("A counted request could not be taken back (it expires with its minute): %s", exc)

    async def renew(self, slots: list[tuple[str, str]], lease_end: float) -> None:
        client, _, _ = self._client()
        async with client.pipeline(transaction=False) as pipe:
            for key_id, slot_id in slots:
                pipe.zadd(self._keys(key_id, 0)[1], {slot_id: lease_end}, xx=True)
            await pipe.execute()

    async def in_progress(self, key_id: str, now: float) -> int:
        client, _, _ = self._client()
        return int(await client.zcount(self._keys(key_id, 0)[1], f"({now}", "+inf"))

    async def requests_used(self, key_id: str, now: float) -> int | None:
        """Requests counted this minute (one GET); None when Redis cannot be reached."""
        client, _, _ = self._client()
        try:
            return int(await client.get(self._keys(key_id, int(now // 60))[0]) or 0)
        except (RedisError, OSError) as exc:
            logger.warning("Requests this minute not read, Redis cannot be reached: %s", exc)
            return None


def slots_key(key_id: str) -> str:
    """The Redis sorted set of a key's slots."""
    return f"{REDIS_PREFIX}:{{{key_id}}}:slots"


_counters: dict[str, Counter] = {}


def counter() -> Counter:
    """The process's counter: Redis's with REDIS_URL, else its own (one per setting, for tests that change it)."""
    url = settings.REDIS_URL
    made = _counters.get(url)
    if made is None:
        made = _counters[url] = RedisCounter(url) if url else LocalCounter()
    return made


# --- slots ----------------------------------------------------------------------------------

# The slots of this worker's generations in progress, renewed with their leases: slot id -> key id.
_held: dict[str, str] = {}
# Slots released whose removal rides on a round trip not made yet (Slot.release_along): key id -> slot ids.
_releasing: dict[str, set[str]] = {}


class RemovalCarrier(Protocol):
    """A round trip to Redis made anyway, which can remove a member of a sorted set on the way
    (conversations.events.EventLog.remove_with_next_flush)."""

    def remove_with_next_flush(self, redis_url: str, key: str, member: str, sent: Callable[[], None]) -> bool: ...


@dataclass(eq=False)
class Slot:
    """A generation in progress, counted toward its key's `max_parallel` until released."""

    key_id: str
    id: str
    released: bool = False

    async def release(self) -> None:
        """Stop counting it; releasing twice does nothing."""
        if self.released:
            return
        self.released = True
        _held.pop(self.id, None)
        await counter().release(self.key_id, self.id)

    async def release_along(self, carrier: RemovalCarrier) -> None:
        """Stop counting it, in Redis by `carrier`'s next round trip rather than one of its own (else at once).
        Meanwhile this worker's admissions of the key remove it first."""
        if self.released:
            return
        key_id, slot_id = self.key_id, self.id

        def sent() -> None:  # called on the loop, after this returned
            pending = _releasing.get(key_id)
            if pending is not None:
                pending.discard(slot_id)
                if not pending:
                    del _releasing[key_id]

        made = counter()
        if not isinstance(made, RedisCounter) or not carrier.remove_with_next_flush(
            made.url, slots_key(key_id), slot_id, sent
        ):
            await self.release()
            return
        self.released = True
        _held.pop(slot_id, None)
        _releasing.setdefault(key_id, set()).add(slot_id)


def _lease_seconds() -> float:
    return float(settings.CHATAPI_GENERATION_LEASE_SECONDS)


async def slots_renew() -> None:
    """Called by the worker's keeper with the generations' leases: this worker's slots stay counted."""
    if _held:
        await counter().renew([(key_id, slot_id) for slot_id, key_id in _held.items()], time.time() + _lease_seconds())


# --- admission ------------------------------------------------------------------------------


def _reset(seconds: int) -> str:
    """OpenAI's way of writing a reset time: `1s`, `6m0s`, `2h3m0s`."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def limit_headers(api_key: APIKey, *, requests_used: int | None, now: datetime) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for the limits the key has (requests: rpm; tokens: tpm, else the
    budget)."""
    headers: dict[str, str] = {}
    to_minute_end = _seconds_until(minute_start(now) + timedelta(minutes=1), now)
    if api_key.rpm:
        headers["x-ratelimit-limit-requests"] = str(api_key.rpm)
        if requests_used is not None:
            headers["x-ratelimit-remaining-requests"] = str(max(0, api_key.rpm - requests_used))
        headers["x-ratelimit-reset-requests"] = _reset(to_minute_end)
    if api_key.tpm:
        headers["x-ratelimit-limit-tokens"] = str(api_key.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, api_key.tpm - tpm_used(api_key, now)))
        headers["x-ratelimit-reset-tokens"] = _reset(to_minute_end)
    elif api_key.budget_tokens and api_key.budget_period:
        end = period_end(api_key.budget_period, now)
        headers["x-ratelimit-limit-tokens"] = str(api_key.budget_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, api_key.budget_tokens - budget_used(api_key, now)))
        if end is not None:
            headers["x-ratelimit-reset-tokens"] = _reset(_seconds_until(end, now))
    return headers


def _refuse(message: str, *, code: str, retry_after: int, headers: dict[str, str]) -> RateLimited:
    return RateLimited(message, code=code, headers={**headers, "Retry-After": str(retry_after)})


async def limit_admit(request: Request) -> Slot | None:
    """Admit a request that is about to call the model, or raise RateLimited (429) before anything is done.
    A key with `max_parallel` gets a Slot: the caller hands it to the generation (or releases it). The
    `x-ratelimit-*` headers go on the request's answer (LimitHeadersMixin)."""
    api_key = request.auth
    if not isinstance(api_key, APIKey) or not api_key.has_limits:
        return None
    now = datetime.now(UTC)
    to_minute_end = _seconds_until(minute_start(now) + timedelta(minutes=1), now)
    if api_key.budget_tokens and api_key.budget_period:
        used = budget_used(api_key, now)
        if used >= api_key.budget_tokens:
            end = period_end(api_key.budget_period, now)
            raise _refuse(
                f"This API key has used its budget of {api_key.budget_tokens} tokens per {api_key.budget_period}.",
                code="insufficient_quota",
                retry_after=_seconds_until(end, now) if end else _TOTAL_RETRY_SECONDS,
                headers=limit_headers(api_key, requests_used=None, now=now),
            )
    if api_key.tpm and tpm_used(api_key, now) >= api_key.tpm:
        raise _refuse(
            f"This API key has used its {api_key.tpm} tokens a minute.",
            code="rate_limit_exceeded",
            retry_after=to_minute_end,
            headers=limit_headers(api_key, requests_used=None, now=now),
        )
    slot: Slot | None = None
    requests_used: int | None = None
    if api_key.rpm or api_key.max_parallel:
        key_id = str(api_key.pk)
        slot_id = uuid.uuid4().hex
        clock = now.timestamp()
        counted = await counter().admit(
            key_id,
            rpm=api_key.rpm or 0,
            max_parallel=api_key.max_parallel or 0,
            slot_id=slot_id,
            now=clock,
            lease_end=clock + _lease_seconds(),
            released=_releasing.get(key_id, ()),
        )
        requests_used = counted.requests
        if counted.refused_by == "rpm":
            raise _refuse(
                f"This API key has made its {api_key.rpm} requests a minute.",
                code="rate_limit_exceeded",
                retry_after=to_minute_end,
                headers=limit_headers(api_key, requests_used=requests_used, now=now),
            )
        if counted.refused_by == "max_parallel":
            raise _refuse(
                f"This API key has {api_key.max_parallel} replies in progress, as many as it may.",
                code="rate_limit_exceeded",
                retry_after=1,
                headers=limit_headers(api_key, requests_used=requests_used, now=now),
            )
        if api_key.max_parallel:
            slot = Slot(key_id=key_id, id=slot_id)
            _held[slot_id] = key_id
    request.limit_headers = limit_headers(api_key, requests_used=requests_used, now=now)  # type: ignore[attr-defined]
    return slot


# --- failed admin_key attempts ----------------------------------------------------------------


@dataclass
class AdminKeyAttempt:
    """An admin_key attempt from `client`, counted as failed until admin_key_attempt_succeeded takes it back."""

    client: str
    at: float
    failures: int  # this minute's failures from the client, this attempt included (0: not counted)

    @property
    def counter_id(self) -> str:
        return admin_key_counter_id(self.client)


def admin_key_counter_id(client: str) -> str:
    return f"admin-key:{client}"


async def admin_key_attempt_begin(client: str) -> AdminKeyAttempt:
    """Count an admin_key attempt from `client` (an address) before its key is checked, or raise RateLimited
    when the client has failed CHATAPI_ADMIN_MAX_FAILURES times this minute (the key is then not checked at
    all). Counting first, in the same atomic step as the check, is what keeps concurrent guesses from all
    slipping past the limit; a key that turns out right is taken back off the count."""
    now = time.time()
    counted = await counter().admit(
        admin_key_counter_id(client),
        rpm=settings.CHATAPI_ADMIN_MAX_FAILURES,
        max_parallel=0,
        slot_id="",
        now=now,
        lease_end=now,
    )
    if not counted.allowed:
        moment = datetime.fromtimestamp(now, UTC)
        retry_after = _seconds_until(minute_start(moment) + timedelta(minutes=1), moment)
        raise RateLimited(
            "Too many failed admin_key attempts from this address; try again later.",
            headers={"Retry-After": str(retry_after)},
        )
    return AdminKeyAttempt(client=client, at=now, failures=counted.requests)


async def admin_key_attempt_succeeded(attempt: AdminKeyAttempt) -> None:
    await counter().refund(attempt.counter_id, attempt.at)


async def limit_headers_now(api_key: APIKey) -> dict[str, str]:
    """The `x-ratelimit-*` headers of a key's answer on an endpoint that does not call the model: where it
    stands, counting nothing (one read of its requests this minute when it has `rpm`)."""
    now = datetime.now(UTC)
    used = await counter().requests_used(str(api_key.pk), now.timestamp()) if api_key.rpm else None
    return limit_headers(api_key, requests_used=used, now=now)


class LimitHeadersMixin:
    """For the views that call the model: their answers carry the `x-ratelimit-*` headers limit_admit made
    (chatapi.middleware.LimitHeadersMiddleware gives the other answers theirs)."""

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        for name, value in getattr(request, "limit_headers", {}).items():
            response.setdefault(name, value)
        return response
