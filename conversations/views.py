"""The conversation API (`/conversations…`): thin views that validate, call one service, serialize."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import IO, Any
from urllib.parse import urlencode

from adrf.viewsets import ViewSet as AsyncViewSet
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import AuthenticatedRequest
from accounts.limits import LimitHeadersMixin, limit_admit
from accounts.models import APIKey
from chatapi.db import ConnectionReleasing, db_work
from chatapi.errors import Conflict, InvalidRequest
from chatapi.idempotency import idempotent, mark_reply, replayed_reply
from chatapi.negotiation import StreamFriendlyNegotiation
from chatapi.parsers import FileBodyParser
from chatapi.schema import CONFLICT, ERROR_RESPONSES, ErrorOutput, event_stream
from conversations import fulltext, generations, selectors, services, streaming, transfer
from conversations.models import Attachment, Conversation, Folder, Message
from conversations.serializers import (
    AskInput,
    AskOutput,
    BulkInput,
    BulkOutput,
    ConversationCreateInput,
    ConversationListQuery,
    ConversationNewInput,
    ConversationOutput,
    ConversationUpdateInput,
    ExportOneQuery,
    ExportQuery,
    FolderInput,
    FolderOutput,
    FolderUpdateInput,
    ForkInput,
    ImportFileInput,
    ImportOutput,
    MessageListQuery,
    MessageOutput,
    RegenerateInput,
    ReplyOutput,
    SearchQuery,
    SearchResultOutput,
)

CONVERSATION_ID = OpenApiParameter("conversation_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
FOLDER_ID = OpenApiParameter("folder_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
TOTAL_COUNT = OpenApiParameter(
    "X-Total-Count",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    required=True,
    response=[200],
    description="How many match, on every page.",
)
TOTAL_COUNT_CAPPED = OpenApiParameter(
    "X-Total-Count-Capped",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    response=[200],
    enum=["true"],
    description=(
        f"Present when more matched than one search gives ({fulltext.MAX_RESULTS:,}): `X-Total-Count` is then "
        "the results that can be paged through, the best of the newest matches."
    ),
)
LINK = OpenApiParameter(
    "Link",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    response=[200],
    description='RFC 8288 links to the `rel="next"` and `rel="prev"` pages, when there are any.',
)
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


async def _reply(
    view: APIView, data: dict[str, Any], prepare: Callable[..., services.ReplyJob], **kwargs: Any
) -> HttpResponseBase:
    """Store the prompt and the reply in progress, start generating it, then answer with the reply as JSON
    (201) once it is done, or at once with its events (server-sent events)."""
    request = view.request
    stream = _wants_stream(request, data)
    slot = await limit_admit(request)  # a refused request (429) stores nothing and calls nothing
    generation, reply = await generations.generation_begin(
        lambda: prepare(**kwargs, **data),
        api_key_id=api_key_id(request),
        slot=slot,
        offer_tools=settings.CHATAPI_TOOLS_ON_CONVERSATIONS,
    )
    if not stream:
        reply = await generations.generation_outcome(generation)
        answer = {"response": ReplyOutput(reply).data, "context_window": generation.job.context_info}
        return Response(answer, status=status.HTTP_201_CREATED)
    mark_reply(request, reply.pk)  # a repeat with its Idempotency-Key gets this reply's events
    return streaming.stream_response(
        streaming.reply_sse(reply, generation=generation), content_type="text/event-stream"
    )


async def _replay(request: Request, reply_id: uuid.UUID) -> HttpResponseBase:
    """A repeat of a streamed ask (same Idempotency-Key): its reply's events from the start."""
    reply = await db_work(replayed_reply)(reply_id)
    return streaming.stream_response(streaming.reply_sse(reply, after=0), content_type="text/event-stream")


def _after(request: Request, reply: Message) -> int:
    """Where a resumed stream starts: after the event `Last-Event-ID` (or `?after=`) names; 0 from the start."""
    raw = request.headers.get("Last-Event-ID") or request.query_params.get("after") or "0"
    param = "Last-Event-ID" if request.headers.get("Last-Event-ID") else "after"
    try:
        after = int(raw.strip())
    except ValueError:
        after = -1
    running = generations.running(reply.pk)
    # The last event so far: known where the reply is generated here, or once it ended (else not checked).
    last = running.last_seq if running is not None else reply.last_event_id
    if reply.status == Message.Status.IN_PROGRESS and running is None:
        last = None
    if not 0 <= after < 2**53 or (last is not None and after > last):
        raise InvalidRequest(f"{param} {raw!r} is not an event id of this reply.", code="invalid_event_id", param=param)
    return after


def _paged(request: Request, response: Response, total: int, limit: int, offset: int) -> Response:
    """`response` with the `X-Total-Count` and RFC 8288 `Link` headers of its page."""
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


def _conversation_detail(conversation: Conversation) -> dict[str, Any]:
    messages = selectors.message_attachments_prefetch(messages=selectors.message_list_all(conversation=conversation))
    children = selectors.message_children_map(messages=messages, complete=True)
    return ConversationOutput(conversation, context={"messages": messages, "children": children}).data


def _conversation(request: AuthenticatedRequest, conversation_id: str) -> Conversation:
    return selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)


def _message_of(request: AuthenticatedRequest, conversation_id: str, message_id: str) -> Message:
    """The caller's message (another user's, or unknown, is a 404)."""
    conversation = _conversation(request, conversation_id)
    return selectors.message_get_in_conversation(conversation=conversation, message_id=message_id)


def _reply_of(request: AuthenticatedRequest, conversation_id: str, message_id: str) -> Message:
    """The caller's assistant message (another user's, or unknown, is a 404)."""
    message = _message_of(request, conversation_id, message_id)
    if message.role != Message.Role.ASSISTANT:
        raise InvalidRequest("Only a reply (an assistant message) has a generation.", code="not_a_reply")
    return message


def _message_with_children(message: Message) -> dict[str, Any]:
    message.refresh_from_db()
    children = selectors.message_children_map(messages=[message])
    return MessageOutput(message, context={"children": children}).data


class ConversationViewSet(viewsets.ViewSet):
    """Conversations of the authenticated user; anybody else's are a 404."""

    content_negotiation_class = StreamFriendlyNegotiation

    def _conversation(self, request: AuthenticatedRequest, conversation_id: str) -> Conversation:
        return _conversation(request, conversation_id)

    @extend_schema(
        operation_id="conversations_list",
        parameters=[ConversationListQuery, TOTAL_COUNT, LINK],
        responses={200: ConversationOutput(many=True), **ERROR_RESPONSES},
        description=(
            "The caller's conversations, pinned ones first, then newest first; archived ones are left out unless "
            "`archived=true|all`. `X-Total-Count` and `Link` headers paginate."
        ),
    )
    def list(self, request: AuthenticatedRequest) -> Response:
        query = _validated(ConversationListQuery, request.query_params)
        limit, offset = query.pop("limit"), query.pop("offset")
        conversations = selectors.conversation_list_for_user(user=request.user, **query)
        total = conversations.count()
        page = selectors.conversation_page_with_counts(conversations, offset, limit)
        return _paged(request, Response(ConversationOutput(page, many=True).data), total, limit, offset)

    @extend_schema(
        operation_id="conversations_search",
        parameters=[SearchQuery, TOTAL_COUNT, TOTAL_COUNT_CAPPED, LINK],
        responses={200: SearchResultOutput(many=True), **ERROR_RESPONSES},
        description=(
            "Full-text search of the caller's messages and titles, best match first. The query reads like a web "
            'search: words (matched by stem), `"a phrase"`, `-excluded`, `or`. A title match has `message_id: '
            "null`. Filters as in the list (archived conversations are left out unless `archived=true|all`). At "
            f"most {fulltext.MAX_RESULTS:,} results: when more match, the newest {fulltext.MAX_RESULTS:,} matching "
            "messages (and titles) are ranked, and `X-Total-Count-Capped: true` says so."
        ),
    )
    def search(self, request: AuthenticatedRequest) -> Response:
        query = _validated(SearchQuery, request.query_params)
        result = selectors.search_for_user(user=request.user, **query)
        response = _paged(
            request,
            Response(SearchResultOutput(result.hits, many=True).data),
            result.total,
            query["limit"],
            query["offset"],
        )
        if result.capped:
            response["X-Total-Count-Capped"] = "true"
        return response

    @extend_schema(
        operation_id="conversations_bulk",
        request=BulkInput,
        responses={200: BulkOutput, **ERROR_RESPONSES},
        description=(
            "One action on many of the caller's conversations, all or nothing: an id that is not the caller's "
            "conversation is a `400` naming it in `details.ids`, and nothing changes."
        ),
    )
    def bulk(self, request: AuthenticatedRequest) -> Response:
        data = _validated(BulkInput, request.data)
        affected = services.conversation_bulk_apply(owner=request.user, **data)
        return Response({"affected": affected})

    @extend_schema(
        operation_id="conversations_create",
        request=ConversationCreateInput,
        responses={201: ConversationOutput, **ERROR_RESPONSES},
        description="An empty conversation (no prompt); ask in it with `/conversations/{id}/ask`.",
    )
    def create(self, request: AuthenticatedRequest) -> Response:
        data = _validated(ConversationCreateInput, request.data)
        conversation = services.conversation_create(owner=request.user, **data)
        return Response(_conversation_detail(conversation), status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="conversations_retrieve",
        parameters=[CONVERSATION_ID],
        responses={200: ConversationOutput, **ERROR_RESPONSES},
    )
    def retrieve(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
        return Response(_conversation_detail(self._conversation(request, conversation_id)))

    @extend_schema(
        operation_id="conversations_update",
        parameters=[CONVERSATION_ID],
        request=ConversationUpdateInput,
        responses={200: ConversationOutput, **ERROR_RESPONSES},
        description="Rename, change the system prompt or model, or switch branch with `current_node`.",
    )
    def partial_update(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
        conversation = self._conversation(request, conversation_id)
        data = _validated(ConversationUpdateInput, request.data)
        services.conversation_update(conversation=conversation, **data)
        return Response(_conversation_detail(conversation))

    @extend_schema(
        operation_id="conversations_destroy",
        parameters=[CONVERSATION_ID],
        responses={204: None, **ERROR_RESPONSES},
    )
    def destroy(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
        services.conversation_delete(conversation=self._conversation(request, conversation_id))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="conversations_destroy_all",
        responses={204: None, **ERROR_RESPONSES},
        description="Delete all of the caller's conversations (and only theirs).",
    )
    def destroy_all(self, request: AuthenticatedRequest) -> Response:
        services.conversation_delete_all(owner=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="conversations_messages",
        parameters=[CONVERSATION_ID, MessageListQuery],
        responses={200: MessageOutput(many=True), **ERROR_RESPONSES},
        description="The branch root→current_node (or root→`leaf`), or with `all=true` every message oldest first.",
    )
    def messages(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
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
        selectors.message_attachments_prefetch(messages=messages)
        return Response(MessageOutput(messages, many=True, context={"children": children}).data)

    @extend_schema(
        operation_id="conversations_message_destroy",
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        responses={204: None, **ERROR_RESPONSES},
        description="Delete a message and its whole subtree.",
    )
    def destroy_message(self, request: AuthenticatedRequest, conversation_id: str, message_id: str) -> Response:
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
    @idempotent()
    def fork(self, request: AuthenticatedRequest, conversation_id: str) -> Response:
        conversation = self._conversation(request, conversation_id)
        data = _validated(ForkInput, request.data)
        fork = services.conversation_fork(conversation=conversation, **data)
        return Response(_conversation_detail(fork), status=status.HTTP_201_CREATED)


class FolderViewSet(viewsets.ViewSet):
    """The caller's folders; anybody else's are a 404."""

    def _folder(self, request: AuthenticatedRequest, folder_id: str) -> Folder:
        return selectors.folder_get_for_user(user=request.user, folder_id=folder_id)

    @extend_schema(operation_id="folders_list", responses={200: FolderOutput(many=True), **ERROR_RESPONSES})
    def list(self, request: AuthenticatedRequest) -> Response:
        return Response(FolderOutput(selectors.folder_list_for_user(user=request.user), many=True).data)

    @extend_schema(
        operation_id="folders_create",
        request=FolderInput,
        responses={201: FolderOutput, **ERROR_RESPONSES},
        description="A folder; conversations made in it start with its `system_prompt` (unless given their own).",
    )
    def create(self, request: AuthenticatedRequest) -> Response:
        data = _validated(FolderInput, request.data)
        folder = services.folder_create(owner=request.user, **data)
        return Response(FolderOutput(folder).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="folders_retrieve", parameters=[FOLDER_ID], responses={200: FolderOutput, **ERROR_RESPONSES}
    )
    def retrieve(self, request: AuthenticatedRequest, folder_id: str) -> Response:
        return Response(FolderOutput(self._folder(request, folder_id)).data)

    @extend_schema(
        operation_id="folders_update",
        parameters=[FOLDER_ID],
        request=FolderUpdateInput,
        responses={200: FolderOutput, **ERROR_RESPONSES},
    )
    def partial_update(self, request: AuthenticatedRequest, folder_id: str) -> Response:
        folder = self._folder(request, folder_id)
        data = _validated(FolderUpdateInput, request.data)
        return Response(FolderOutput(services.folder_update(folder=folder, **data)).data)

    @extend_schema(
        operation_id="folders_destroy",
        parameters=[FOLDER_ID],
        responses={204: None, **ERROR_RESPONSES},
        description="Delete the folder; its conversations stay, outside any folder.",
    )
    def destroy(self, request: AuthenticatedRequest, folder_id: str) -> Response:
        services.folder_delete(folder=self._folder(request, folder_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReplyViewSet(LimitHeadersMixin, ConnectionReleasing, AsyncViewSet):
    """The conversation API's endpoints that wait for the model: async views, so a wait holds no thread.
    The prompt is validated and stored in a thread (Django's ORM is synchronous), then the reply is awaited."""

    content_negotiation_class = StreamFriendlyNegotiation
    # adrf's ViewSet works this out on every request by walking the class with inspect.getmembers: about
    # 0.35 ms of CPU per request here. Every action of this viewset is a coroutine.
    view_is_async = True

    @extend_schema(
        operation_id="conversations_new",
        request=ConversationNewInput,
        responses={**REPLY_RESPONSES, **ERROR_RESPONSES},
        description=(
            "Start a conversation with its first prompt. `response.parent_id` is the id to continue from; "
            "`response.request_id` is the stored user message."
        ),
    )
    @idempotent(replay_stream=_replay)
    async def new(self, request: AuthenticatedRequest) -> HttpResponseBase:
        data = _validated(ConversationNewInput, request.data)
        return await _reply(self, data, services.conversation_start_prepare, owner=request.user)

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
    @idempotent(replay_stream=_replay)
    async def ask(self, request: AuthenticatedRequest, conversation_id: str) -> HttpResponseBase:
        data = _validated(AskInput, request.data)

        def prepare(**fields: Any) -> services.ReplyJob:
            # Read locked, in generation_begin's transaction: the service need not lock it again.
            conversation = selectors.conversation_get_for_user(
                user=request.user, conversation_id=conversation_id, lock=True
            )
            return services.conversation_ask_prepare(conversation=conversation, locked=True, **fields)

        return await _reply(self, data, prepare)

    @extend_schema(
        operation_id="conversations_regenerate",
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        request=RegenerateInput,
        responses={**REPLY_RESPONSES, **ERROR_RESPONSES},
        description="A new reply: a sibling of an assistant message, or a new child of a user message.",
    )
    @idempotent(replay_stream=_replay)
    async def regenerate(
        self, request: AuthenticatedRequest, conversation_id: str, message_id: str
    ) -> HttpResponseBase:
        data = _validated(RegenerateInput, request.data)

        def prepare(**fields: Any) -> services.ReplyJob:
            conversation = _conversation(request, conversation_id)
            message = selectors.message_get_in_conversation(conversation=conversation, message_id=message_id)
            return services.message_regenerate_prepare(conversation=conversation, message=message, **fields)

        return await _reply(self, data, prepare)

    @extend_schema(
        operation_id="conversations_message_stream",
        parameters=[
            CONVERSATION_ID,
            MESSAGE_ID,
            OpenApiParameter("after", OpenApiTypes.INT, description="Send the events after this id."),
            OpenApiParameter(
                "Last-Event-ID", OpenApiTypes.INT, OpenApiParameter.HEADER, description="As `after` (it wins)."
            ),
        ],
        responses={
            (200, "text/event-stream"): event_stream(
                ["created", "delta", "completed", "error"],
                numbered=True,
                description="The reply's events, as the stream of the ask that started it sends them.",
            ),
            **ERROR_RESPONSES,
        },
        description=(
            "A reply's events (`created`, `delta`…, then `completed` or `error`) as server-sent events: after "
            "`Last-Event-ID` (or `after`), then live to its end, from any worker. On a finished reply, what is "
            "left, ending with `completed` or `error`."
        ),
    )
    async def stream(self, request: AuthenticatedRequest, conversation_id: str, message_id: str) -> HttpResponseBase:
        reply = await db_work(_reply_of)(request, conversation_id, message_id)
        after = _after(request, reply)
        return streaming.stream_response(streaming.reply_sse(reply, after=after), content_type="text/event-stream")

    @extend_schema(
        operation_id="conversations_message_cancel",
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        request=None,
        responses={
            200: MessageOutput,
            409: OpenApiResponse(ErrorOutput, description="The reply is not in progress (`not_in_progress`)."),
            **ERROR_RESPONSES,
        },
        description=(
            "Stop a reply being generated, from any worker: its text so far is kept, `status: cancelled`. "
            "`409` (`not_in_progress`) for a reply that is not in progress."
        ),
    )
    async def cancel(self, request: AuthenticatedRequest, conversation_id: str, message_id: str) -> Response:
        reply = await db_work(_message_of)(request, conversation_id, message_id)
        if reply.status != Message.Status.IN_PROGRESS:  # a user message never is
            raise Conflict(f"The reply is not in progress (it is {reply.status}).", code="not_in_progress")
        await generations.generation_cancel(reply)
        return Response(await db_work(_message_with_children)(reply))


# The types an attachment may have, each served as it is.
MEDIA_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif", "audio/mpeg"]
ATTACHMENT_CHUNK = 64 * 1024


def media_responses(description: str) -> dict[Any, Any]:
    """An answer of a file made by a reply, in each of the types it may have (OpenAPI)."""
    return {(200, kind): OpenApiResponse(OpenApiTypes.BINARY, description=description) for kind in MEDIA_TYPES}


async def _file_chunks(name: str) -> AsyncIterator[bytes]:
    """A stored file's bytes piece by piece, read in a thread (storage backends are synchronous): a large file
    is never held whole, and the event loop never waits on a read."""
    storage = Attachment._meta.get_field("file").storage
    file = await asyncio.to_thread(storage.open, name, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, ATTACHMENT_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(file.close)


def attachment_response(attachment: Attachment) -> StreamingHttpResponse:
    extension = services.ATTACHMENT_EXTENSIONS.get(attachment.content_type, "")
    return StreamingHttpResponse(
        _file_chunks(attachment.file.name or ""),
        content_type=attachment.content_type,
        headers={
            "Content-Length": str(attachment.size),
            "Content-Disposition": f'inline; filename="{attachment.pk}{extension}"',
            "Cache-Control": "private, max-age=86400, immutable",  # an attachment never changes
        },
    )


class AttachmentView(APIView):
    """`GET /attachments/{id}`: a file a reply made, to its owner only."""

    content_negotiation_class = StreamFriendlyNegotiation  # `Accept: image/*` is no 406

    @extend_schema(
        operation_id="attachments_retrieve",
        parameters=[OpenApiParameter("attachment_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses={**media_responses("The file, streamed, in its own type."), **ERROR_RESPONSES},
        description=(
            "A file a reply made (an image, speech), as listed in its message's `attachments`: to the owner of its "
            "conversation only (`404` for anyone else)."
        ),
    )
    def get(self, request: AuthenticatedRequest, attachment_id: str) -> HttpResponseBase:
        return attachment_response(selectors.attachment_get_for_user(user=request.user, attachment_id=attachment_id))


class _NoFormatOverride:
    """DRF's negotiation settings without `?format=` as a renderer override: for the export, `format` is its own
    parameter."""

    URL_FORMAT_OVERRIDE = None


class ExportNegotiation(StreamFriendlyNegotiation):
    settings = _NoFormatOverride()  # type: ignore[assignment]


def _export_response(request: AuthenticatedRequest, fmt: str, conversation: Conversation | None) -> HttpResponseBase:
    """The export as a stream (an async iterator: one thread hop a page of conversations, not a chunk), with a
    filename to save it under."""
    if fmt == "markdown" and conversation is not None:
        response: HttpResponseBase = HttpResponse(
            transfer.markdown_for(conversation=conversation), content_type="text/markdown; charset=utf-8"
        )
    else:
        chunks = transfer.export_stream(
            user=request.user, fmt=fmt, conversation_id=conversation.pk if conversation else None
        )
        response = StreamingHttpResponse(chunks, content_type=transfer.CONTENT_TYPES[fmt])
    filename = transfer.export_filename(fmt, conversation=conversation)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _import_fingerprint(request: Request) -> str:
    """The import's file by content (read once more from its temporary file), so that a body larger than memory
    can carry an Idempotency-Key."""
    digest = hashlib.sha256(f"{request.method} {request.path.rstrip('/')}\n".encode())
    upload = _import_upload(request)
    for block in iter(lambda: upload.read(1 << 20), b""):
        digest.update(block)
    upload.seek(0)
    return digest.hexdigest()


def _import_upload(request: Request) -> IO[bytes]:
    upload = request.FILES.get("file")
    if upload is None:
        raise InvalidRequest(
            "Send the export as the request body, or as the multipart field `file`.", code="no_file", param="file"
        )
    if getattr(upload, "size", 0) > settings.CHATAPI_IMPORT_MAX_BYTES:
        raise RequestDataTooBig("The file is larger than CHATAPI_IMPORT_MAX_BYTES.")
    upload.seek(0)
    return upload


_EXPORT_BODY = {"type": "string", "format": "binary"}
_CHATGPT_EXPORT = {
    "type": "array",
    "description": "Conversations in the shape of ChatGPT's conversations.json.",
    "items": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "conversation_id": {"type": "string"},
            "title": {"type": "string"},
            "create_time": {"type": "number"},
            "update_time": {"type": "number"},
            "mapping": {"type": "object"},
            "current_node": {"type": "string", "nullable": True},
        },
        "required": ["id", "title", "create_time", "update_time", "mapping", "current_node"],
    },
}
_EXPORT_HEADERS = [
    OpenApiParameter(
        "Content-Disposition",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=[200],
        description='`attachment; filename="…"`: the name to save the export under.',
    )
]


class TransferViewSet(viewsets.ViewSet):
    """Export and import of the caller's history."""

    content_negotiation_class = ExportNegotiation
    parser_classes = [MultiPartParser, FileBodyParser]

    @extend_schema(
        operation_id="conversations_export",
        parameters=[ExportQuery, *_EXPORT_HEADERS],
        responses={
            (200, "application/json"): OpenApiResponse(_CHATGPT_EXPORT, description="`format=chatgpt`."),
            (200, "application/x-ndjson"): OpenApiResponse(_EXPORT_BODY, description="`format=ndjson`."),
            **ERROR_RESPONSES,
        },
        description=(
            "All the caller's conversations, every branch and every message, streamed: `chatgpt` is a JSON array "
            "in the shape of ChatGPT's conversations.json (epoch times, `mapping`, `current_node`; a system prompt "
            "is a hidden system root, as ChatGPT's are); `ndjson` is one conversation object a line, as "
            "`GET /conversations/{id}` shows it plus its stored `model`, `folder`, `metadata`, `origin` and "
            "`source_id`: lossless. Either imports back with `POST /conversations/import`."
        ),
    )
    def export_all(self, request: AuthenticatedRequest) -> HttpResponseBase:
        query = _validated(ExportQuery, request.query_params)
        return _export_response(request, query["format"], None)

    @extend_schema(
        operation_id="conversations_export_one",
        parameters=[CONVERSATION_ID, ExportOneQuery, *_EXPORT_HEADERS],
        responses={
            (200, "application/json"): OpenApiResponse(_CHATGPT_EXPORT, description="`format=chatgpt`."),
            (200, "application/x-ndjson"): OpenApiResponse(_EXPORT_BODY, description="`format=ndjson`."),
            (200, "text/markdown"): OpenApiResponse(_EXPORT_BODY, description="`format=markdown`."),
            **ERROR_RESPONSES,
        },
        description="One conversation, as the whole export has it, or as Markdown (its current branch).",
    )
    def export_one(self, request: AuthenticatedRequest, conversation_id: str) -> HttpResponseBase:
        conversation = _conversation(request, conversation_id)
        query = _validated(ExportOneQuery, request.query_params)
        return _export_response(request, query["format"], conversation)

    @extend_schema(
        operation_id="conversations_import",
        request={
            "application/json": {"type": "string", "format": "binary"},
            "application/zip": {"type": "string", "format": "binary"},
            "application/x-ndjson": {"type": "string", "format": "binary"},
            "application/octet-stream": {"type": "string", "format": "binary"},
            "multipart/form-data": ImportFileInput,
        },
        responses={
            200: ImportOutput,
            409: OpenApiResponse(ErrorOutput, description="The first request with this Idempotency-Key is running."),
            413: OpenApiResponse(ErrorOutput, description="Larger than CHATAPI_IMPORT_MAX_BYTES (uncompressed)."),
            422: OpenApiResponse(ErrorOutput, description="An Idempotency-Key reused with another file."),
            **{code: r for code, r in ERROR_RESPONSES.items() if code != 413},
        },
        description=(
            "Import a ChatGPT export (its conversations.json, or the zip that holds it) or this service's NDJSON, "
            "as the body or the multipart field `file`. Branches, `current_node`, roles and times are kept; "
            "ChatGPT's hidden nodes (empty roots, hidden system messages, tools' calls and outputs) are left out, "
            "and a hidden system message's text becomes the system prompt. A malformed conversation goes in `errors` "
            "with nothing of it stored, and the others are still imported. Importing the "
            "same file again imports nothing (`skipped`). A body that is not JSON, or a zip without "
            "conversations.json, is a `400`."
        ),
    )
    @idempotent(fingerprint=_import_fingerprint)
    def import_conversations(self, request: AuthenticatedRequest) -> Response:
        upload = _import_upload(request)
        result = transfer.import_file(owner=request.user, upload=upload)
        return Response(result.as_dict())
