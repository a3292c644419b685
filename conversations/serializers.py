"""Input and output serializers of the conversation API (no business rules here)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from chatapi.fields import PromptField, StrictBooleanField, StrictCharField
from conversations.models import Conversation, Message
from conversations.selectors import ORDERINGS, conversation_tags
from conversations.services import BULK_ACTIONS

# --- input -------------------------------------------------------------------------------------


class _ModelChoiceInput(serializers.Serializer):
    model = StrictCharField(
        required=False, allow_blank=True, allow_null=True, max_length=200, help_text='A model id, or "auto".'
    )


class _ReplyOptionsInput(_ModelChoiceInput):
    stream = StrictBooleanField(required=False, default=False, help_text="Stream the reply as server-sent events.")
    autocontinue = StrictBooleanField(
        required=False, default=False, help_text="Keep generating when the model stops at its token limit."
    )


_FOLDER_HELP = "Make it in this folder of yours; without a system_prompt it starts with the folder's."
TAG_LENGTH = 64


def _tag_field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(max_length=TAG_LENGTH, trim_whitespace=True, **kwargs)


class ConversationNewInput(_ReplyOptionsInput):
    prompt = PromptField(help_text="The user's first message.")
    title = StrictCharField(required=False, allow_blank=True, max_length=255, default="")
    system_prompt = StrictCharField(required=False, allow_blank=True, default="")
    folder_id = serializers.UUIDField(required=False, allow_null=True, help_text=_FOLDER_HELP)


class ConversationCreateInput(_ModelChoiceInput):
    title = StrictCharField(required=False, allow_blank=True, max_length=255, default="")
    system_prompt = StrictCharField(required=False, allow_blank=True, default="")
    folder_id = serializers.UUIDField(required=False, allow_null=True, help_text=_FOLDER_HELP)


class ConversationUpdateInput(_ModelChoiceInput):
    title = StrictCharField(required=False, allow_blank=True, max_length=255)
    system_prompt = StrictCharField(required=False, allow_blank=True)
    current_node = serializers.UUIDField(required=False, help_text="Switch branch: a message of this conversation.")
    pinned = StrictBooleanField(required=False)
    archived = StrictBooleanField(required=False)
    tags = serializers.ListField(
        child=_tag_field(), required=False, max_length=32, help_text="Replaces the conversation's tags."
    )
    folder_id = serializers.UUIDField(
        required=False, allow_null=True, help_text="Move it into this folder of yours; null takes it out."
    )


class AskInput(_ReplyOptionsInput):
    prompt = PromptField(help_text="The user's message.")
    parent_id = serializers.UUIDField(
        required=False,
        allow_null=True,
        help_text="Answer this message (an earlier one makes a new branch); default: current_node.",
    )


class RegenerateInput(_ReplyOptionsInput):
    pass


class ForkInput(serializers.Serializer):
    message_id = serializers.UUIDField(
        required=False, allow_null=True, help_text="Copy the path root→this message; default: current_node."
    )
    title = StrictCharField(required=False, allow_blank=True, max_length=255, default="")


class MessageListQuery(serializers.Serializer):
    leaf = serializers.UUIDField(required=False, help_text="Return the branch root→this message.")
    all = StrictBooleanField(required=False, default=False, help_text="Return every message, oldest first.")


ARCHIVED = {"true": True, "false": False, "all": None}


class _ListFiltersQuery(serializers.Serializer):
    limit = serializers.IntegerField(required=False, default=20, min_value=1, max_value=100)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=10**9)
    archived = serializers.ChoiceField(
        required=False, default="false", choices=list(ARCHIVED), help_text="Archived ones only, none, or all."
    )
    tag = _tag_field(required=False, help_text="Only conversations with this tag.")
    folder_id = serializers.UUIDField(required=False, help_text="Only conversations in this folder.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs["archived"] = ARCHIVED[attrs["archived"]]
        return attrs


class ConversationListQuery(_ListFiltersQuery):
    q = StrictCharField(required=False, allow_blank=True, default="", help_text="Search in titles.")
    order = serializers.ChoiceField(
        required=False,
        default="-update_time",
        choices=list(ORDERINGS),
        help_text="Pinned conversations come first whatever the order.",
    )
    pinned = StrictBooleanField(required=False, allow_null=True, default=None, help_text="Only pinned (or unpinned).")


class SearchQuery(_ListFiltersQuery):
    q = StrictCharField(
        max_length=1000,
        help_text='A web-search query: words (matched by stem), "a phrase", -excluded, or.',
    )


class BulkInput(serializers.Serializer):
    ids = serializers.ListField(child=serializers.UUIDField(), min_length=1, max_length=1000)
    action = serializers.ChoiceField(choices=list(BULK_ACTIONS))
    tag = _tag_field(required=False, help_text="For tag and untag.")
    folder_id = serializers.UUIDField(
        required=False, allow_null=True, help_text="For move: the folder (null: out of any folder)."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["action"] in ("tag", "untag") and not attrs.get("tag"):
            raise serializers.ValidationError({"tag": [f"Required for {attrs['action']}."]})
        if attrs["action"] == "move" and "folder_id" not in attrs:
            raise serializers.ValidationError({"folder_id": ["Required for move (null: out of any folder)."]})
        return attrs


class FolderInput(serializers.Serializer):
    name = StrictCharField(max_length=100, trim_whitespace=True)
    system_prompt = StrictCharField(required=False, allow_blank=True, default="")


class FolderUpdateInput(serializers.Serializer):
    name = StrictCharField(required=False, max_length=100, trim_whitespace=True)
    system_prompt = StrictCharField(required=False, allow_blank=True)


# --- output ------------------------------------------------------------------------------------


class AuthorOutput(serializers.Serializer):
    role = serializers.ChoiceField(choices=Message.Role.choices)
    name = serializers.CharField(allow_null=True)
    metadata = serializers.DictField()


class UsageOutput(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


def iso_time(moment: datetime) -> str:
    """A time as DRF's DateTimeField writes it (ISO 8601, UTC as `Z`): TIME_ZONE is UTC and never changed per
    request, so without DRF's look-up of the current time zone, a third of a message's serializing."""
    text = moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class AttachmentOutput(serializers.Serializer):
    id = serializers.UUIDField()
    content_type = serializers.CharField(help_text="image/png, audio/mpeg, …")
    size = serializers.IntegerField(help_text="Bytes.")
    url = serializers.CharField(help_text="Where its owner gets the file: /attachments/{id}.")


def attachment_url(attachment_id: object) -> str:
    return f"/attachments/{attachment_id}"


def attachments_of(message: Message) -> list[dict[str, Any]]:
    """A message's attachments (those its list prefetched; only a reply has any, so a user's or system
    message costs no query)."""
    if message.role != Message.Role.ASSISTANT:
        return []
    return [
        {"id": str(a.pk), "content_type": a.content_type, "size": a.size, "url": attachment_url(a.pk)}
        for a in message.attachment_list()
    ]


class MessageOutput(serializers.Serializer):
    """A message; `context["children"]` maps message ids to their children's ids.

    The fields below describe the output (and the OpenAPI schema); `to_representation` writes it out
    directly, because it runs for every message of every answer and DRF's generic path (copying the
    declared fields, a call per field) cost ten times as much.
    """

    id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    parent_id = serializers.UUIDField(allow_null=True)
    children = serializers.SerializerMethodField()
    author = serializers.SerializerMethodField()
    message = serializers.CharField(source="content")
    model = serializers.SerializerMethodField()
    finish_details = serializers.ChoiceField(choices=Message.Finish.choices, allow_null=True)
    status = serializers.ChoiceField(
        choices=Message.Status.choices, help_text="A reply is in_progress while it is generated (see generations)."
    )
    end_turn = serializers.SerializerMethodField()
    recipient = serializers.SerializerMethodField()
    citations = serializers.SerializerMethodField()
    create_time = serializers.DateTimeField(source="created_at")
    usage = serializers.SerializerMethodField()
    attachments = serializers.SerializerMethodField()

    def to_representation(self, message: Message) -> dict[str, Any]:
        return {
            "id": str(message.pk),
            "conversation_id": str(message.conversation_id),
            "parent_id": str(message.parent_id) if message.parent_id else None,
            "children": self.get_children(message),
            "author": self.get_author(message),
            "message": message.content,
            "model": self.get_model(message),
            "finish_details": str(message.finish_details) if message.finish_details is not None else None,
            "status": str(message.status),
            "end_turn": self.get_end_turn(message),
            "recipient": "all",
            "citations": [],
            "create_time": iso_time(message.created_at),
            "usage": self.get_usage(message),
            "attachments": attachments_of(message),
        }

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_children(self, message: Message) -> list[str]:
        return [str(child) for child in self.context.get("children", {}).get(message.pk, [])]

    @extend_schema_field(AuthorOutput)
    def get_author(self, message: Message) -> dict[str, Any]:
        return {"role": str(message.role), "name": None, "metadata": {}}

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_model(self, message: Message) -> str | None:
        return message.model or None

    @extend_schema_field(serializers.BooleanField(allow_null=True))
    def get_end_turn(self, message: Message) -> bool | None:
        if message.role != Message.Role.ASSISTANT:
            return None
        return message.finish_details == Message.Finish.STOP

    @extend_schema_field(OpenApiTypes.STR)
    def get_recipient(self, message: Message) -> str:
        return "all"

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_citations(self, message: Message) -> list[Any]:
        return []

    @extend_schema_field(AttachmentOutput(many=True))
    def get_attachments(self, message: Message) -> list[dict[str, Any]]:
        return attachments_of(message)

    @extend_schema_field(UsageOutput(allow_null=True))
    def get_usage(self, message: Message) -> dict[str, int] | None:
        if message.total_tokens is None:
            return None
        return {
            "prompt_tokens": message.prompt_tokens or 0,
            "completion_tokens": message.completion_tokens or 0,
            "total_tokens": message.total_tokens,
        }


class ReplyOutput(MessageOutput):
    """The assistant message of an ask: `parent_id` is the id to continue from (its own id)."""

    parent_id = serializers.UUIDField(source="pk", help_text="Send this as parent_id to continue the thread.")
    request_id = serializers.UUIDField(source="parent_id", help_text="The user message this answers.")

    def to_representation(self, message: Message) -> dict[str, Any]:
        data = super().to_representation(message)
        data["parent_id"] = data["id"]
        data["request_id"] = str(message.parent_id)
        return data


class ContextOutput(serializers.Serializer):
    messages = serializers.IntegerField(help_text="Messages of the branch sent to the model (the system prompt aside).")
    left_out = serializers.IntegerField(
        help_text="Earlier messages of the branch left out: they did not fit in the model's context window."
    )


class AskOutput(serializers.Serializer):
    response = ReplyOutput()
    context_window = ContextOutput(help_text="How much of the branch the model was sent.")


class MappingNodeOutput(serializers.Serializer):
    id = serializers.UUIDField()
    # A declared field: DRF's metaclass takes it off the class, so Field.parent stays; the stubs don't know.
    parent = serializers.UUIDField(allow_null=True)  # type: ignore[assignment]
    children = serializers.ListField(child=serializers.UUIDField())
    message = MessageOutput()


class ConversationOutput(serializers.Serializer):
    """A conversation; `mapping`/`current_node` are filled in when `context["messages"]` is given.

    As for MessageOutput, the fields describe the output (and the schema) and `to_representation` writes it out
    directly: DRF's generic path (a call per field, its time zone looked up for each time) was a quarter of the
    list's own CPU.
    """

    id = serializers.UUIDField()
    title = serializers.CharField()
    create_time = serializers.DateTimeField(source="created_at")
    update_time = serializers.DateTimeField(source="updated_at")
    model = serializers.SerializerMethodField()
    system_prompt = serializers.CharField()
    message_count = serializers.SerializerMethodField()
    mapping = serializers.SerializerMethodField()
    current_node = serializers.SerializerMethodField()
    pinned = serializers.BooleanField()
    archived = serializers.BooleanField()
    tags = serializers.SerializerMethodField()
    folder_id = serializers.UUIDField(allow_null=True)

    def to_representation(self, conversation: Conversation) -> dict[str, Any]:
        folder_id = conversation.folder_id
        return {
            "id": str(conversation.pk),
            "title": conversation.title,
            "create_time": iso_time(conversation.created_at),
            "update_time": iso_time(conversation.updated_at),
            "model": self.get_model(conversation),
            "system_prompt": conversation.system_prompt,
            "message_count": self.get_message_count(conversation),
            "mapping": self.get_mapping(conversation),
            "current_node": self.get_current_node(conversation),
            "pinned": conversation.pinned,
            "archived": conversation.archived,
            "tags": self.get_tags(conversation),
            "folder_id": str(folder_id) if folder_id is not None else None,
        }

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_tags(self, conversation: Conversation) -> list[str]:
        return conversation_tags(conversation=conversation)

    @extend_schema_field(OpenApiTypes.STR)
    def get_model(self, conversation: Conversation) -> str:
        return conversation.model or settings.CHATAPI_DEFAULT_MODEL

    @extend_schema_field(OpenApiTypes.INT)
    def get_message_count(self, conversation: Conversation) -> int:
        messages = self.context.get("messages")
        if messages is not None:
            return len(messages)
        return getattr(conversation, "message_count", 0)

    @extend_schema_field(serializers.DictField(child=MappingNodeOutput(), allow_null=True))
    def get_mapping(self, conversation: Conversation) -> dict[str, Any] | None:
        messages = self.context.get("messages")
        if messages is None:
            return None
        children = self.context["children"]
        # One message serializer for the conversations this one writes (the export writes thousands, and
        # making a serializer copies its fields); it reads `children` from the same context.
        message_output = getattr(self, "_message_output", None)
        if message_output is None:
            message_output = self._message_output = MessageOutput(context=self.context)
        return {
            str(message.pk): {
                "id": str(message.pk),
                "parent": str(message.parent_id) if message.parent_id else None,
                "children": [str(child) for child in children.get(message.pk, [])],
                "message": message_output.to_representation(message),
            }
            for message in messages
        }

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_current_node(self, conversation: Conversation) -> str | None:
        if self.context.get("messages") is None:
            return None
        node: uuid.UUID | None = conversation.current_node_id
        return str(node) if node else None


class FolderOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    system_prompt = serializers.CharField()
    create_time = serializers.DateTimeField(source="created_at")


class BulkOutput(serializers.Serializer):
    affected = serializers.IntegerField(help_text="How many conversations the action applied to.")


class SearchResultOutput(serializers.Serializer):
    conversation_id = serializers.UUIDField()
    title = serializers.CharField()
    message_id = serializers.UUIDField(allow_null=True, help_text="null for a match in the title.")
    role = serializers.CharField(allow_null=True, help_text="user, assistant or system; null for a title match.")
    snippet = serializers.CharField(help_text="HTML-escaped text around the matches, each in <mark>…</mark>.")
    create_time = serializers.DateTimeField()
    rank = serializers.FloatField(help_text="Higher is a better match.")


# --- export and import ---------------------------------------------------------------------------


class ExportQuery(serializers.Serializer):
    format = serializers.ChoiceField(
        choices=["chatgpt", "ndjson"],
        required=False,
        default="chatgpt",
        help_text="`chatgpt`: a JSON array in the shape of ChatGPT's conversations.json; `ndjson`: one conversation "
        "object a line, lossless.",
    )


class ExportOneQuery(serializers.Serializer):
    format = serializers.ChoiceField(
        choices=["chatgpt", "ndjson", "markdown"],
        required=False,
        default="chatgpt",
        help_text="As the whole export, or `markdown`: the current branch, readable.",
    )


class ImportFileInput(serializers.Serializer):
    file = serializers.FileField(help_text="conversations.json, the zip of a ChatGPT export, or NDJSON.")


class ImportErrorOutput(serializers.Serializer):
    index = serializers.IntegerField(help_text="Its position in the file, from 0.")
    id = serializers.CharField(allow_null=True, help_text="Its id in the file, if it has one.")
    title = serializers.CharField(allow_null=True)
    message = serializers.CharField(help_text="What is wrong with it.")


class ImportOutput(serializers.Serializer):
    imported = serializers.IntegerField(help_text="Conversations imported.")
    skipped = serializers.IntegerField(help_text="Conversations already there (imported before), left alone.")
    # A declared field: DRF's metaclass takes it off the class (so Serializer.errors stays); the stubs don't know.
    errors = ImportErrorOutput(  # type: ignore[assignment]
        many=True, help_text="Conversations that could not be imported (the first 1,000)."
    )
