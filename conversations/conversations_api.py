"""OpenAI's Conversations API (`/v1/conversations…`) over the same conversations as `/conversations`.

`conv_<hex>` is a conversation's id, `msg_<hex>` a message's. A conversation's items are the messages of
its current branch (root→`current_node`), converted as the Responses API converts them (responses_api);
adding items continues that branch without asking the model, and `POST /v1/responses` with
`conversation` continues it with a reply. Retrieving or deleting an item takes any message of the
conversation, on any branch. Deleting an item takes that one message out and keeps what follows it (its
children move up to its parent), as OpenAI's clients expect of "delete an item"; `DELETE
/conversations/{id}/messages/{id}` and `DELETE /v1/responses/{id}` still take a whole subtree.
"""

from __future__ import annotations

from typing import Any

from adrf.views import APIView as AsyncAPIView
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.response import Response

from accounts.authentication import AuthenticatedRequest
from chatapi.db import ConnectionReleasing, db_work
from chatapi.errors import InvalidRequest
from chatapi.idempotency import idempotent
from conversations import generations, selectors, services
from conversations.models import Conversation, Message
from conversations.openai_api import OPENAI_ERRORS, OpenAIError, OpenAIView
from conversations.responses_api import (
    MESSAGE_ITEM_SCHEMA,
    MetadataField,
    conversation_id,
    enum_field,
    item_list,
    items_parse,
    list_query,
    message_item,
    metadata_parse,
    parse_id,
)

MAX_ITEMS = 20  # OpenAI's: "You may add up to 20 items at a time."


def conversation_object(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation_id(conversation.pk),
        "object": "conversation",
        "created_at": int(conversation.created_at.timestamp()),
        "metadata": conversation.metadata,
    }


def _body(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def _conversation_of(request: AuthenticatedRequest, cid: str) -> Conversation:
    return selectors.conversation_get_for_user(user=request.user, conversation_id=parse_id(cid, "conv_"))


def _item_of(request: AuthenticatedRequest, cid: str, iid: str) -> tuple[Conversation, Message]:
    conversation = _conversation_of(request, cid)
    message = selectors.message_get_in_conversation(conversation=conversation, message_id=parse_id(iid, "msg_"))
    return conversation, message


# --- schemas (the views validate by hand, with OpenAI's error messages) --------------------------


ITEMS_SCHEMA = {"type": "array", "items": MESSAGE_ITEM_SCHEMA, "maxItems": MAX_ITEMS}


@extend_schema_field({**ITEMS_SCHEMA, "nullable": True})
class FirstItemsField(serializers.JSONField):
    """`items` of a new conversation: none, or message items with text content."""


@extend_schema_field({**ITEMS_SCHEMA, "minItems": 1})
class ItemsField(serializers.JSONField):
    """`items` to add: message items with text content."""


class OpenAIConversationCreateRequest(serializers.Serializer):
    items = FirstItemsField(required=False, help_text="Up to 20 message items: the conversation's first branch.")
    metadata = MetadataField(required=False)


class OpenAIConversationUpdateRequest(serializers.Serializer):
    metadata = MetadataField(help_text="Replaces the conversation's metadata (null: none).")


class ItemsCreateRequest(serializers.Serializer):
    items = ItemsField(help_text="Up to 20 message items, added after the current node, in order.")


class OpenAIConversationOutput(serializers.Serializer):
    id = serializers.CharField()
    object = enum_field(["conversation"])
    created_at = serializers.IntegerField()
    metadata = serializers.DictField(child=serializers.CharField())


class OpenAIConversationDeletedOutput(serializers.Serializer):
    id = serializers.CharField()
    object = enum_field(["conversation.deleted"])
    deleted = serializers.BooleanField()


class ItemContent(serializers.Serializer):
    type = enum_field(["input_text", "output_text"])
    text = serializers.CharField(allow_blank=True)
    annotations = serializers.ListField(child=serializers.DictField(), required=False, help_text="output_text only.")
    logprobs = serializers.ListField(child=serializers.DictField(), required=False, help_text="output_text only.")


class OpenAIConversationItemOutput(serializers.Serializer):
    type = enum_field(["message"])
    id = serializers.CharField()
    status = enum_field(["in_progress", "completed", "incomplete"])
    role = enum_field(["user", "system", "assistant"])
    content = ItemContent(many=True)


class OpenAIConversationItemListOutput(serializers.Serializer):
    object = enum_field(["list"])
    data = OpenAIConversationItemOutput(many=True)  # type: ignore[assignment]
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


CONVERSATION_ID = OpenApiParameter("conversation_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="`conv_…`")
ITEM_ID = OpenApiParameter("item_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="`msg_…`")
INCLUDE = OpenApiParameter("include", OpenApiTypes.STR, many=True, description="Accepted; nothing more is included.")
ERRORS = {**OPENAI_ERRORS, 404: OpenApiResponse(OpenAIError, description="No such conversation of the caller's.")}
ITEM_ERRORS = {**OPENAI_ERRORS, 404: OpenApiResponse(OpenAIError, description="No such conversation or item.")}
IN_PROGRESS = OpenApiResponse(
    OpenAIError, description="The current node is a reply still being generated (`reply_in_progress`)."
)


# --- views ----------------------------------------------------------------------------------


class ConversationsView(OpenAIView):
    @extend_schema(
        operation_id="openai_conversations_create",
        request=OpenAIConversationCreateRequest,
        responses={200: OpenAIConversationOutput, **OPENAI_ERRORS},
        description=(
            "A new conversation (the same as one of `/conversations`), holding `items` as its first branch, "
            "with `metadata`. Only message items with text content are taken; any other is a 400 naming it."
        ),
    )
    @idempotent()
    def post(self, request: AuthenticatedRequest) -> Response:
        body = _body(request.data)
        raw = body.get("items")
        items = items_parse(raw, param="items", most=MAX_ITEMS) if raw is not None and raw != [] else []
        metadata = metadata_parse(body.get("metadata"))
        conversation = services.openai_conversation_create(owner=request.user, items=items, metadata=metadata)
        return Response(conversation_object(conversation))


class ConversationDetailView(OpenAIView):
    @extend_schema(
        operation_id="openai_conversations_retrieve",
        parameters=[CONVERSATION_ID],
        responses={200: OpenAIConversationOutput, **ERRORS},
        description="A conversation of the caller's (made through any API).",
    )
    def get(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
        return Response(conversation_object(_conversation_of(request, conversation_id)))

    @extend_schema(
        operation_id="openai_conversations_update",
        parameters=[CONVERSATION_ID],
        request=OpenAIConversationUpdateRequest,
        responses={200: OpenAIConversationOutput, **ERRORS},
        description="Replace the conversation's metadata.",
    )
    def post(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
        body = _body(request.data)
        if "metadata" not in body:
            raise InvalidRequest("metadata is required.", param="metadata")
        metadata = metadata_parse(body["metadata"])
        conversation = _conversation_of(request, conversation_id)
        services.conversation_update(conversation=conversation, metadata=metadata)
        return Response(conversation_object(conversation))

    @extend_schema(
        operation_id="openai_conversations_delete",
        parameters=[CONVERSATION_ID],
        responses={200: OpenAIConversationDeletedOutput, **ERRORS},
        description="Delete the conversation and all its messages, on every branch.",
    )
    def delete(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
        conversation = _conversation_of(request, conversation_id)
        deleted = conversation_object(conversation)["id"]
        services.conversation_delete(conversation=conversation)
        return Response({"id": deleted, "object": "conversation.deleted", "deleted": True})


class ConversationItemsView(OpenAIView):
    @extend_schema(
        operation_id="openai_conversations_items_list",
        parameters=[
            CONVERSATION_ID,
            OpenApiParameter("limit", OpenApiTypes.INT, description="1 to 100, default 20."),
            OpenApiParameter("order", OpenApiTypes.STR, enum=["asc", "desc"], description="Default `desc`."),
            OpenApiParameter("after", OpenApiTypes.STR, description="An item id of the branch: the items after it."),
            INCLUDE,
        ],
        responses={200: OpenAIConversationItemListOutput, **ERRORS},
        description="The items of the conversation's current branch (root→current_node), newest first by default.",
    )
    def get(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
        limit, descending = list_query(request)
        raw_after = request.query_params.get("after")
        after = parse_id(raw_after, "msg_") if raw_after is not None else None
        if raw_after is not None and after is None:
            raise InvalidRequest("after must be an item id (msg_…).", param="after")
        conversation = _conversation_of(request, conversation_id)
        page, has_more = selectors.message_branch_page(
            conversation=conversation, limit=limit, descending=descending, after=after
        )
        return Response(item_list(page, has_more))

    @extend_schema(
        operation_id="openai_conversations_items_create",
        parameters=[CONVERSATION_ID, INCLUDE],
        request=ItemsCreateRequest,
        responses={200: OpenAIConversationItemListOutput, **ERRORS, 409: IN_PROGRESS},
        description=(
            "Add items after the conversation's current node, in order (the model is not asked for a reply); "
            "answers the items added."
        ),
    )
    @idempotent()
    def post(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
        items = items_parse(_body(request.data).get("items"), param="items", most=MAX_ITEMS)
        conversation = _conversation_of(request, conversation_id)
        added = services.conversation_items_add(conversation=conversation, items=items)
        return Response(item_list(added, False))


class ConversationItemDetailView(OpenAIView, ConnectionReleasing, AsyncAPIView):
    @extend_schema(
        operation_id="openai_conversations_items_retrieve",
        parameters=[CONVERSATION_ID, ITEM_ID, INCLUDE],
        responses={200: OpenAIConversationItemOutput, **ITEM_ERRORS},
        description="An item (a message of the conversation, on any branch; a reply in progress: its text so far).",
    )
    async def get(self, request: AuthenticatedRequest, conversation_id: str, item_id: str) -> Response:
        _, message = await db_work(_item_of)(request, conversation_id, item_id)
        return Response(message_item(message))

    @extend_schema(
        operation_id="openai_conversations_items_delete",
        parameters=[CONVERSATION_ID, ITEM_ID],
        responses={200: OpenAIConversationOutput, **ITEM_ERRORS},
        description=(
            "Take the item out of the conversation and keep what follows it: its children move up to its parent. "
            "A reply being generated is stopped first. Answers the conversation."
        ),
    )
    async def delete(self, request: AuthenticatedRequest, conversation_id: str, item_id: str) -> Response:
        conversation, message = await db_work(_item_of)(request, conversation_id, item_id)
        if message.status == Message.Status.IN_PROGRESS:
            await generations.generation_cancel(message)
        await db_work(services.message_remove)(conversation=conversation, message=message)
        return Response(conversation_object(conversation))
