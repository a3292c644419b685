"""`Idempotency-Key` on the POSTs that create something: the first request with a key is carried out; a
repeat by the same API key with the same body, within 24 hours, gets the same answer without anything done
again. A different body is a 422 (`idempotency_key_reused`); a repeat while a non-streamed original is still
running is a 409 (`idempotency_key_in_progress`); a streamed original is answered with its reply's events
from the start, as `GET …/messages/{id}/stream` would.

What is remembered lives in the database (accounts.IdempotencyRecord); its unique constraint on (API key,
Idempotency-Key) lets only one of two concurrent first requests in. An answer that did nothing (a 4xx: a
bad body, a 404, a 429) is not kept, so that the client can fix it and retry with the same key.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.db import IntegrityError, transaction
from django.http import HttpResponseBase
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import APIKey, IdempotencyRecord
from chatapi.db import db_work
from chatapi.errors import ApplicationError, Conflict, InvalidRequest, NotFound
from conversations.models import Message

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
KEEP = timedelta(hours=24)
# How often a worker deletes the expired records on its own (purge_idempotency_keys does it on demand).
PURGE_EVERY_SECONDS = 3600.0
_purge_lock = threading.Lock()
_purged_at = float("-inf")
# Headers of the first answer that a repeat gets too.
_KEPT_HEADERS = ("X-Conversation-Id", "Location")


class KeyReused(ApplicationError):
    status_code = 422
    code = "idempotency_key_reused"


def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256(f"{request.method} {request.path.rstrip('/')}\n".encode())
    digest.update(request.body)
    return digest.hexdigest()


def record_begin(*, api_key: APIKey, key: str, fingerprint: str) -> tuple[IdempotencyRecord, bool]:
    """The record of `key` for `api_key`, and whether this request is its first (and is to be carried out).
    A record older than 24 hours is forgotten first; about once an hour, every expired one is."""
    records_expired_purge_due()
    IdempotencyRecord.objects.filter(api_key=api_key, key=key, created_at__lt=timezone.now() - KEEP).delete()
    try:
        with transaction.atomic():
            return IdempotencyRecord.objects.create(api_key=api_key, key=key, fingerprint=fingerprint), True
    except IntegrityError:  # another request has it (maybe at this very moment)
        return IdempotencyRecord.objects.get(api_key=api_key, key=key), False


def record_finish(
    *, record: IdempotencyRecord, response: HttpResponseBase, reply_id: uuid.UUID | None, secret: tuple[str, ...] = ()
) -> None:
    if 400 <= response.status_code < 500:  # nothing was done: the client may retry with the same key
        record.delete()
        return
    if response.streaming:
        if reply_id is None:  # a stream with nothing stored behind it (stateless /v1): nothing to replay
            record.delete()
            return
        record.state, record.reply_id = IdempotencyRecord.State.STREAMED, reply_id
    else:
        record.state = IdempotencyRecord.State.DONE
        body = getattr(response, "data", None)
        if isinstance(body, dict) and secret:
            body = {**body, **{field: None for field in secret if field in body}}
        record.body = body
    record.status_code = response.status_code
    record.headers = {name: response[name] for name in _KEPT_HEADERS if response.has_header(name)}
    record.save(update_fields=["state", "status_code", "body", "headers", "reply_id"])


def record_forget(*, record: IdempotencyRecord) -> None:
    record.delete()


def records_expired_delete() -> int:
    """Delete the records kept past 24 hours (an index range on created_at); how many there were."""
    return IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - KEEP).delete()[0]


def records_expired_purge_due() -> None:
    """Delete the expired records if this process has not done so for PURGE_EVERY_SECONDS: the table stays
    about a day's worth of records without a scheduled job, at one DELETE an hour per worker."""
    global _purged_at
    now = time.monotonic()
    with _purge_lock:
        if now - _purged_at < PURGE_EVERY_SECONDS:
            return
        _purged_at = now
    records_expired_delete()


StreamReplay = Callable[[Request, uuid.UUID], Awaitable[HttpResponseBase]]


def idempotent(
    replay_stream: StreamReplay | None = None,
    *,
    secret: tuple[str, ...] = (),
    fingerprint: Callable[[Request], str] = _fingerprint,
) -> Callable[[Any], Any]:
    """Make a view method (async, or sync) honour `Idempotency-Key`. An async view marks a streamed answer's
    reply with `mark_reply(request, reply_id)`; `replay_stream` answers a repeat of it. The `secret` fields of
    a body are never kept (a new API key is shown once): a repeat gets them as null. `fingerprint`: what tells
    a repeat from a different request (by default the method, path and body; a view whose body may be larger
    than memory gives its own)."""

    def decorate(handler: Any) -> Any:
        if not iscoroutinefunction(handler):

            @wraps(handler)
            def sync_wrapped(view: Any, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
                scoped = _key(request)
                if scoped is None:
                    return handler(view, request, *args, **kwargs)
                digest = fingerprint(request)
                record, first = record_begin(api_key=scoped[1], key=scoped[0], fingerprint=digest)
                if not first:
                    return _repeat_done(record, digest)
                try:
                    try:
                        response = handler(view, request, *args, **kwargs)
                    except Exception as exc:
                        response = view.handle_exception(exc)
                except BaseException:
                    record_forget(record=record)
                    raise
                record_finish(record=record, response=response, reply_id=None, secret=secret)
                return response

            return sync_wrapped

        @wraps(handler)
        async def wrapped(view: Any, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
            scoped = _key(request)
            if scoped is None:
                return await handler(view, request, *args, **kwargs)
            digest = fingerprint(request)
            record, first = await db_work(record_begin)(api_key=scoped[1], key=scoped[0], fingerprint=digest)
            if not first:
                streamed = record.state == IdempotencyRecord.State.STREAMED and record.fingerprint == digest
                if streamed and replay_stream is not None and record.reply_id is not None:
                    response = await replay_stream(request, record.reply_id)
                    for name, value in record.headers.items():
                        response[name] = value
                    response["Idempotent-Replayed"] = "true"
                    return response
                return _repeat_done(record, digest)
            try:
                try:
                    response = await handler(view, request, *args, **kwargs)
                except Exception as exc:
                    response = view.handle_exception(exc)  # the error answer, kept as any other
            except BaseException:
                await db_work(record_forget)(record=record)
                raise
            reply_id = getattr(request, "_reply_id", None)
            await db_work(record_finish)(record=record, response=response, reply_id=reply_id)
            return response

        return wrapped

    return decorate


def _key(request: Request) -> tuple[str, APIKey] | None:
    """The request's Idempotency-Key and the API key it is scoped by; None without either."""
    key = request.headers.get(HEADER)
    if key is None or not isinstance(request.auth, APIKey):
        return None
    if not key or len(key) > MAX_LENGTH:
        raise InvalidRequest(f"{HEADER} must be 1 to {MAX_LENGTH} characters.", param=HEADER)
    return key, request.auth


def mark_reply(request: Request, reply_id: uuid.UUID) -> None:
    """Note the reply a streamed answer follows, for a repeat of an idempotent request."""
    request._reply_id = reply_id  # type: ignore[attr-defined]


def replayed_reply(reply_id: uuid.UUID) -> Message:
    """The reply a streamed original followed, for its repeat; a 404 when it has been deleted since."""
    reply = Message.objects.filter(pk=reply_id).first()
    if reply is None:
        raise NotFound(
            f"The reply the first request with this {HEADER} made has been deleted.", code="idempotent_reply_deleted"
        )
    return reply


def _repeat_done(record: IdempotencyRecord, fingerprint: str) -> Response:
    if record.fingerprint != fingerprint:
        raise KeyReused(
            f"This {HEADER} was used with a different request; use a new key for a new request.", param=HEADER
        )
    if record.state == IdempotencyRecord.State.DONE and record.status_code is not None:
        headers = {**record.headers, "Idempotent-Replayed": "true"}
        return Response(record.body, status=record.status_code, headers=headers)
    raise Conflict(
        f"The first request with this {HEADER} is still being carried out; repeat it once it has ended.",
        code="idempotency_key_in_progress",
    )
