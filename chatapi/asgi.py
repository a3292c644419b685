"""ASGI entry point: `uvicorn chatapi.asgi:application`.

chatapi's views are synchronous and short: whatever has to wait for the model backend (a streamed
reply, or the answer of a non-streamed one) is finished on the event loop (chatapi.responses), so a
waiting request holds no thread. Where this differs from Django's stock ASGI handler, it is for speed
under load:

- The request path (signals, middleware and view) runs in a single hop to a worker thread. The stock
  handler makes a hop of its own for the request_started signal, for every classic middleware's hooks
  (some thirty in all), and for closing the response.
- Views run on a fixed pool of `CHATAPI_THREADS` threads, each keeping its database connection. The
  stock handler gives every open request a thread (and a connection) of its own; a few threads that
  never wait for the backend do the same work with less fighting over the GIL. The thread that became
  idle last takes the next request (chatapi.pool).
- Only a streamed response, which can run for minutes, is raced against the client's disconnect.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from contextlib import aclosing, suppress
from typing import Any

import django
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, ASGIRequest, get_script_prefix
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.urls import get_resolver, set_script_prefix

from chatapi.pool import LifoThreadPool
from chatapi.worker import worker_started, worker_stopping

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatapi.settings")


class PooledASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self.executor = LifoThreadPool(max_workers=settings.CHATAPI_THREADS, thread_name_prefix="chatapi-view")

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # No per-request ThreadSensitiveContext: that is what gives each open request its own thread.
        await self.handle(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        """At start-up, the worker sets itself up for speed (chatapi.worker); at shutdown, it closes the
        model backend's clients and the thread pool, and undoes that set-up."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # The URLconf, and with it every view, is loaded now rather than by the first request:
                # it is part of what lives as long as the worker.
                get_resolver().url_patterns  # noqa: B018
                worker_started(pin=settings.CHATAPI_PIN_CPU)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await close_loop_resources()
                # Ending the pool's threads drops their database connections with them.
                await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown)
                worker_stopping()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            await self._respond(scope, body_file, receive, send)
        finally:
            body_file.close()

    async def _respond(self, scope: dict[str, Any], body_file: Any, receive: Any, send: Any) -> None:
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None  # create_request gives one or the other
            await self.send_response(error_response, send)
            return
        ON_LOOP.set(True)
        response = await self.get_response_async(request)
        answer = await self._finished(response) if isinstance(response, LoopResponse) else response
        if not answer.streaming:
            await self.send_response(answer, send)
        else:
            assert isinstance(answer, StreamingHttpResponse)  # the responses whose `streaming` is true
            # A stream is cut short when the client goes away (its generator's clean-up stores what it has).
            sending = asyncio.ensure_future(self._send_stream(answer, send))
            listening = asyncio.ensure_future(self.listen_for_disconnect(receive))
            await asyncio.wait((sending, listening), return_when=asyncio.FIRST_COMPLETED)
            for task in (listening, sending):
                if not task.done():
                    task.cancel()
                with suppress(asyncio.CancelledError, RequestAborted):
                    await task
        if response.streaming:  # the others were closed in their thread
            await asyncio.get_running_loop().run_in_executor(self.executor, response.close)

    async def _send_stream(self, response: StreamingHttpResponse, send: Any) -> None:
        """Send a streamed response piece by piece as its iterator gives them (Django's own sender also
        splits every piece into 64 KB chunks); one marked with `keep_alive` gets its comment in every
        silence."""
        await send(_start_message(response))
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        pinger = None
        keep_alive = response.keep_alive if isinstance(response, KeepAliveStreamingResponse) else None
        if keep_alive is not None:
            comment, seconds = keep_alive

            async def ping_when_silent() -> None:
                # One timer per stream, looked at once per silence, rather than a timeout around every piece.
                nonlocal last_sent
                while True:
                    await asyncio.sleep(last_sent + seconds - loop.time())
                    if loop.time() - last_sent >= seconds:
                        last_sent = loop.time()
                        await send({"type": "http.response.body", "body": comment, "more_body": True})

            pinger = asyncio.ensure_future(ping_when_silent())
        try:
            # StreamingHttpResponse.__aiter__ is an async generator; django-stubs type it as an AsyncIterator.
            async with aclosing(aiter(response)) as content:  # type: ignore[type-var]
                async for part in content:
                    last_sent = loop.time()
                    await send({"type": "http.response.body", "body": part, "more_body": True})
        finally:
            if pinger is not None:
                pinger.cancel()
        await send({"type": "http.response.body"})

    async def _finished(self, response: LoopResponse) -> HttpResponseBase:
        answer = await response.finish()
        if answer is not response:
            # A new response (an error, say) keeps the headers the middleware gave the one it replaces.
            assert isinstance(response, HttpResponseBase)
            for header, value in response.items():
                if header not in answer and header.lower() != "content-length":
                    answer[header] = value
        return answer

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, context.run, self._get_response_in_thread, request)

    def _get_response_in_thread(self, request: HttpRequest) -> HttpResponseBase:
        # The request_started receivers (resetting the query log, closing expired database connections)
        # act on this thread's connections: they run here, not in a thread of their own.
        assert isinstance(request, ASGIRequest)  # made by create_request
        signals.request_started.send(sender=self.__class__, scope=request.scope)
        response = self.get_response(request)
        # Read by close() (the request_finished sender), as in Django's own handlers; django-stubs omit it.
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        if not response.streaming:
            # request_finished, in the thread that used the connections. A DeferredJSONResponse needs
            # nothing of the request's any more: what it makes on the loop, it makes from its own state.
            response.close()
        else:
            close_old_connections()  # this thread's; the response itself is closed when the stream ends
        return response


def _start_message(response: HttpResponseBase) -> dict[str, Any]:
    """The `http.response.start` message of a response: its status, headers and cookies."""
    headers = [(header.encode("ascii"), value.encode("latin1")) for header, value in response.items()]
    for cookie in response.cookies.values():
        headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
    return {"type": "http.response.start", "status": response.status_code, "headers": headers}


django.setup(set_prefix=False)
from chatapi.responses import (  # noqa: E402  (needs the settings)
    ON_LOOP,
    KeepAliveStreamingResponse,
    LoopResponse,
    close_loop_resources,
)

application = PooledASGIHandler()
