"""DRF authentication with chatapi API keys: `Authorization: Bearer <key>` or a bare `Authorization: <key>`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import APIKey, User
from accounts.services import InvalidAPIKey, api_key_authenticate


def api_key_from_header(header: str) -> str | None:
    """The key in an Authorization header value; None when the header uses another scheme (Basic, …)."""
    parts = header.split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1]
    if len(parts) == 1:
        return parts[0]  # older clients send the key with no scheme
    return None


class AuthenticatedRequest(Request):
    """For annotations: the request of a view that requires a login (IsAuthenticated, the default), whose
    user is therefore a User, never AnonymousUser."""

    user: User


class APIKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, APIKey] | None:
        raw_key = api_key_from_header(request.META.get("HTTP_AUTHORIZATION", ""))
        if raw_key is None:
            return None
        try:
            api_key = api_key_authenticate(raw_key=raw_key)
        except InvalidAPIKey as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
        return api_key.user, api_key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) when authentication fails.
        return "Bearer"


class APIKeyScheme(OpenApiAuthenticationExtension):
    target_class = APIKeyAuthentication
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A chatapi API key (`ck_…`)."}
