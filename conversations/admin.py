"""Admin for conversations: browse, filter, archive and delete them (their messages are shown read-only);
folders."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django.contrib import admin
from django.db.models import Count, Prefetch, QuerySet
from django.http import HttpRequest
from django.utils.text import Truncator

from accounts.models import User
from chatapi.admin_mixins import ReadOnlyInlineMixin
from conversations import services
from conversations.models import Conversation, ConversationTag, Folder, Message

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
    list_display = (
        "title_or_id",
        "owner",
        "model",
        "message_count",
        "pinned",
        "archived",
        "folder",
        "tag_list",
        "created_at",
        "updated_at",
    )
    list_select_related = ("owner", "folder")
    list_filter = ("archived", "pinned")
    search_fields = ("title", "owner__username", "owner__email", "tag_links__name")
    fields = (
        "id",
        "owner",
        "title",
        "model",
        "system_prompt",
        "current_node",
        "pinned",
        "archived",
        "folder",
        "tag_list",
        "source_id",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    inlines = [MessageInline]
    actions = ["archive", "unarchive"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        tags = Prefetch("tag_links", queryset=ConversationTag.objects.order_by("name"))
        return super().get_queryset(request).annotate(message_count=Count("messages")).prefetch_related(tags)

    @admin.display(description="tags")
    def tag_list(self, obj: Conversation) -> str:
        return ", ".join(link.name for link in obj.tag_links.all()) or "-"

    def _bulk(self, queryset: QuerySet[Conversation], action: str) -> None:
        by_owner: dict[int, list] = {}
        for pk, owner_id in queryset.values_list("pk", "owner_id"):
            by_owner.setdefault(owner_id, []).append(pk)
        for owner_id, ids in by_owner.items():
            services.conversation_bulk_apply(owner=User.objects.get(pk=owner_id), ids=ids, action=action)

    @admin.action(description="Archive the selected conversations")
    def archive(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        self._bulk(queryset, "archive")

    @admin.action(description="Unarchive the selected conversations")
    def unarchive(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        self._bulk(queryset, "unarchive")

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


@admin.register(Folder)
class FolderAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "created_at")
    list_select_related = ("owner",)
    search_fields = ("name", "owner__username", "owner__email")
    fields = ("id", "owner", "name", "system_prompt", "created_at")
    readonly_fields = ("id", "created_at")
    raw_id_fields = ("owner",)
