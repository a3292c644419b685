"""The project's exceptions and the one handler that renders every API error in the contract's shape."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
)
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger(__name__)

ViewFunction = Callable[..., HttpResponse]


class ApplicationError(Exception):
    """An error a client caused or should know about; services raise these."""

    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.details = details or {}
        self.headers = headers or {}


class InvalidRequest(ApplicationError):
    pass


class Unauthorized(ApplicationError):
    """Credentials that DRF's authentication classes do not handle (the operator endpoints' `admin_key`) are
    missing or wrong. (DRF's own AuthenticationFailed turns into a 403 on views without authentication classes.)"""

    status_code = 401
    type = "authentication_error"
    code = "invalid_credentials"


class Forbidden(ApplicationError):
    status_code = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(ApplicationError):
    status_code = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(ApplicationError):
    status_code = 409
    type = "conflict_error"
    code = "conflict"


class RateLimited(ApplicationError):
    """Past one of the key's limits (`rate_limit_exceeded`) or its spent budget (`insufficient_quota`); its
    headers carry `Retry-After`."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BackendError(ApplicationError):
    """The model backend answered with an error."""

    status_code = 502
    type = "backend_error"
    code = "backend_error"


class BackendUnavailable(BackendError):
    """No model backend reachable (or configured) for the model."""

    status_code = 503
    code = "backend_unavailable"


class BackendTimeout(BackendError):
    status_code = 504
    code = "backend_timeout"


CONCURRENT_CHANGE = Conflict(
    "The conversation was changed by another request at the same time; nothing was stored. Try again.",
    code="concurrent_change",
)


def error_body(
    message: str,
    *,
    type: str,
    code: str,
    param: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param, "details": details or {}}}


def request_too_large_body() -> dict[str, Any]:
    return error_body(
        "The request body is larger than the configured limit.", type="invalid_request_error", code="request_too_large"
    )


def _flatten_validation(detail: Any) -> dict[str, Any] | list[Any] | str:
    """DRF's nested ErrorDetail structure as plain strings, keyed by field."""
    if isinstance(detail, dict):
        return {key: _flatten_validation(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_flatten_validation(item) for item in detail]
    return str(detail)


def _first_message(detail: Any) -> str:
    while isinstance(detail, (list, dict)) and detail:
        detail = next(iter(detail.values())) if isinstance(detail, dict) else detail[0]
    return str(detail) if detail else "Invalid request."


_DRF_TYPES: dict[type[drf.APIException], tuple[str, str]] = {
    drf.NotAuthenticated: ("authentication_error", "not_authenticated"),
    drf.AuthenticationFailed: ("authentication_error", "invalid_api_key"),
    drf.PermissionDenied: ("permission_error", "permission_denied"),
    drf.NotFound: ("not_found_error", "not_found"),
    drf.MethodNotAllowed: ("invalid_request_error", "method_not_allowed"),
    drf.NotAcceptable: ("invalid_request_error", "not_acceptable"),
    drf.UnsupportedMediaType: ("invalid_request_error", "unsupported_media_type"),
    drf.Throttled: ("rate_limit_error", "rate_limited"),
    drf.ParseError: ("invalid_request_error", "parse_error"),
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every error becomes the contract's error body; none becomes a traceback."""
    if isinstance(exc, ApplicationError):
        # A field's error names the field in `details` too, as the serializers' errors do.
        details = exc.details or ({exc.param: [exc.message]} if exc.param else {})
        body = error_body(exc.message, type=exc.type, code=exc.code, param=exc.param, details=details)
        return Response(body, status=exc.status_code, headers=exc.headers)

    if isinstance(exc, IntegrityError):
        # Two requests changed the same conversation at once (say, a reply being stored while its
        # prompt was deleted): the database refused the second, so nothing half-written is left.
        logger.info("Conflicting write refused by the database: %s", exc)
        exc = CONCURRENT_CHANGE
        body = error_body(exc.message, type=exc.type, code=exc.code)
        return Response(body, status=exc.status_code)

    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        return Response(request_too_large_body(), status=413)
    elif isinstance(exc, SuspiciousOperation):
        body = error_body(str(exc) or "Bad request.", type="invalid_request_error", code="bad_request")
        return Response(body, status=400)

    if isinstance(exc, drf.ValidationError):
        flat = _flatten_validation(exc.detail)
        details = flat if isinstance(flat, dict) else {"non_field_errors": flat}
        param = next(iter(details), None)
        if param == "non_field_errors":
            param = None
        message = _first_message(exc.detail)
        if param:
            message = f"{param}: {message}"
        body = error_body(message, type="invalid_request_error", code="invalid", param=param, details=details)
        return Response(body, status=400)

    if isinstance(exc, drf.APIException):
        error_type, code = next(
            (value for cls, value in _DRF_TYPES.items() if isinstance(exc, cls)),
            ("invalid_request_error" if exc.status_code < 500 else "server_error", exc.default_code),
        )
        headers: dict[str, str] = {}
        # Throttled.wait is set in its __init__; djangorestframework-stubs leave it out.
        if isinstance(exc, drf.Throttled) and exc.wait is not None:  # type: ignore[attr-defined]
            headers["Retry-After"] = str(int(exc.wait) + 1)  # type: ignore[attr-defined]
        message = exc.detail if isinstance(exc.detail, str) else _first_message(exc.detail)
        if isinstance(exc, drf.ParseError):
            message = f"Malformed request body: {message}"
        body = error_body(str(message), type=error_type, code=code)
        response = Response(body, status=exc.status_code, headers=headers)
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            response["WWW-Authenticate"] = auth_header
        return response

    logger.exception("Unhandled error in %s", context.get("view").__class__.__name__)
    body = error_body("Internal server error.", type="server_error", code="internal_error")
    return Response(body, status=500)


def not_found_response() -> JsonResponse:
    """What an unknown path gets, byte for byte (the operator endpoints answer it when they are off)."""
    return JsonResponse(error_body("Not found.", type="not_found_error", code="not_found"), status=404)


@csrf_exempt  # a POST to an unknown path is a 404, not an HTML CSRF failure page
def not_found_view(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """handler404, and the route of every path no other route takes (so that debug mode, where Django
    answers an unknown path with an HTML page, answers in the contract's shape too)."""
    return not_found_response()


def server_error_view(request: HttpRequest) -> JsonResponse:
    """handler500: a bug, but still no traceback for the client."""
    return JsonResponse(error_body("Internal server error.", type="server_error", code="internal_error"), status=500)


def allow_methods(*methods: str) -> Callable[[ViewFunction], ViewFunction]:
    """Like Django's `require_http_methods`, but a wrong method gets the contract's 405 body."""

    def decorate(view: ViewFunction) -> ViewFunction:
        # Exempt from CSRF, whose check comes first: a wrong method gets its 405, not an HTML 403 page.
        @csrf_exempt
        @wraps(view)
        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                message = f'Method "{request.method}" not allowed.'
                body = error_body(message, type="invalid_request_error", code="method_not_allowed")
                return JsonResponse(body, status=405, headers={"Allow": ", ".join(methods)})
            return view(request, *args, **kwargs)

        return checked

    return decorate


def bad_request_view(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("Bad request.", type="invalid_request_error", code="bad_request"), status=400)


def compat_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """For the older proxies' endpoints, whose clients read `error` as a string: same statuses, flat body."""
    response = exception_handler(exc, context)
    response.data = {"error": response.data["error"]["message"]}
    return response
