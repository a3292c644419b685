"""Middleware for what reaches Django from the edge (a request that cannot be served, a body sent without
Content-Length) and for what every answer carries (a limited key's `x-ratelimit-*` headers); and Django's own
middleware, run where they are needed and, under ASGI, without a thread hand-off per hook (see below)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware as DjangoAuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware as DjangoXFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware as DjangoCommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware as DjangoCsrfViewMiddleware
from django.middleware.security import SecurityMiddleware as DjangoSecurityMiddleware
from django.urls import NoReverseMatch, reverse
from servestatic.middleware import ServeStaticMiddleware
from servestatic.responders import MissingFileError

from accounts.authentication import api_key_from_header
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


# --- Django's own middleware, without a thread hand-off per hook ----------------------------------------------
#
# Under ASGI, Django's MiddlewareMixin runs every process_request/process_view/process_response hook in a thread
# (sync_to_async), since a hook may touch the database: with Django's seven stock middleware that is 13 thread
# hand-offs a request. The subclasses below keep Django's classes, hooks and order (so the admin's system checks
# and every hook behave as documented) and change only where the hooks run, through the public middleware
# protocol (`__call__`, `process_view`):
#
# - Security, Common and XFrameOptions only read the request and set headers: their hooks run on the event loop.
# - Session, CSRF, Authentication and Messages serve a browser's login (the admin, the browsable API). A request
#   with an API key is authenticated by that key alone (accounts.authentication: DRF never looks at its cookies),
#   so it skips them; every other request, and any request to the admin site, goes through them as before.


@functools.cache
def _admin_prefix() -> str:
    try:
        return reverse("admin:index")
    except NoReverseMatch:  # no admin site mounted
        return "\0"


def with_api_key(request: HttpRequest) -> bool:
    """Whether the request carries an API key (`Authorization: Bearer <key>`, or the bare key), outside the
    admin site: it needs no session, CSRF check, login or messages."""
    header: str = request.META.get("HTTP_AUTHORIZATION", "")
    return bool(header) and api_key_from_header(header) is not None and not request.path.startswith(_admin_prefix())


class _HooksOnTheLoop:
    """For a MiddlewareMixin middleware whose hooks do no I/O: under ASGI they run on the event loop."""

    async_mode: bool
    get_response: Any

    def __call__(self, request: HttpRequest) -> Any:
        if not self.async_mode:
            return super().__call__(request)  # type: ignore[misc]
        return self.on_the_loop(request)

    async def on_the_loop(self, request: HttpRequest) -> HttpResponseBase:
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class _ForBrowsers:
    """For a MiddlewareMixin middleware that serves a browser's login: a request with an API key skips it."""

    get_response: Any

    def __call__(self, request: HttpRequest) -> Any:
        if with_api_key(request):
            return self.get_response(request)
        return super().__call__(request)  # type: ignore[misc]


class SecurityMiddleware(_HooksOnTheLoop, DjangoSecurityMiddleware):
    pass


class CommonMiddleware(_HooksOnTheLoop, DjangoCommonMiddleware):
    pass


class XFrameOptionsMiddleware(_HooksOnTheLoop, DjangoXFrameOptionsMiddleware):
    pass


class SessionMiddleware(_ForBrowsers, DjangoSessionMiddleware):
    pass


class AuthenticationMiddleware(_ForBrowsers, DjangoAuthenticationMiddleware):
    pass


class MessageMiddleware(_ForBrowsers, DjangoMessageMiddleware):
    pass


class CsrfViewMiddleware(_ForBrowsers, DjangoCsrfViewMiddleware):
    """Its process_view is a coroutine, so that Django's handler awaits it on the loop under ASGI (under WSGI it
    wraps it in async_to_sync); for a browser's request Django's own runs, in a thread as before."""

    async def process_view(  # type: ignore[override]
        self, request: HttpRequest, callback: Any, callback_args: Any, callback_kwargs: Any
    ) -> HttpResponseBase | None:
        if with_api_key(request) or getattr(callback, "csrf_exempt", False):
            return None
        check = sync_to_async(super().process_view, thread_sensitive=True)
        return await check(request, callback, callback_args, callback_kwargs)
