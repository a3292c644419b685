"""Middleware for what reaches Django from the edge (a request that cannot be served, a body sent without
Content-Length) and for what every answer carries (a limited key's `x-ratelimit-*` headers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from servestatic.middleware import ServeStaticMiddleware
from servestatic.responders import MissingFileError

from accounts.limits import limit_headers_now
from accounts.models import APIKey
from chatapi.errors import error_body, not_found_view, request_too_large_body

GetResponse = Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]


class _Middleware:
    """A middleware that runs in a synchronous or an asynchronous chain alike, with no thread hop:
    `before` may answer the request itself, `after` may change the response."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        return self.before(request) or self.after(request, self.get_response(request))  # type: ignore[arg-type]

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        return self.before(request) or self.after(request, await self.get_response(request))  # type: ignore[misc]

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return response


class RequestGuardMiddleware(_Middleware):
    """First in MIDDLEWARE: a bad Host header gets the JSON error body (Django's own answer in debug mode
    is an HTML page), and a body sent without Content-Length (`Transfer-Encoding: chunked`) is read, as
    DRF would otherwise take it for an empty one."""

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        return refusal(request)


def refusal(request: HttpRequest) -> JsonResponse | None:
    """The answer to a request that goes no further, or None; reads a body that came without a length."""
    try:
        request.get_host()
    except DisallowedHost as exc:
        # Debug mode names the setting to change (as Django's page does); production gives nothing away.
        message = str(exc) if settings.DEBUG else "Invalid Host header."
        return JsonResponse(error_body(message, type="invalid_request_error", code="invalid_host"), status=400)
    if not request.META.get("CONTENT_LENGTH") and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        try:
            body = request.body  # checked against DATA_UPLOAD_MAX_MEMORY_SIZE as it is read
        except RequestDataTooBig:
            return JsonResponse(request_too_large_body(), status=413)
        # DRF reads a request's body only when its Content-Length says there is one.
        request.META["CONTENT_LENGTH"] = str(len(body))
    return None


class LimitHeadersMiddleware(_Middleware):
    """Every answer to a key with limits carries OpenAI's `x-ratelimit-*` headers, as OpenAI's do: those of the
    endpoints that call the model are made where the request is counted (accounts.limits.limit_admit); the
    others' here, after DRF has authenticated the request (it sets `auth` on Django's request too)."""

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)  # type: ignore[misc]
        if self._wanted(request, response):
            self._add(response, await limit_headers_now(request.auth))  # type: ignore[attr-defined]
        return response

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if self._wanted(request, response):
            self._add(response, async_to_sync(limit_headers_now)(request.auth))  # type: ignore[attr-defined]
        return response

    @staticmethod
    def _wanted(request: HttpRequest, response: HttpResponseBase) -> bool:
        api_key = getattr(request, "auth", None)
        already = response.has_header("x-ratelimit-limit-requests") or response.has_header("x-ratelimit-limit-tokens")
        return isinstance(api_key, APIKey) and api_key.has_limits and not already

    @staticmethod
    def _add(response: HttpResponseBase, headers: dict[str, str]) -> None:
        for name, value in headers.items():
            response.setdefault(name, value)


class StaticFilesMiddleware(ServeStaticMiddleware):
    """ServeStatic (WhiteNoise's async-capable fork), but in debug mode a missing file is the API's JSON 404
    too: ServeStatic raises an error there, which Django shows as an HTML page."""

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        try:
            return await super().__call__(request)
        except MissingFileError:
            return not_found_view(request)
