"""Responses finished on the event loop, after the view and the middleware ran in a worker thread.

A view runs in one of a few worker threads (chatapi.asgi). Waiting there for the model backend would
hold the thread for the whole wait, so a view that has to wait returns a `LoopResponse` instead: the
ASGI handler awaits its `finish()` on the event loop, where a wait holds nothing but a connection, and
sends what it gives. Served any other way (Django's test client, WSGI), `finish_here` finishes it at
once in a short-lived event loop of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

# True while chatapi.asgi serves the request: it finishes LoopResponses on its event loop.
ON_LOOP: ContextVar[bool] = ContextVar("chatapi_on_loop", default=False)

# Coroutines that release what is bound to the running event loop (the backend's async clients):
# run at server shutdown, and when a loop made by `finish_here` ends.
_loop_closers: list[Callable[[], Awaitable[None]]] = []


def on_loop_close(closer: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    _loop_closers.append(closer)
    return closer


async def close_loop_resources() -> None:
    for closer in _loop_closers:
        await closer()


class KeepAliveStreamingResponse(StreamingHttpResponse):
    """A stream that chatapi.asgi can keep open through its silences (see keep_alive)."""

    keep_alive: tuple[bytes, float] | None = None


def keep_alive(response: KeepAliveStreamingResponse, comment: bytes, seconds: float) -> None:
    """Have chatapi.asgi send `comment` on the stream `response` whenever nothing was sent for `seconds`,
    so that proxies keep an idle stream open."""
    response.keep_alive = (comment, seconds)


class LoopResponse:
    """A response whose final form is made on the event loop: `finish()` gives the response to send."""

    async def finish(self) -> HttpResponseBase:
        raise NotImplementedError


def finish_here(response: HttpResponseBase) -> HttpResponseBase:
    """`response` as it will be sent: finished now when no chatapi.asgi event loop will do it."""
    if ON_LOOP.get() or not isinstance(response, LoopResponse):
        return response

    async def finish() -> HttpResponseBase:
        try:
            return await response.finish()
        finally:
            await close_loop_resources()

    return async_to_sync(finish)()


class DeferredJSONResponse(HttpResponse, LoopResponse):
    """JSON made on the event loop: `produce()` gives a DRF Response (data, status, headers); an error it
    raises becomes `on_error(exc)`'s Response (the view's exception handler). The headers the middleware
    set on this response are kept."""

    def __init__(
        self,
        produce: Callable[[], Awaitable[Response]],
        *,
        on_error: Callable[[Exception], Response],
    ) -> None:
        super().__init__(content_type="application/json")
        self._produce = produce
        self._on_error = on_error

    async def finish(self) -> HttpResponseBase:
        try:
            answer = await self._produce()
        except Exception as exc:
            answer = self._on_error(exc)
        self.status_code = answer.status_code
        self.content = JSONRenderer().render(answer.data)
        for header, value in answer.items():
            if header.lower() != "content-type":
                self[header] = value
        if self.has_header("Content-Length"):  # set by CommonMiddleware when the body was still empty
            self["Content-Length"] = str(len(self.content))
        return self


def deferred_json(produce: Callable[[], Awaitable[Response]], *, view: Any) -> HttpResponseBase:
    """The answer `produce()` makes, awaited on the event loop (see DeferredJSONResponse); an error it
    raises goes through the DRF `view`'s own exception handler, as if the view had raised it."""
    handler = view.get_exception_handler()
    context = view.get_exception_handler_context()
    return finish_here(DeferredJSONResponse(produce, on_error=lambda exc: handler(exc, context)))
