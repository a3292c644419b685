"""Self-service API keys: `GET/POST /api/keys`, `DELETE /api/keys/{id}`."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.response import Response

from accounts import selectors, services
from accounts.authentication import AuthenticatedRequest
from accounts.models import LIMIT_FIELDS, APIKey
from accounts.serializers import APIKeyCreatedOutput, APIKeyCreateInput, APIKeyOutput
from chatapi.errors import NotFound
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
