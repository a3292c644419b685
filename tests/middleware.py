"""A middleware for tests: what an outer middleware (logging, metrics, tracing) sees of each response."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

# (path, status) of every response, as the outermost middleware saw it.
seen: list[tuple[str, int]] = []


class SeenByMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        response = self.get_response(request)
        seen.append((request.path, response.status_code))
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)
        seen.append((request.path, response.status_code))
        return response
