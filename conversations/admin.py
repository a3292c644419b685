"""Admin for conversations: browse and delete them; their messages are shown read-only."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.text import Truncator

from chatapi.admin_mixins import ReadOnlyInlineMixin
from conversations.models import Conversation, Message

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class MessageInline(ReadOnlyInlineMixin, admin.TabularInline):
    """The conversation's messages, oldest first. Only the services write messages (the tree has rules)."""

    model = Message
    fk_name = "conversation"
    fields = ("created_at", "role", "short_content", "model", "finish_details", "tokens", "parent_ref")
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return Truncator(obj.content).chars(200)

    @admin.display(description="tokens (prompt / completion / total)")
    def tokens(self, obj: Message) -> str:
        if obj.total_tokens is None:
            return "-"
        return f"{obj.prompt_tokens} / {obj.completion_tokens} / {obj.total_tokens}"

    @admin.display(description="parent")
    def parent_ref(self, obj: Message) -> str:
        # The id, not str(parent): that would cost one query per message.
        return str(obj.parent_id) if obj.parent_id else "-"


class MessageCount(TypedDict):
    message_count: int


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title_or_id", "owner", "model", "message_count", "created_at", "updated_at")
    list_select_related = ("owner",)
    search_fields = ("title", "owner__username", "owner__email")
    fields = ("id", "owner", "title", "model", "system_prompt", "current_node", "created_at", "updated_at")
    readonly_fields = fields
    inlines = [MessageInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(message_count=Count("messages"))

    @admin.display(description="title", ordering="title")
    def title_or_id(self, obj: Conversation) -> str:
        return str(obj)

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, obj: WithAnnotations[Conversation, MessageCount]) -> int:
        return obj.message_count

    # Conversations are made and changed through the API, whose services keep the tree's rules;
    # here they can be looked at and deleted (their messages go with them).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Conversation | None = None) -> bool:
        return False
