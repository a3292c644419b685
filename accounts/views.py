"""Self-service API keys (`GET/POST /api/keys`, `DELETE /api/keys/{id}`), and the operator endpoints the older
proxy's admin scripts use (`POST /admin/users/add`, `POST /admin/users/delete`, `GET /admin/users`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from adrf.views import APIView as AsyncAPIView
from django.conf import settings
from django.http import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status, viewsets
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import selectors, services
from accounts.authentication import AuthenticatedRequest
from accounts.limits import admin_key_attempt_begin, admin_key_attempt_succeeded
from accounts.models import LIMIT_FIELDS, APIKey
from accounts.serializers import (
    APIKeyCreatedOutput,
    APIKeyCreateInput,
    APIKeyOutput,
    OperatorUserCreatedOutput,
    OperatorUserDeleteInput,
    OperatorUserListOutput,
)
from chatapi.db import db_work
from chatapi.errors import (
    ApplicationError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthorized,
    compat_exception_handler,
    not_found_response,
)
from chatapi.idempotency import idempotent
from chatapi.ids import parse_uuid
from chatapi.schema import ERROR_RESPONSES


class APIKeyViewSet(viewsets.ViewSet):
    """The caller's own API keys."""

    @extend_schema(operation_id="api_keys_list", responses={200: APIKeyOutput(many=True), **ERROR_RESPONSES})
    def list(self, request: AuthenticatedRequest) -> Response:
        keys = selectors.api_key_list_for_user(user=request.user)
        return Response(APIKeyOutput(keys, many=True).data)

    @extend_schema(
        operation_id="api_keys_create",
        request=APIKeyCreateInput,
        responses={201: APIKeyCreatedOutput, **ERROR_RESPONSES},
        description="Make a key. The response holds the full key; it is never shown again.",
    )
    @idempotent(secret=("key",))
    def create(self, request: AuthenticatedRequest) -> Response:
        serializer = APIKeyCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        limits = {field: data.pop(field) for field in LIMIT_FIELDS if field in data}
        maker = request.auth if isinstance(request.auth, APIKey) else None
        api_key, raw_key = services.api_key_create(user=request.user, limits=limits, maker=maker, **data)
        body = {**APIKeyOutput(api_key).data, "key": raw_key, "tightened": api_key.tightened}  # type: ignore[attr-defined]
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="api_keys_revoke",
        parameters=[OpenApiParameter("key_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses={204: None, **ERROR_RESPONSES},
        description="Revoke a key: it stops working at once. It stays listed, with `revoked_at`.",
    )
    def destroy(self, request: AuthenticatedRequest, key_id: str) -> Response:
        pk = parse_uuid(key_id)
        api_key = selectors.api_key_list_for_user(user=request.user).filter(pk=pk).first() if pk else None
        if api_key is None:
            raise NotFound("API key not found.", code="api_key_not_found")
        services.api_key_revoke(api_key=api_key)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- operator endpoints ------------------------------------------------------------------------------------

# Every use of the operator endpoints, one line each: who, what, from where, and how it ended; never the key.
operator_log = logging.getLogger("chatapi.operator")


class _Hidden(Exception):
    """The operator endpoints are off (no CHATAPI_ADMIN_KEY) and no staff key was given: answer exactly as an
    unknown path does, so that they do not advertise themselves."""


class OperatorView(AsyncAPIView):
    """Base of the operator endpoints. The admin_key travels in the body (or the query of a GET), not in a
    header: no API-key or session authentication, hence no CSRF check either. Errors are the older proxy's flat
    `{"error": "<text>"}`. Left out of the OpenAPI schema: they are for an operator's scripts, not for API
    clients, and the public schema would advertise an admin surface that answers 404 when it is off."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    renderer_classes = [JSONRenderer]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.operator: services.Operator | None = None
        self.outcome = ""  # what was done, for the log line
        self.refusal = ""  # why the admin_key was refused, for the log line

    @staticmethod
    def hidden() -> bool:
        return not settings.CHATAPI_ADMIN_KEY

    @property
    def default_response_headers(self) -> dict[str, str]:
        # No `Allow` header while hidden: an unknown path has none.
        return {} if self.hidden() else super().default_response_headers

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response]:
        return compat_exception_handler

    def handle_exception(self, exc: Exception) -> HttpResponseBase:
        if isinstance(exc, _Hidden):
            return not_found_response()
        return super().handle_exception(exc)

    def http_method_not_allowed(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if self.hidden():
            raise _Hidden
        return super().http_method_not_allowed(request, *args, **kwargs)

    async def options(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if self.hidden():
            raise _Hidden
        return Response(status=status.HTTP_204_NO_CONTENT, headers={"Allow": ", ".join(self.allowed_methods)})

    @staticmethod
    def client(request: Request) -> str:
        # uvicorn sets REMOTE_ADDR from X-Forwarded-For only for the proxies it trusts (--forwarded-allow-ips).
        return request.META.get("REMOTE_ADDR") or "an unknown address"

    @staticmethod
    def fields(request: Request) -> Mapping[str, Any]:
        """The request's fields: the query of a GET, else the body (a 400 or 415 when it cannot be read)."""
        if request.method in ("GET", "HEAD"):
            return request.query_params
        data = request.data
        if not isinstance(data, Mapping):
            raise InvalidRequest("Invalid request body: expected a JSON object.")
        return data

    async def admit(self, request: Request) -> services.Operator:
        """The operator the request's admin_key stands for; else 401/403/429, or 404 while the endpoints are off.
        Failed attempts are counted per client address (in Redis with REDIS_URL), and past
        CHATAPI_ADMIN_MAX_FAILURES a minute the key is not even looked at."""
        try:
            fields = self.fields(request)
        except (exceptions.ParseError, exceptions.UnsupportedMediaType, ApplicationError):
            if self.hidden():
                raise _Hidden from None
            raise
        admin_key = fields.get("admin_key")
        if not isinstance(admin_key, str) or not admin_key:
            self.refusal = "no admin_key"
            if self.hidden():
                raise _Hidden
            if admin_key not in (None, ""):
                raise InvalidRequest("admin_key: Must be a string.", param="admin_key")
            raise Unauthorized("admin_key is required.", code="admin_key_required")
        try:
            attempt = await admin_key_attempt_begin(self.client(request))
        except RateLimited:
            self.refusal = "too many failed attempts from this address; the key was not checked"
            if self.hidden():
                raise _Hidden from None
            raise
        try:
            operator = await db_work(services.operator_authenticate)(admin_key=admin_key)
        except services.InvalidAdminKey as exc:
            self.refusal = f"{exc} ({attempt.failures} of {settings.CHATAPI_ADMIN_MAX_FAILURES} failures a minute)"
            if self.hidden():
                raise _Hidden from None
            if exc.user is not None:
                raise Forbidden("The admin_key is the API key of a user who is not staff.") from None
            raise Unauthorized("Invalid admin key", code="invalid_admin_key") from None
        await admin_key_attempt_succeeded(attempt)
        self.operator = operator
        return operator

    def finalize_response(self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        # request.path: the query of a GET holds the admin_key.
        what = f"{request.method} {request.path} -> {response.status_code}"
        where = self.client(request)
        if self.operator is not None:
            outcome = f", {self.outcome}" if self.outcome else ""
            operator_log.info("%s from %s: %s%s", self.operator, where, what, outcome)
        else:
            operator_log.warning("refused from %s: %s, %s", where, what, self.refusal or "the request was not read")
        return response


class OperatorUserAddView(OperatorView):
    """`POST /admin/users/add` `{"admin_key"}`: a new user with one API key, shown this once."""

    @extend_schema(exclude=True)
    async def post(self, request: Request) -> Response:
        await self.admit(request)
        user, api_key, raw_key = await db_work(services.operator_user_create)()
        self.outcome = f"added user {user.pk} ({user.username}) with key {api_key.prefix}"
        return Response(OperatorUserCreatedOutput({"user": user, "token": raw_key}).data)


class OperatorUserDeleteView(OperatorView):
    """`POST /admin/users/delete` `{"admin_key", "user_id"}`: the user deactivated, every key of theirs revoked
    (conversations and usage stay)."""

    @extend_schema(exclude=True)
    async def post(self, request: Request) -> Response:
        await self.admit(request)
        serializer = OperatorUserDeleteInput(data=self.fields(request))
        serializer.is_valid(raise_exception=True)
        user_id = serializer.validated_data["user_id"]
        user = await db_work(selectors.user_get_active)(user_id=user_id)
        if user is None:
            raise NotFound("User not found", code="user_not_found")
        if user.is_staff:
            raise Forbidden("Staff users are not deleted here; use the Django admin.", code="staff_user")
        revoked = await db_work(services.user_deactivate)(user=user)
        self.outcome = f"deleted user {user.pk} ({user.username}), {revoked} key(s) revoked"
        return Response({"message": "User deleted"})


class OperatorUserListView(OperatorView):
    """`GET /admin/users?admin_key=…`: active users, one entry per working key, `token` being the key's public
    prefix (keys are never stored); a user without a working key is listed once, with `token: null`."""

    @extend_schema(exclude=True)
    async def get(self, request: Request) -> Response:
        await self.admit(request)
        users = await db_work(lambda: list(selectors.user_list_active_with_keys()))()
        rows = [
            {"user": user, "api_key": api_key}
            for user in users
            for api_key in (user.active_keys or [None])  # type: ignore[attr-defined]
        ]
        self.outcome = f"listed {len(users)} user(s)"
        return Response(OperatorUserListOutput({"users": rows}).data)
