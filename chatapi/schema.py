"""OpenAPI pieces shared by the apps: the error body and the error responses every endpoint may give."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorDetailOutput(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.ChoiceField(
        choices=[
            "invalid_request_error",
            "authentication_error",
            "permission_error",
            "not_found_error",
            "conflict_error",
            "rate_limit_error",
            "backend_error",
            "server_error",
        ]
    )
    code = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    details = serializers.DictField()


class ErrorOutput(serializers.Serializer):
    error = ErrorDetailOutput()


ERROR_RESPONSES = {
    400: OpenApiResponse(ErrorOutput, description="Malformed body or invalid field (`param` names it)."),
    401: OpenApiResponse(ErrorOutput, description="No API key, or an unknown, revoked or expired one."),
    404: OpenApiResponse(ErrorOutput, description="Not found, or not the caller's."),
    413: OpenApiResponse(ErrorOutput, description="Body larger than the configured limit."),
    502: OpenApiResponse(ErrorOutput, description="The model backend answered with an error."),
    503: OpenApiResponse(ErrorOutput, description="No model backend reachable for that model."),
    504: OpenApiResponse(ErrorOutput, description="The model backend timed out."),
}
