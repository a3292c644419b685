"""URL routes. API paths take an optional trailing slash (same route, no redirect)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.urls import URLPattern, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from accounts.views import APIKeyViewSet, OperatorUserAddView, OperatorUserDeleteView, OperatorUserListView
from chatapi.errors import not_found_view
from chatapi.health import healthz, readyz
from conversations.compat import AskView, CompleteView
from conversations.conversations_api import (
    ConversationDetailView,
    ConversationItemDetailView,
    ConversationItemsView,
    ConversationsView,
)
from conversations.openai_api import ChatCompletionsView, ModelDetailView, ModelListView
from conversations.responses_api import (
    ResponseCancelView,
    ResponseDetailView,
    ResponseInputItemsView,
    ResponsesView,
)
from conversations.views import AttachmentView, ConversationViewSet, FolderViewSet, ReplyViewSet, TransferViewSet

handler400 = "chatapi.errors.bad_request_view"
handler404 = "chatapi.errors.not_found_view"
handler500 = "chatapi.errors.server_error_view"

ID = r"(?P<{}>[^/]+)"


def api_route(pattern: str, view: Any, name: str) -> URLPattern:
    """`pattern` with or without a trailing slash, as one route."""
    return re_path(rf"^{pattern}/?$", view, name=name)


conversations = ConversationViewSet.as_view
replies = ReplyViewSet.as_view
keys = APIKeyViewSet.as_view
folders = FolderViewSet.as_view
transfers = TransferViewSet.as_view
CONV = ID.format("conversation_id")
MSG = ID.format("message_id")
RESP = ID.format("response_id")

urlpatterns = [
    api_route("conversations", conversations({"get": "list", "post": "create"}), "conversation-list"),
    api_route("conversations/new", replies({"post": "new"}), "conversation-new"),
    api_route("conversations/all", conversations({"delete": "destroy_all"}), "conversation-all"),
    api_route("conversations/search", conversations({"get": "search"}), "conversation-search"),
    api_route("conversations/bulk", conversations({"post": "bulk"}), "conversation-bulk"),
    api_route("conversations/export", transfers({"get": "export_all"}), "conversation-export"),
    api_route("conversations/import", transfers({"post": "import_conversations"}), "conversation-import"),
    api_route(
        rf"conversations/{CONV}",
        conversations({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        "conversation-detail",
    ),
    api_route(rf"conversations/{CONV}/ask", replies({"post": "ask"}), "conversation-ask"),
    api_route(rf"conversations/{CONV}/export", transfers({"get": "export_one"}), "conversation-export-one"),
    api_route(rf"conversations/{CONV}/messages", conversations({"get": "messages"}), "conversation-messages"),
    api_route(
        rf"conversations/{CONV}/messages/{MSG}/regenerate",
        replies({"post": "regenerate"}),
        "message-regenerate",
    ),
    api_route(rf"conversations/{CONV}/messages/{MSG}/stream", replies({"get": "stream"}), "message-stream"),
    api_route(rf"conversations/{CONV}/messages/{MSG}/cancel", replies({"post": "cancel"}), "message-cancel"),
    api_route(rf"conversations/{CONV}/messages/{MSG}", conversations({"delete": "destroy_message"}), "message-detail"),
    api_route(rf"conversations/{CONV}/fork", conversations({"post": "fork"}), "conversation-fork"),
    api_route(rf"attachments/{ID.format('attachment_id')}", AttachmentView.as_view(), "attachment-detail"),
    api_route("folders", folders({"get": "list", "post": "create"}), "folder-list"),
    api_route(
        rf"folders/{ID.format('folder_id')}",
        folders({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        "folder-detail",
    ),
    api_route("api/keys", keys({"get": "list", "post": "create"}), "api-key-list"),
    api_route(rf"api/keys/{ID.format('key_id')}", keys({"delete": "destroy"}), "api-key-detail"),
    api_route("api/complete", CompleteView.as_view(), "compat-complete"),
    api_route("api/ask", AskView.as_view(), "compat-ask"),
    api_route("v1/chat/completions", ChatCompletionsView.as_view(), "openai-chat-completions"),
    api_route("v1/models", ModelListView.as_view(), "openai-models"),
    api_route("v1/responses", ResponsesView.as_view(), "openai-responses"),
    api_route(rf"v1/responses/{RESP}", ResponseDetailView.as_view(), "openai-response"),
    api_route(rf"v1/responses/{RESP}/cancel", ResponseCancelView.as_view(), "openai-response-cancel"),
    api_route(rf"v1/responses/{RESP}/input_items", ResponseInputItemsView.as_view(), "openai-response-input-items"),
    api_route("v1/conversations", ConversationsView.as_view(), "openai-conversations"),
    api_route(rf"v1/conversations/{CONV}", ConversationDetailView.as_view(), "openai-conversation"),
    api_route(rf"v1/conversations/{CONV}/items", ConversationItemsView.as_view(), "openai-conversation-items"),
    api_route(
        rf"v1/conversations/{CONV}/items/{ID.format('item_id')}",
        ConversationItemDetailView.as_view(),
        "openai-conversation-item",
    ),
    api_route(r"v1/models/(?P<model>.+?)", ModelDetailView.as_view(), "openai-model"),  # ids may hold "/"
    api_route("healthz", healthz, "healthz"),
    api_route("readyz", readyz, "readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    # ReDoc without its web fonts (the page's own template loads them from Google).
    path("redoc/", SpectacularRedocView.as_view(url_name="schema", template_name="redoc.html"), name="redoc"),
    # The older proxy's operator endpoints, before the Django admin, whose catch-all would take them.
    api_route("admin/users/add", OperatorUserAddView.as_view(), "operator-user-add"),
    api_route("admin/users/delete", OperatorUserDeleteView.as_view(), "operator-user-delete"),
    api_route("admin/users", OperatorUserListView.as_view(), "operator-user-list"),
    path("admin/", admin.site.urls),
    # The pages above live at their slashed address; without the slash, a redirect (GET only).
    *(path(page, RedirectView.as_view(url=f"/{page}/")) for page in ("api/schema", "docs", "redoc", "admin")),
    re_path(r"", not_found_view),  # last: whatever no route above takes, in debug mode too
]


def schema_without_slash_duplicates(endpoints: list[tuple]) -> list[tuple]:
    """drf-spectacular hook: document API routes without the optional trailing slash."""
    cleaned = []
    for path_, path_regex, method, callback in endpoints:
        if path_.endswith("/") and path_ != "/":
            path_ = path_.rstrip("/")
        cleaned.append((path_, path_regex, method, callback))
    return cleaned
