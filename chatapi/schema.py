"""OpenAPI pieces shared by the apps: the error body and the error responses every endpoint may give."""

from __future__ import annotations

from typing import Any

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

# Of the operations that store a reply: the conversation changed under it.
CONFLICT = "Another request changed the conversation meanwhile (say, deleted the prompt): the reply was not stored."


def event_stream(events: list[str], *, description: str, numbered: bool = False) -> OpenApiResponse:
    """A `text/event-stream` answer (`numbered`: every event has an `id`). Its schema is that of one event as an
    SSE parser reads it, which is how tools read an event stream's schema before OpenAPI 3.2's `itemSchema`."""
    event: dict[str, Any] = {
        "type": "object",
        "description": "One server-sent event (`: ping` comments are not events).",
        "properties": {
            "id": {"type": "string", "description": "The event's sequence number."},
            "event": {"type": "string", "enum": events},
            "data": {"type": "string", "description": "The event's data line."},
        },
        "required": ["id", "event", "data"] if numbered else ["event", "data"],
    }
    if not numbered:
        del event["properties"]["id"]
    return OpenApiResponse(event, description=description)


# OpenAPI links: where the ids in a reply (`{"response": {"id", "conversation_id"}}`) go next. They document
# the flow and let tools that follow links (the fuzzer's stateful phase) reach a reply's own operations.
_REPLY = "$response.body#/response/"
_REPLY_LINKS = {
    "ask": ("conversations_ask", {"conversation_id": _REPLY + "conversation_id"}),
    "messages": ("conversations_messages", {"conversation_id": _REPLY + "conversation_id"}),
    "regenerate": (
        "conversations_regenerate",
        {"conversation_id": _REPLY + "conversation_id", "message_id": _REPLY + "id"},
    ),
    "delete_message": (
        "conversations_message_destroy",
        {"conversation_id": _REPLY + "conversation_id", "message_id": _REPLY + "id"},
    ),
    "fork": ("conversations_fork", {"conversation_id": _REPLY + "conversation_id"}),
    "stream": (
        "conversations_message_stream",
        {"conversation_id": _REPLY + "conversation_id", "message_id": _REPLY + "id"},
    ),
    "cancel": (
        "conversations_message_cancel",
        {"conversation_id": _REPLY + "conversation_id", "message_id": _REPLY + "id"},
    ),
}


def add_reply_links(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular hook: links from the `201` of new, ask and regenerate to what continues a thread."""
    for path in result["paths"].values():
        for operation in path.values():
            if operation.get("operationId") in ("conversations_new", "conversations_ask", "conversations_regenerate"):
                operation["responses"]["201"]["links"] = {
                    name: {"operationId": target, "parameters": parameters}
                    for name, (target, parameters) in _REPLY_LINKS.items()
                }
    return result
