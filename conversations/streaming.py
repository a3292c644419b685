"""Streamed answers: a generation's events as server-sent events (the conversation API) or plain text
(/api/complete), with nothing between them and the client buffering.

The generation runs on its own (conversations.generations); a stream is one reader of its event log,
so a client that goes away stops nothing but its stream (unless CHATAPI_STOP_ON_DISCONNECT).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from django.conf import settings
from django.http import HttpResponseBase, StreamingHttpResponse

from chatapi.errors import ApplicationError, error_body
from conversations import generations
from conversations.events import Event
from conversations.models import Message

logger = logging.getLogger(__name__)

PING = b": ping\n\n"
# Nothing between the stream and the client may hold it back (X-Accel-Buffering: nginx).
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: Event) -> bytes:
    if event.name == "delta":
        # The event sent most, byte for byte as json.dumps would write it: only the text is encoded (the
        # id is a UUID, which needs no escaping).
        text = json.dumps(event.data["delta"], ensure_ascii=False)
        return f'id: {event.seq}\nevent: delta\ndata: {{"id":"{event.data["id"]}","delta":{text}}}\n\n'.encode()
    payload = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.name}\ndata: {payload}\n\n".encode()


async def reply_sse(
    reply: Message, *, after: int = 0, generation: generations.Generation | None = None
) -> AsyncGenerator[bytes, None]:
    """The reply's events after `after` as server-sent events, live to its end; a `: ping` comment in every
    silence of CHATAPI_SSE_PING_SECONDS. `generation`: the one this request started (stopped with its
    stream when CHATAPI_STOP_ON_DISCONNECT)."""
    last_sent = time.monotonic()
    seq = after
    try:
        async with aclosing(generations.reply_events(reply, after=after)) as events:
            async for event in events:
                if event is None:
                    if time.monotonic() - last_sent >= settings.CHATAPI_SSE_PING_SECONDS:
                        last_sent = time.monotonic()
                        yield PING
                    continue
                seq = event.seq
                last_sent = time.monotonic()
                yield frame(event)
    except Exception:  # a bug: the stream ends with an error event, next in the id sequence
        logger.exception("The event stream of reply %s failed", reply.pk)
        body = error_body("Internal server error.", type="server_error", code="internal_error")
        yield frame(Event(seq + 1, "error", {**body, "id": str(reply.pk)}))
    finally:
        if generation is not None and settings.CHATAPI_STOP_ON_DISCONNECT:
            generation.stop("interrupted")  # a no-op once it ended


async def reply_text(
    first: Event, rest: AsyncGenerator[Event | None, None], generation: generations.Generation
) -> AsyncGenerator[bytes, None]:
    """The reply as plain text, as it is generated (`/api/complete`); a failure ends it with `[error: …]`."""
    try:
        async with aclosing(rest):
            event: Event | None = first
            while True:
                if event is not None:
                    if event.name == "delta":
                        yield event.data["delta"].encode()
                    elif event.name == "error":
                        yield f"\n[error: {event.data['error']['message']}]\n".encode()
                        return
                    elif event.name == "completed":
                        # What a tool made after some text could not be the answer: its address ends the text.
                        for attachment in event.data["response"].get("attachments", []):
                            yield f"\n[{attachment['content_type']}: {attachment['url']}]\n".encode()
                        return
                try:
                    event = await anext(rest)
                except StopAsyncIteration:
                    return
    finally:
        if settings.CHATAPI_STOP_ON_DISCONNECT:
            generation.stop("interrupted")


async def first_event(reply: Message) -> tuple[Event, AsyncGenerator[Event | None, None]]:
    """The first event of a reply after `created` (its first text, or how it ended) and the rest: a stream
    that must answer a failure before any text with an error status (OpenAI's SDKs, older clients) waits
    for it before its status line goes out."""
    events = generations.reply_events(reply, after=1)
    async for event in events:
        if event is not None:
            return event, events
    raise AssertionError("an event stream ends with its terminal event")


def stream_response(content: AsyncGenerator[bytes, None], *, content_type: str) -> StreamingHttpResponse:
    return StreamingHttpResponse(content, content_type=content_type, headers=NO_BUFFERING)


# --- streams of bytes with no generation behind them (stateless /v1) ---------------------------

# Makes the last piece of a stream that failed on a bug, from the number of pieces sent before it.
OnError = Callable[[int], bytes]


async def _guarded(content: AsyncGenerator[bytes, None], on_error: OnError) -> AsyncGenerator[bytes, None]:
    """`content`, but a bug inside it ends the stream with `on_error(pieces sent)` (and a log entry),
    not a cut connection."""
    sent = 0
    async with aclosing(content):
        try:
            async for part in content:
                yield part
                sent += 1
        except Exception:
            logger.exception("A streamed response failed")
            yield on_error(sent)


class _InternalError(ApplicationError):
    status_code = 500
    type = "server_error"
    code = "internal_error"


_INTERNAL_ERROR = _InternalError("Internal server error.")


async def primed_stream(
    content: AsyncGenerator[bytes, None],
    *,
    on_failure: Callable[[ApplicationError], HttpResponseBase],
    content_type: str,
    on_error: OnError,
) -> HttpResponseBase:
    """A stream whose first piece is awaited before the status line goes out, so that a failure before
    anything was generated can still be an ordinary error response with its status. `content` raises the
    ApplicationError instead of yielding its first piece; `on_failure` makes the error response from it."""
    try:
        first = await anext(content)
    except StopAsyncIteration:
        first = b""
    except ApplicationError as exc:
        await content.aclose()
        return on_failure(exc)
    except Exception:
        logger.exception("A streamed response failed before its first piece")
        await content.aclose()
        return on_failure(_INTERNAL_ERROR)
    return StreamingHttpResponse(
        _guarded(_then(first, content), on_error), content_type=content_type, headers=NO_BUFFERING
    )


async def _then(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    async with aclosing(rest):
        yield first
        async for part in rest:
            yield part


def stream_data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
