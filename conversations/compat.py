"""Endpoints compatible with two older proxies (`/api/complete`, `/api/ask`), so their clients switch by host.

Their clients read `error` as a string, so errors here are `{"error": "<text>"}` with the usual statuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adrf.views import APIView as AsyncAPIView
from django.http import HttpResponse, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from accounts.authentication import AuthenticatedRequest
from accounts.limits import LimitHeadersMixin, limit_admit
from chatapi.db import ConnectionReleasing
from chatapi.errors import compat_exception_handler
from chatapi.fields import PromptField
from chatapi.idempotency import idempotent
from chatapi.negotiation import StreamFriendlyNegotiation
from chatapi.schema import CONFLICT
from conversations import generations, services, streaming
from conversations.serializers import attachment_url
from conversations.views import api_key_id, media_responses


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


class AskView(LimitHeadersMixin, ConnectionReleasing, AsyncAPIView):
    """`POST /api/ask`: one exchange, answered whole; threads are chained through `response_id`."""

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response]:
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
    @idempotent()
    async def post(self, request: AuthenticatedRequest) -> HttpResponseBase:
        serializer = CompatAskInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        fields = serializer.validated_data
        slot = await limit_admit(request)
        generation, _ = await generations.generation_begin(
            lambda: services.compat_ask_prepare(owner=request.user, **fields), api_key_id=api_key_id(request), slot=slot
        )
        reply = await generations.generation_outcome(generation)
        return Response(
            {
                "id": str(reply.parent_id),
                "response_id": str(reply.pk),
                "conversation_id": str(reply.conversation_id),
                "content": reply.content,
                "error": "",
            }
        )


class CompleteView(LimitHeadersMixin, ConnectionReleasing, AsyncAPIView):
    """`POST /api/complete`: the reply as plain text, streamed as it is generated."""

    content_negotiation_class = StreamFriendlyNegotiation

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response]:
        return compat_exception_handler

    @extend_schema(
        operation_id="compat_complete",
        request=CompleteInput,
        responses={
            (200, "text/plain"): OpenApiTypes.STR,
            **media_responses("What the model made with a tool (an image, speech) instead of text."),
            **COMPAT_ERRORS,
        },
        description=(
            "Streams the reply as `text/plain` (`curl -N` shows it live). Continues the caller's latest "
            "conversation made through this endpoint, or starts one. A backend failure after the reply has "
            "started is appended as a line `[error: …]`. When the operator configured an image or speech model, "
            "the model may call `generate_image` or `text_to_speech`: the answer is then the file (`image/png`, "
            "`audio/mpeg`, …), also kept as an attachment of the reply (`Content-Location`)."
        ),
    )
    async def post(self, request: AuthenticatedRequest) -> HttpResponseBase:
        serializer = CompleteInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        content = serializer.validated_data["content"]
        slot = await limit_admit(request)
        generation, reply = await generations.generation_begin(
            lambda: services.complete_prepare(owner=request.user, content=content),
            api_key_id=api_key_id(request),
            slot=slot,
            offer_tools=True,
        )
        first, rest = await streaming.first_event(reply)
        if generation.made and first.seq == generation.made_seq:  # the model made a file before any text
            await rest.aclose()
            reply = await generations.generation_outcome(generation)
            attachment = reply.attachment_list()[0]
            return HttpResponse(
                generation.made[0].data,
                content_type=attachment.content_type,
                headers={"Content-Location": attachment_url(attachment.pk)},
            )
        if first.name == "error":  # nothing generated: an ordinary error answer, with its status
            await rest.aclose()
            await generations.generation_outcome(generation)
        return streaming.stream_response(
            streaming.reply_text(first, rest, generation), content_type="text/plain; charset=utf-8"
        )
