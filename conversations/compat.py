"""Endpoints compatible with two older proxies (`/api/complete`, `/api/ask`), so their clients switch by host.

Their clients read `error` as a string, so errors here are `{"error": "<text>"}` with the usual statuses.
"""

from __future__ import annotations

from django.http import HttpResponseBase, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chatapi.errors import compat_exception_handler
from chatapi.fields import PromptField
from chatapi.negotiation import StreamFriendlyNegotiation
from chatapi.responses import deferred_json
from chatapi.schema import CONFLICT
from conversations import services, streaming
from conversations.views import api_key_id


class CompleteInput(serializers.Serializer):
    content = PromptField(help_text="The prompt.")


class CompatAskInput(serializers.Serializer):
    content = PromptField(help_text="The prompt.")
    conversation_id = serializers.UUIDField(
        required=False, allow_null=True, help_text="Continue this conversation; omit to start one."
    )
    parent_id = serializers.UUIDField(
        required=False, allow_null=True, help_text="Answer this message: the previous answer's `response_id`."
    )


class CompatAskOutput(serializers.Serializer):
    id = serializers.UUIDField(help_text="The stored prompt.")
    response_id = serializers.UUIDField(help_text="The reply; send it as `parent_id` to continue.")
    conversation_id = serializers.UUIDField()
    content = serializers.CharField(help_text="The reply's text.")
    error = serializers.CharField(help_text="Always empty on success.")


class CompatErrorOutput(serializers.Serializer):
    error = serializers.CharField()


COMPAT_ERRORS = {
    status: OpenApiResponse(CompatErrorOutput, description=description)
    for status, description in [
        (400, "Missing or invalid field."),
        (401, "No API key, or an unknown, revoked or expired one."),
        (404, "Unknown conversation."),
        (413, "Body larger than the configured limit."),
        (502, "The model backend answered with an error."),
        (503, "No model backend reachable."),
        (504, "The model backend timed out."),
    ]
}


class AskView(APIView):
    """`POST /api/ask`: one exchange, answered whole; threads are chained through `response_id`."""

    def get_exception_handler(self):
        return compat_exception_handler

    @extend_schema(
        operation_id="compat_ask",
        request=CompatAskInput,
        responses={
            200: CompatAskOutput,
            **COMPAT_ERRORS,
            409: OpenApiResponse(CompatErrorOutput, description=CONFLICT),
        },
        description=(
            "Ask, answered as one JSON object. Without `conversation_id` a new conversation is started; "
            "continue it with `conversation_id` and `parent_id` set to the previous `response_id`."
        ),
    )
    def post(self, request: Request) -> HttpResponseBase:
        serializer = CompatAskInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = services.compat_ask_prepare(owner=request.user, **serializer.validated_data)
        job.api_key_id = api_key_id(request)

        async def answer() -> Response:
            reply = await services.reply_generate(job=job)
            return Response(
                {
                    "id": str(reply.parent_id),
                    "response_id": str(reply.pk),
                    "conversation_id": str(reply.conversation_id),
                    "content": reply.content,
                    "error": "",
                }
            )

        return deferred_json(answer, view=self)


class CompleteView(APIView):
    """`POST /api/complete`: the reply as plain text, streamed as it is generated."""

    content_negotiation_class = StreamFriendlyNegotiation

    def get_exception_handler(self):
        return compat_exception_handler

    @extend_schema(
        operation_id="compat_complete",
        request=CompleteInput,
        responses={(200, "text/plain"): OpenApiTypes.STR, **COMPAT_ERRORS},
        description=(
            "Streams the reply as `text/plain` (`curl -N` shows it live). Continues the caller's latest "
            "conversation made through this endpoint, or starts one. A backend failure after the reply has "
            "started is appended as a line `[error: …]`."
        ),
    )
    def post(self, request: Request) -> StreamingHttpResponse:
        serializer = CompleteInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = services.complete_prepare(owner=request.user, content=serializer.validated_data["content"])
        job.api_key_id = api_key_id(request)
        return streaming.stream_response(
            streaming.reply_text(job),
            content_type="text/plain; charset=utf-8",
            on_error=lambda _sent: b"\n[error: Internal server error.]\n",
        )
