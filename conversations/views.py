"""The conversation API (`/conversations…`): thin views that validate, call one service, serialize."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.http import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import APIKey
from chatapi.negotiation import StreamFriendlyNegotiation
from chatapi.responses import deferred_json
from chatapi.schema import CONFLICT, ERROR_RESPONSES, ErrorOutput, event_stream
from conversations import selectors, services, streaming
from conversations.models import Conversation
from conversations.serializers import (
    AskInput,
    AskOutput,
    ConversationCreateInput,
    ConversationListQuery,
    ConversationNewInput,
    ConversationOutput,
    ConversationUpdateInput,
    ForkInput,
    MessageListQuery,
    MessageOutput,
    RegenerateInput,
    ReplyOutput,
)

CONVERSATION_ID = OpenApiParameter("conversation_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
MESSAGE_ID = OpenApiParameter("message_id", OpenApiTypes.UUID, OpenApiParameter.PATH)

# The answers of new, ask and regenerate: the stored reply as JSON, or (with `"stream": true` or
# `Accept: text/event-stream`) a stream of server-sent events.
REPLY_RESPONSES = {
    (201, "application/json"): OpenApiResponse(
        AskOutput, description="The stored reply; `response.parent_id` is the id to continue the thread from."
    ),
    (200, "text/event-stream"): event_stream(
        ["created", "delta", "completed", "error"],
        numbered=True,
        description=(
            "With `stream` (or `Accept: text/event-stream`): the reply as server-sent events, each with `id:` (a "
            "sequence number), `event:` and one `data:` line of JSON. `created`: `{conversation_id, request, "
            "response_id}` (`request` is the stored prompt, `null` for a regenerate); `delta`: `{id, delta}`, a "
            "piece of text; then `completed`: `{response}`, the stored reply as in the `201` body, or `error`: "
            "`{error, id}` (the text generated so far is stored as `interrupted`). A `: ping` comment is sent "
            "after a silence. Errors found before the stream starts are ordinary JSON errors."
        ),
    ),
    409: OpenApiResponse(ErrorOutput, description=CONFLICT),
}


def _validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def api_key_id(request: Request) -> uuid.UUID | None:
    """The key the request came with (usage is counted against it); None for a session login."""
    return request.auth.pk if isinstance(request.auth, APIKey) else None


def _wants_stream(request: Request, data: dict[str, Any]) -> bool:
    return bool(data.pop("stream", False)) or "text/event-stream" in request.headers.get("Accept", "")


def _reply(
    view: APIView, data: dict[str, Any], prepare: Callable[..., services.ReplyJob], **kwargs: Any
) -> HttpResponseBase:
    """Store the prompt, then answer with the reply as JSON (201) or as a stream of server-sent events."""
    request = view.request
    stream = _wants_stream(request, data)
    job = prepare(**kwargs, **data)
    job.api_key_id = api_key_id(request)
    if not stream:

        async def answer() -> Response:
            reply = await services.reply_generate(job=job)
            return Response({"response": ReplyOutput(reply).data}, status=status.HTTP_201_CREATED)

        return deferred_json(answer, view=view)
    request_data = MessageOutput(job.request).data if job.request_is_new else None
    return streaming.stream_response(
        streaming.reply_events(job, request_data=request_data),
        content_type="text/event-stream",
        on_error=streaming.internal_error_event,
        ping=True,
    )


def _conversation_detail(conversation: Conversation) -> dict[str, Any]:
    messages = selectors.message_list_all(conversation=conversation)
    children = selectors.message_children_map(messages=messages, complete=True)
    return ConversationOutput(conversation, context={"messages": messages, "children": children}).data


class ConversationViewSet(viewsets.ViewSet):
    """Conversations of the authenticated user; anybody else's are a 404."""

    content_negotiation_class = StreamFriendlyNegotiation

    def _conversation(self, request: Request, conversation_id: str) -> Conversation:
        return selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)

    @extend_schema(
        operation_id="conversations_list",
        parameters=[
            ConversationListQuery,
            OpenApiParameter(
                "X-Total-Count",
                OpenApiTypes.INT,
                OpenApiParameter.HEADER,
                required=True,
                response=[200],
                description="How many conversations match, on every page.",
            ),
            OpenApiParameter(
                "Link",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                response=[200],
                description='RFC 8288 links to the `rel="next"` and `rel="prev"` pages, when there are any.',
            ),
        ],
        responses={200: ConversationOutput(many=True), **ERROR_RESPONSES},
        description="The caller's conversations, newest first. `X-Total-Count` and `Link` headers paginate.",
    )
    def list(self, request: Request) -> Response:
        query = _validated(ConversationListQuery, request.query_params)
        conversations = selectors.conversation_list_for_user(user=request.user, q=query["q"], order=query["order"])
        total = conversations.count()
        limit, offset = query["limit"], query["offset"]
        page = list(conversations[offset : offset + limit])
        response = Response(ConversationOutput(page, many=True).data)
        response["X-Total-Count"] = str(total)
        links = []
        base = request.build_absolute_uri(request.path)
        params = {key: value for key, value in request.query_params.items() if key not in ("limit", "offset")}
        if offset + limit < total:
            links.append(f'<{base}?{urlencode({**params, "limit": limit, "offset": offset + limit})}>; rel="next"')
        if offset > 0:
            prev_offset = max(offset - limit, 0)
            links.append(f'<{base}?{urlencode({**params, "limit": limit, "offset": prev_offset})}>; rel="prev"')
        if links:
            response["Link"] = ", ".join(links)
        return response

    @extend_schema(
        operation_id="conversations_create",
        request=ConversationCreateInput,
        responses={201: ConversationOutput, **ERROR_RESPONSES},
        description="An empty conversation (no prompt); ask in it with `/conversations/{id}/ask`.",
    )
    def create(self, request: Request) -> Response:
        data = _validated(ConversationCreateInput, request.data)
        conversation = services.conversation_create(owner=request.user, **data)
        return Response(_conversation_detail(conversation), status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="conversations_new",
        request=ConversationNewInput,
        responses={**REPLY_RESPONSES, **ERROR_RESPONSES},
        description=(
            "Start a conversation with its first prompt. `response.parent_id` is the id to continue from; "
            "`response.request_id` is the stored user message."
        ),
    )
    def new(self, request: Request) -> Response:
        data = _validated(ConversationNewInput, request.data)
        return _reply(self, data, services.conversation_start_prepare, owner=request.user)

    @extend_schema(
        operation_id="conversations_retrieve",
        parameters=[CONVERSATION_ID],
        responses={200: ConversationOutput, **ERROR_RESPONSES},
    )
    def retrieve(self, request: Request, conversation_id: str) -> Response:
        return Response(_conversation_detail(self._conversation(request, conversation_id)))

    @extend_schema(
        operation_id="conversations_update",
        parameters=[CONVERSATION_ID],
        request=ConversationUpdateInput,
        responses={200: ConversationOutput, **ERROR_RESPONSES},
        description="Rename, change the system prompt or model, or switch branch with `current_node`.",
    )
    def partial_update(self, request: Request, conversation_id: str) -> Response:
        conversation = self._conversation(request, conversation_id)
        data = _validated(ConversationUpdateInput, request.data)
        services.conversation_update(conversation=conversation, **data)
        return Response(_conversation_detail(conversation))

    @extend_schema(
        operation_id="conversations_destroy",
        parameters=[CONVERSATION_ID],
        responses={204: None, **ERROR_RESPONSES},
    )
    def destroy(self, request: Request, conversation_id: str) -> Response:
        services.conversation_delete(conversation=self._conversation(request, conversation_id))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="conversations_destroy_all",
        responses={204: None, **ERROR_RESPONSES},
        description="Delete all of the caller's conversations (and only theirs).",
    )
    def destroy_all(self, request: Request) -> Response:
        services.conversation_delete_all(owner=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="conversations_ask",
        parameters=[CONVERSATION_ID],
        request=AskInput,
        responses={**REPLY_RESPONSES, **ERROR_RESPONSES},
        description=(
            "Ask in a conversation. Without `parent_id` the prompt continues `current_node`; with an earlier "
            "message's id it starts a new branch. On a backend error the prompt stays stored and its id is in "
            "`error.details.message_id`."
        ),
    )
    def ask(self, request: Request, conversation_id: str) -> Response:
        conversation = self._conversation(request, conversation_id)
        data = _validated(AskInput, request.data)
        return _reply(self, data, services.conversation_ask_prepare, conversation=conversation)

    @extend_schema(
        operation_id="conversations_messages",
        parameters=[CONVERSATION_ID, MessageListQuery],
        responses={200: MessageOutput(many=True), **ERROR_RESPONSES},
        description="The branch root→current_node (or root→`leaf`), or with `all=true` every message oldest first.",
    )
    def messages(self, request: Request, conversation_id: str) -> Response:
        conversation = self._conversation(request, conversation_id)
        query = _validated(MessageListQuery, request.query_params)
        if query["all"]:
            messages = selectors.message_list_all(conversation=conversation)
            children = selectors.message_children_map(messages=messages, complete=True)
        else:
            if "leaf" in query:
                messages = selectors.message_path_or_400(conversation=conversation, leaf_id=query["leaf"], param="leaf")
            else:
                messages = selectors.message_path_get(conversation=conversation, leaf_id=conversation.current_node_id)
            children = selectors.message_children_map(messages=messages)
        return Response(MessageOutput(messages, many=True, context={"children": children}).data)

    @extend_schema(
        operation_id="conversations_regenerate",
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        request=RegenerateInput,
        responses={**REPLY_RESPONSES, **ERROR_RESPONSES},
        description="A new reply: a sibling of an assistant message, or a new child of a user message.",
    )
    def regenerate(self, request: Request, conversation_id: str, message_id: str) -> Response:
        conversation = self._conversation(request, conversation_id)
        message = selectors.message_get_in_conversation(conversation=conversation, message_id=message_id)
        data = _validated(RegenerateInput, request.data)
        return _reply(self, data, services.message_regenerate_prepare, conversation=conversation, message=message)

    @extend_schema(
        operation_id="conversations_message_destroy",
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        responses={204: None, **ERROR_RESPONSES},
        description="Delete a message and its whole subtree.",
    )
    def destroy_message(self, request: Request, conversation_id: str, message_id: str) -> Response:
        conversation = self._conversation(request, conversation_id)
        message = selectors.message_get_in_conversation(conversation=conversation, message_id=message_id)
        services.message_delete(conversation=conversation, message=message)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="conversations_fork",
        parameters=[CONVERSATION_ID],
        request=ForkInput,
        responses={201: ConversationOutput, **ERROR_RESPONSES},
        description="A new conversation holding a copy of the path root→`message_id` (default: current_node).",
    )
    def fork(self, request: Request, conversation_id: str) -> Response:
        conversation = self._conversation(request, conversation_id)
        data = _validated(ForkInput, request.data)
        fork = services.conversation_fork(conversation=conversation, **data)
        return Response(_conversation_detail(fork), status=status.HTTP_201_CREATED)
