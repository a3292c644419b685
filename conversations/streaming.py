"""Streamed replies: server-sent events for the conversation API, plain text for /api/complete.

The prompt is already stored (a ReplyJob) before the first byte. The reply is read from the backend
by a producer task and forwarded piece by piece as it arrives; it is stored when the stream ends:
complete, cut off by a backend failure, or interrupted because the client went away. Nothing here
holds a thread while the stream is open.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from itertools import count
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from chatapi.errors import BackendError, error_body
from conversations import llm
from conversations.models import Message
from conversations.serializers import ReplyOutput
from conversations.services import ReplyJob, reply_store

logger = logging.getLogger(__name__)

PING = b": ping\n\n"


@dataclass
class _End:
    """The producer is done: `chunk` is the final StreamChunk, or `error` the backend failure."""

    chunk: llm.StreamChunk | None = None
    error: BackendError | None = None


class _Channel:
    """The producer's pieces on their way to the response, and when the last one was put."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[llm.StreamChunk | _End | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.last_put = self._loop.time()

    def put(self, item: llm.StreamChunk | _End | None) -> None:
        self.last_put = self._loop.time()
        self.queue.put_nowait(item)


async def _produce(job: ReplyJob, channel: _Channel) -> None:
    """Read the backend's stream (and its continuations, with autocontinue) into `channel`."""
    context = job.context
    text: list[str] = []
    usage: llm.Usage | None = None
    rounds = 0
    try:
        while True:
            rounds += 1
            final: llm.StreamChunk | None = None
            async for chunk in llm.stream(model=job.model, messages=context, params=job.params):
                if chunk.finish_reason is None:
                    text.append(chunk.delta)
                    channel.put(chunk)
                else:
                    final = chunk
            assert final is not None
            usage = _add_usage(usage, final.usage) if rounds > 1 else final.usage
            more = job.autocontinue and final.finish_reason == "length"
            if not more or rounds >= settings.CHATAPI_AUTOCONTINUE_MAX_ROUNDS:
                channel.put(_End(chunk=replace(final, usage=usage)))
                return
            # The partial reply goes back as the last assistant turn; the model carries on from it.
            context = [*job.context, {"role": "assistant", "content": "".join(text)}]
    except BackendError as exc:
        channel.put(_End(error=exc))


def _add_usage(a: llm.Usage | None, b: llm.Usage | None) -> llm.Usage | None:
    if a is None or b is None:
        return None
    return llm.Usage(
        a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens, a.total_tokens + b.total_tokens
    )


async def _pieces(job: ReplyJob) -> AsyncIterator[llm.StreamChunk | _End | None]:
    """The backend's pieces for `job` as they come; None after `CHATAPI_SSE_PING_SECONDS` of silence."""
    channel = _Channel()
    producer = asyncio.create_task(_produce(job, channel))
    pinger = asyncio.create_task(_ping_when_silent(channel, settings.CHATAPI_SSE_PING_SECONDS))
    try:
        while True:
            item = await channel.queue.get()
            yield item
            if isinstance(item, _End):
                return
    finally:
        # Client gone or stream over: stop the backend request (closing its HTTP connection).
        pinger.cancel()
        producer.cancel()
        try:
            await producer
        except asyncio.CancelledError:
            if not producer.cancelled():
                raise


async def _ping_when_silent(channel: _Channel, interval: float) -> None:
    """Put a None (a ping) in the channel whenever nothing went through it for `interval` seconds.

    One timer per stream, looked at once per interval, rather than a timeout around every piece.
    """
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(max(0.0, channel.last_put + interval - loop.time()))
        if loop.time() - channel.last_put >= interval:
            channel.put(None)


_store = sync_to_async(reply_store)


async def _store_partial(job: ReplyJob, text: str, finish: str) -> Message:
    return await _store(job=job, content=text, model=job.model, finish_details=finish, usage=None)


def _frame(seq: int, event: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {seq}\nevent: {event}\ndata: {payload}\n\n".encode()


async def reply_events(job: ReplyJob, *, request_data: dict[str, Any] | None) -> AsyncIterator[bytes]:
    """The SSE events of a reply: `created`, `delta`…, then `completed` or `error`; `: ping` in silences."""
    seq = count(1)
    reply_id = str(job.reply_id)
    text: list[str] = []
    stored = False
    created = {"conversation_id": str(job.conversation.pk), "request": request_data, "response_id": reply_id}
    yield _frame(next(seq), "created", created)
    try:
        async for item in _pieces(job):
            if item is None:
                yield PING
            elif isinstance(item, llm.StreamChunk):
                text.append(item.delta)
                yield _frame(next(seq), "delta", {"id": reply_id, "delta": item.delta})
            elif item.error is not None:
                finish = Message.Finish.INTERRUPTED if text else Message.Finish.ERROR
                await _store_partial(job, "".join(text), finish)
                stored = True
                exc = job.backend_failed(item.error)
                body = error_body(exc.message, type=exc.type, code=exc.code, details=exc.details)
                yield _frame(next(seq), "error", {**body, "id": reply_id})
            else:
                final = item.chunk
                assert final is not None
                reply = await _store(
                    job=job,
                    content="".join(text),
                    model=final.model or job.model,
                    finish_details=final.finish_reason,
                    usage=final.usage,
                )
                stored = True
                yield _frame(next(seq), "completed", {"response": ReplyOutput(reply).data})
    finally:
        if not stored and text:
            # The client went away mid-stream: keep what it was sent.
            await _store_partial(job, "".join(text), Message.Finish.INTERRUPTED)


async def reply_text(job: ReplyJob) -> AsyncIterator[bytes]:
    """The reply as plain text, as it is generated (`/api/complete`)."""
    text: list[str] = []
    stored = False
    try:
        async for item in _pieces(job):
            if isinstance(item, llm.StreamChunk):
                text.append(item.delta)
                yield item.delta.encode()
            elif isinstance(item, _End) and item.error is not None:
                await _store_partial(job, "".join(text), Message.Finish.INTERRUPTED if text else Message.Finish.ERROR)
                stored = True
                yield f"\n[error: {job.backend_failed(item.error).message}]\n".encode()
            elif isinstance(item, _End) and item.chunk is not None:
                final = item.chunk
                await _store(
                    job=job,
                    content="".join(text),
                    model=final.model or job.model,
                    finish_details=final.finish_reason,
                    usage=final.usage,
                )
                stored = True
    finally:
        if not stored and text:
            await _store_partial(job, "".join(text), Message.Finish.INTERRUPTED)
