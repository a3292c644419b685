"""Streamed replies: server-sent events for the conversation API, plain text for /api/complete.

The prompt is already stored (a ReplyJob) before the first byte. The reply is read from the backend
and forwarded piece by piece as it arrives, in the one task that sends the response; it is stored
when the stream ends: complete, cut off by a backend failure, or interrupted because the client went
away. Nothing here holds a thread while the stream is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from itertools import count
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.http import HttpResponseBase, StreamingHttpResponse

from chatapi.errors import CONCURRENT_CHANGE, ApplicationError, BackendError, error_body
from conversations import llm
from conversations.models import Message
from conversations.serializers import ReplyOutput
from conversations.services import ReplyJob, reply_store_on_loop

logger = logging.getLogger(__name__)

PING = b": ping\n\n"
# Nothing between the stream and the client may hold it back (X-Accel-Buffering: nginx).
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class _End:
    """The backend is done: `chunk` is the final StreamChunk, or `error` the backend failure."""

    chunk: llm.StreamChunk | None = None
    error: BackendError | None = None


async def _pieces(job: ReplyJob) -> AsyncGenerator[llm.StreamChunk | _End, None]:
    """The backend's pieces for `job` as they arrive (across rounds, with autocontinue), then an _End.

    Read in the task that sends them on: no task or queue in between, and a client that reads slowly
    slows the backend down rather than filling memory.
    """
    context = job.context
    text: list[str] = []
    usage: llm.Usage | None = None
    rounds = 0
    try:
        while True:
            rounds += 1
            final: llm.StreamChunk | None = None
            async with aclosing(llm.stream(model=job.model, messages=context, params=job.params)) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason is None:
                        text.append(chunk.delta)
                        yield chunk
                    else:
                        final = chunk
            assert final is not None
            usage = _add_usage(usage, final.usage) if rounds > 1 else final.usage
            more = job.autocontinue and final.finish_reason == "length"
            if not more or rounds >= settings.CHATAPI_AUTOCONTINUE_MAX_ROUNDS:
                yield _End(chunk=replace(final, usage=usage))
                return
            # The partial reply goes back as the last assistant turn; the model carries on from it.
            context = [*job.context, {"role": "assistant", "content": "".join(text)}]
    except BackendError as exc:
        yield _End(error=exc)


def _add_usage(a: llm.Usage | None, b: llm.Usage | None) -> llm.Usage | None:
    if a is None or b is None:
        return None
    return llm.Usage(
        a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens, a.total_tokens + b.total_tokens
    )


@dataclass
class Delta:
    text: str


@dataclass
class Done:
    """The reply is complete and stored."""

    reply: Message


@dataclass
class Failed:
    """The backend failed (what was generated is stored: `interrupted`, or `error` when nothing was),
    or the reply could not be stored (the conversation was deleted or changed meanwhile: no `reply`)."""

    error: ApplicationError
    reply: Message | None


async def _store_reply(job: ReplyJob, **fields: Any) -> tuple[Message | None, ApplicationError | None]:
    try:
        return await reply_store_on_loop(job=job, **fields), None
    except ApplicationError as exc:
        return None, exc
    except IntegrityError:
        return None, CONCURRENT_CHANGE


async def reply_stream(job: ReplyJob) -> AsyncGenerator[Delta | Done | Failed, None]:
    """A reply as it is generated, stored when it ends; the formats below turn it into bytes.

    If the consumer stops early (the client went away), the backend request is cancelled and the
    text generated so far is stored as `interrupted`.
    """
    text: list[str] = []
    stored = False
    try:
        async with aclosing(_pieces(job)) as pieces:
            async for item in pieces:
                if isinstance(item, llm.StreamChunk):
                    text.append(item.delta)
                    yield Delta(item.delta)
                elif item.error is not None:
                    finish = Message.Finish.INTERRUPTED if text else Message.Finish.ERROR
                    stored = True
                    reply, _ = await _store_reply(
                        job, content="".join(text), model=job.model, finish_details=finish, usage=None
                    )
                    yield Failed(job.backend_failed(item.error), reply)
                else:
                    final = item.chunk
                    assert final is not None
                    stored = True
                    reply, error = await _store_reply(
                        job,
                        content="".join(text),
                        model=final.model or job.model,
                        finish_details=final.finish_reason,
                        usage=final.usage,
                    )
                    yield Done(reply) if reply is not None else Failed(error or CONCURRENT_CHANGE, None)
    finally:
        if not stored and text:
            reply, error = await _store_reply(
                job,
                content="".join(text),
                model=job.model,
                finish_details=Message.Finish.INTERRUPTED,
                usage=None,
            )
            if error is not None:
                logger.info("The interrupted reply of a stream could not be stored: %s", error.message)


def _frame(seq: int, event: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {seq}\nevent: {event}\ndata: {payload}\n\n".encode()


def _delta_frame(seq: int, reply_id: str, text: str) -> bytes:
    """`_frame(seq, "delta", {"id": reply_id, "delta": text})`, the event sent most, byte for byte: only
    the text is encoded as JSON (the id is a UUID, which needs no escaping)."""
    text_json = json.dumps(text, ensure_ascii=False)
    return f'id: {seq}\nevent: delta\ndata: {{"id":"{reply_id}","delta":{text_json}}}\n\n'.encode()


async def reply_events(job: ReplyJob, *, request_data: dict[str, Any] | None) -> AsyncGenerator[bytes, None]:
    """The conversation API's SSE events: `created`, `delta`…, then `completed` or `error`."""
    seq = count(1)
    reply_id = str(job.reply_id)
    created = {"conversation_id": str(job.conversation.pk), "request": request_data, "response_id": reply_id}
    yield _frame(next(seq), "created", created)
    async with aclosing(reply_stream(job)) as events:
        async for event in events:
            if isinstance(event, Delta):
                yield _delta_frame(next(seq), reply_id, event.text)
            elif isinstance(event, Done):
                yield _frame(next(seq), "completed", {"response": ReplyOutput(event.reply).data})
            else:
                exc = event.error
                body = error_body(exc.message, type=exc.type, code=exc.code, details=exc.details)
                yield _frame(next(seq), "error", {**body, "id": reply_id})


async def reply_text(job: ReplyJob) -> AsyncGenerator[bytes, None]:
    """The reply as plain text, as it is generated (`/api/complete`); a failure ends it with `[error: …]`."""
    async with aclosing(reply_stream(job)) as events:
        async for event in events:
            if isinstance(event, Delta):
                yield event.text.encode()
            elif isinstance(event, Failed):
                yield f"\n[error: {event.error.message}]\n".encode()


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


def stream_response(
    content: AsyncGenerator[bytes, None], *, content_type: str, on_error: OnError, ping: bool = False
) -> StreamingHttpResponse:
    """A response that sends `content` as it is produced, with nothing between it and the client buffering
    (`on_error`: see _guarded); with `ping`, a `: ping` comment in every silence of CHATAPI_SSE_PING_SECONDS."""
    content = _guarded(content, on_error)
    if ping:
        content = _with_pings(content, PING, settings.CHATAPI_SSE_PING_SECONDS)
    return StreamingHttpResponse(content, content_type=content_type, headers=NO_BUFFERING)


async def _with_pings(content: AsyncGenerator[bytes, None], ping: bytes, seconds: float) -> AsyncGenerator[bytes, None]:
    """`content`, with `ping` sent whenever it gave nothing for `seconds`. The wait for its next piece goes
    on across pings (it is a task of its own, never cancelled by the timeout)."""
    async with aclosing(content):
        while True:
            step = asyncio.ensure_future(anext(content))
            try:
                while True:
                    done, _ = await asyncio.wait((step,), timeout=seconds)
                    if done:
                        break
                    yield ping
            finally:
                if not step.done():  # the client went away during a silence
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
            try:
                yield step.result()
            except StopAsyncIteration:
                return


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
    anything was generated can still be an ordinary error response with its status: what OpenAI's SDKs
    need to raise the right exception. `content` raises the ApplicationError instead of yielding its first
    piece; `on_failure` makes the error response from it."""
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


def internal_error_event(events_sent: int) -> bytes:
    """The `error` event that ends a conversation stream broken by a bug: next in the `id` sequence."""
    body = error_body("Internal server error.", type="server_error", code="internal_error")
    return _frame(events_sent + 1, "error", body)
