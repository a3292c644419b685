"""ASGI entry point: `uvicorn chatapi.asgi:application`.

chatapi's views are synchronous; its streamed replies are async iterators consumed on the event loop,
so an open stream holds no thread. Two things differ from Django's stock ASGI handler, both for speed
under load:

- The request path (middleware and view) runs in a single hop to a worker thread. The stock handler
  runs every classic middleware's hooks in a hop of its own: some thirty hops, several milliseconds.
- Views run on a fixed pool of `CHATAPI_THREADS` threads, each keeping its database connection. The
  stock handler gives every open request a thread (and a connection) of its own, so a thousand open
  streams meant a thousand threads fighting over the GIL and the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatapi.settings")


class PooledASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self.executor = ThreadPoolExecutor(max_workers=settings.CHATAPI_THREADS, thread_name_prefix="chatapi-view")

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
        """Start-up needs nothing; at shutdown, close the model backend's clients and the thread pool."""
        from conversations import llm

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await llm.async_clients_close()
                # Ending the pool's threads drops their database connections with them.
                await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self.executor, context.run, self._get_response_in_thread, request)
        if isinstance(response, PrimedStreamingResponse):
            response = await response.primed()
        return response

    def _get_response_in_thread(self, request: HttpRequest) -> HttpResponseBase:
        # What request_started/request_finished do for the thread that served the request.
        close_old_connections()
        try:
            return self.get_response(request)
        finally:
            close_old_connections()


django.setup(set_prefix=False)
from conversations.streaming import PrimedStreamingResponse  # noqa: E402  (needs the apps loaded)

application = PooledASGIHandler()
