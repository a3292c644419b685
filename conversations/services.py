"""Use cases for conversations; the threading rules of the API contract are enforced here and only here."""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from accounts.models import User
from accounts.services import api_key_usage_record
from chatapi.errors import ApplicationError, BackendError, Conflict, InvalidRequest, NotFound
from conversations import llm, tools
from conversations.events import cancel_generations
from conversations.models import Attachment, Conversation, ConversationTag, Folder, Message
from conversations.selectors import (
    conversation_get_for_user,
    conversation_latest_for_origin,
    conversation_of_message_for_user,
    folder_get_for_user,
    message_context_get,
    message_get_in_conversation,
    message_path_get,
    message_path_or_400,
    message_subtree_ids,
    message_with_context_get,
)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from conversations.transfer import ImportedConversation, ImportedMessage

TITLE_LENGTH = 60


class _Unset:
    pass


UNSET = _Unset()


def title_from_prompt(prompt: str) -> str:
    """A short title from the first prompt: its first line, whitespace collapsed, cut at a word."""
    first_line = next((line for line in prompt.splitlines() if line.strip()), "")
    words = " ".join(first_line.split())
    if len(words) <= TITLE_LENGTH:
        return words
    cut = words[: TITLE_LENGTH - 1].rsplit(" ", 1)[0] or words[: TITLE_LENGTH - 1]
    return cut.rstrip(" .,;:") + "…"


def _stored_model(model: str | None) -> str:
    """The model to keep on a conversation: "" (server default) for auto/empty, else a known model."""
    if model is None or model.strip() in ("", "auto"):
        return ""
    return llm.model_resolve(model)


def _conversation_insert(**fields: Any) -> Conversation:
    return Conversation.objects.create(**fields)


def conversation_create(
    *,
    owner: User,
    title: str = "",
    model: str | None = None,
    system_prompt: str = "",
    folder_id: uuid.UUID | None = None,
) -> Conversation:
    """A new conversation; made in a folder, it starts with the folder's system prompt unless given one."""
    stored_model = _stored_model(model)  # validates before anything is written
    folder = folder_get_for_user(user=owner, folder_id=folder_id, param="folder_id") if folder_id else None
    if folder is not None and not system_prompt:
        system_prompt = folder.system_prompt
    return _conversation_insert(
        owner=owner, title=title.strip(), model=stored_model, system_prompt=system_prompt, folder=folder
    )


MAX_TAGS = 32


def _clean_tags(tags: list[str]) -> list[str]:
    """Tags stripped, without empty ones and repeats, in the order given."""
    cleaned = list(dict.fromkeys(tag.strip() for tag in tags if tag.strip()))
    if len(cleaned) > MAX_TAGS:
        raise InvalidRequest(f"A conversation has at most {MAX_TAGS} tags.", code="too_many_tags", param="tags")
    return cleaned


def _tags_set(conversation: Conversation, tags: list[str]) -> None:
    ConversationTag.objects.filter(conversation=conversation).exclude(name__in=tags).delete()
    existing = set(ConversationTag.objects.filter(conversation=conversation).values_list("name", flat=True))
    ConversationTag.objects.bulk_create(
        [ConversationTag(conversation=conversation, name=tag) for tag in tags if tag not in existing]
    )


def conversation_update(
    *,
    conversation: Conversation,
    title: str | _Unset = UNSET,
    model: str | None | _Unset = UNSET,
    system_prompt: str | _Unset = UNSET,
    current_node: str | uuid.UUID | _Unset = UNSET,
    pinned: bool | _Unset = UNSET,
    archived: bool | _Unset = UNSET,
    tags: list[str] | _Unset = UNSET,
    folder_id: uuid.UUID | None | _Unset = UNSET,
    metadata: dict[str, str] | _Unset = UNSET,
) -> Conversation:
    """Change what is given; `tags` replaces the conversation's tags, `folder_id: None` takes it out of its folder,
    `metadata` replaces its metadata (OpenAI's Conversations API: validated by the caller)."""
    fields: list[str] = []
    if not isinstance(metadata, _Unset):
        conversation.metadata = metadata
        fields.append("metadata")
    if not isinstance(pinned, _Unset):
        conversation.pinned = pinned
        fields.append("pinned")
    if not isinstance(archived, _Unset):
        conversation.archived = archived
        fields.append("archived")
    if not isinstance(folder_id, _Unset):
        conversation.folder = (
            folder_get_for_user(user=conversation.owner, folder_id=folder_id, param="folder_id") if folder_id else None
        )
        fields.append("folder")
    cleaned_tags = _clean_tags(tags) if not isinstance(tags, _Unset) else None
    if not isinstance(title, _Unset):
        conversation.title = title.strip()
        fields.append("title")
    if not isinstance(model, _Unset):
        conversation.model = _stored_model(model)
        fields.append("model")
    if not isinstance(system_prompt, _Unset):
        conversation.system_prompt = system_prompt
        fields.append("system_prompt")
    if not isinstance(current_node, _Unset):
        node = message_get_in_conversation(conversation=conversation, message_id=current_node, param="current_node")
        conversation.current_node = node
        fields.append("current_node")
    with transaction.atomic():
        if fields:
            conversation.save(update_fields=fields)
        if cleaned_tags is not None:
            _tags_set(conversation, cleaned_tags)
    return conversation


def _stop_generating(replies: QuerySet[Message]) -> None:
    """Once the transaction that deletes `replies` (or removes them) commits, those still being generated stop,
    on whichever worker generates them: their backend requests close, and no more tokens go to replies that
    are gone. Their generations end with an `error` event, as for a reply deleted meanwhile."""
    generating = [str(pk) for pk in replies.filter(status=Message.Status.IN_PROGRESS).values_list("pk", flat=True)]
    if generating:
        # Robust: a stop that fails is logged, and the deletion, committed, still answers as one.
        transaction.on_commit(partial(cancel_generations, generating), robust=True)


def conversation_delete(*, conversation: Conversation) -> None:
    with transaction.atomic():
        _stop_generating(Message.objects.filter(conversation=conversation))
        conversation.delete()


def conversation_delete_all(*, owner: User) -> int:
    """Delete every conversation of `owner` (and only theirs); returns how many."""
    with transaction.atomic():
        count = Conversation.objects.filter(owner=owner).count()
        _stop_generating(Message.objects.filter(conversation__owner=owner))
        Conversation.objects.filter(owner=owner).delete()
    return count


def _context(conversation: Conversation, path: list[Message]) -> llm.ChatMessages:
    """What the model sees: the system prompt, then the branch root→new message, oldest first."""
    messages: llm.ChatMessages = []
    if conversation.system_prompt:
        messages.append({"role": "system", "content": conversation.system_prompt})
    messages.extend({"role": message.role, "content": message.content} for message in path)
    return messages


async def _generate(
    *, model: str, context: llm.ChatMessages, autocontinue: bool, params: dict[str, Any]
) -> llm.Completion:
    completion = await llm.complete(model=model, messages=context, params=params)
    if not autocontinue:
        return completion
    parts = [completion.content]
    usage = completion.usage
    rounds = 1
    while completion.finish_reason == "length" and rounds < settings.CHATAPI_AUTOCONTINUE_MAX_ROUNDS:
        so_far = "".join(parts)
        try:
            # The partial reply goes back as the last assistant turn; the model carries on from it.
            continued = [*context, {"role": "assistant", "content": so_far}]
            completion = await llm.complete(model=model, messages=continued, params=params)
        except BackendError:
            break  # keep what was generated; it is stored as cut off by length
        rounds += 1
        parts.append(completion.content)
        if usage is not None and completion.usage is not None:
            usage = llm.Usage(
                usage.prompt_tokens + completion.usage.prompt_tokens,
                usage.completion_tokens + completion.usage.completion_tokens,
                usage.total_tokens + completion.usage.total_tokens,
            )
    return replace(completion, content="".join(parts), usage=usage)


@dataclass
class ReplyJob:
    """Everything needed to generate and store one assistant reply; made before the backend is called."""

    conversation: Conversation
    request: Message  # the user message being answered, already stored
    model: str
    context: llm.ChatMessages
    autocontinue: bool
    request_is_new: bool  # False for regenerate
    reply_id: uuid.UUID = field(default_factory=uuid.uuid4)
    params: dict[str, Any] = field(default_factory=dict)  # sampling parameters, sent to the backend as they are
    api_key_id: uuid.UUID | None = None  # the key the usage is counted against
    left_out: int = 0  # earlier messages of the branch that did not fit in the model's context
    tools_offered: bool = False  # the model is offered generate_image / text_to_speech (conversations.tools)
    reply: Message | None = None  # the reply as reply_begin stored it (in progress)

    @property
    def context_info(self) -> dict[str, int]:
        """What the answer says of the context: the branch's messages sent, and the earlier ones left out."""
        sent = len(self.context) - (1 if self.conversation.system_prompt else 0)
        return {"messages": sent, "left_out": self.left_out}

    def backend_failed(self, exc: BackendError) -> BackendError:
        """`exc` with the ids a client needs to retry (the stored prompt can be regenerated)."""
        exc.details = {**exc.details, "message_id": str(self.request.pk), "conversation_id": str(self.conversation.pk)}
        return exc


def reply_tools_offer(*, job: ReplyJob) -> None:
    """Offer the model the tools the operator configured (CHATAPI_IMAGE_MODEL, CHATAPI_TTS_MODEL); with none,
    nothing changes."""
    definitions = tools.definitions()
    if definitions:
        job.params = {**job.params, "tools": definitions}
        job.tools_offered = True


def attachments_save(*, job: ReplyJob, made: list[tools.Made]) -> list[Attachment]:
    """Write what the reply's tools made to storage (Django's storage API), as attachments of the reply not
    yet stored: reply_finish stores them with it, or deletes their files. Each file is named from its
    attachment's own id. If one cannot be written, those already written are deleted."""
    attachments: list[Attachment] = []
    now = timezone.now()
    try:
        for n, item in enumerate(made):
            attachment = Attachment(
                created_at=now + timedelta(microseconds=n),  # keeps them in the order they were made
                message_id=job.reply_id,
                conversation=job.conversation,
                kind=item.kind,
                content_type=item.content_type,
                size=len(item.data),
                source_text=item.source_text,
            )
            extension = ATTACHMENT_EXTENSIONS.get(item.content_type, "")
            attachment.file.save(f"{attachment.pk}{extension}", ContentFile(item.data), save=False)
            attachments.append(attachment)
    except BaseException:
        attachment_files_delete(names=[attachment.file.name or "" for attachment in attachments])
        raise
    return attachments


ATTACHMENT_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "audio/mpeg": ".mp3",
}


def attachment_files_delete(*, names: Iterable[str]) -> None:
    """Delete attachment files from storage; one that cannot be deleted is logged, not raised (its row is
    already gone)."""
    storage = Attachment._meta.get_field("file").storage
    for name in filter(None, names):
        try:
            storage.delete(name)
        except Exception:
            logger.exception("The attachment file %s could not be deleted", name)


def _lock(conversation: Conversation) -> None:
    """Lock the conversation's row until the transaction ends, so that writes to one conversation take
    turns (PostgreSQL; SQLite's IMMEDIATE transactions already do), and refresh its current node.
    A conversation deleted meanwhile is a 404."""
    found = Conversation.objects.select_for_update().values_list("current_node_id", flat=True)
    try:
        conversation.current_node_id = found.get(pk=conversation.pk)
    except Conversation.DoesNotExist:
        raise NotFound("Conversation not found: it was deleted.", code="conversation_not_found") from None


def lease_deadline() -> datetime:
    """When a reply being generated is taken for abandoned unless its worker renews the lease: 2/3 of
    CHATAPI_GENERATION_LEASE_SECONDS from now (renewals, and the search for expired leases, come every third,
    so a dead worker's replies are ended within the lease)."""
    return timezone.now() + timedelta(seconds=settings.CHATAPI_GENERATION_LEASE_SECONDS * 2 / 3)


def reply_begin(*, job: ReplyJob) -> Message:
    """The reply, stored `in_progress` with no text before the backend is called; `current_node` moves to
    it, so that a reload shows it being written."""
    now = timezone.now()
    conversation = job.conversation
    # A new prompt's prepare locked the conversation (or made it); called in that prepare's transaction (as
    # generations.generation_begin does), the lock is held already.
    locked = job.request_is_new and transaction.get_connection().in_atomic_block
    with transaction.atomic(savepoint=False):
        if not locked:
            _lock(conversation)
        reply = Message(
            id=job.reply_id,
            conversation=conversation,
            parent=job.request,
            depth=job.request.depth + 1,
            role=Message.Role.ASSISTANT,
            model=job.model,
            status=Message.Status.IN_PROGRESS,
            lease_expires_at=lease_deadline(),
            created_at=now,
        )
        reply.save(force_insert=True)
        conversation.current_node = reply
        conversation.updated_at = now
        conversation.save(update_fields=["current_node", "updated_at"])
    job.reply = reply
    return reply


# How a generation ended, as the reply's status and finish_details.
ENDINGS = {
    "stop": (Message.Status.COMPLETED, Message.Finish.STOP),
    "length": (Message.Status.COMPLETED, Message.Finish.LENGTH),
    "interrupted": (Message.Status.INTERRUPTED, Message.Finish.INTERRUPTED),
    "cancelled": (Message.Status.CANCELLED, Message.Finish.CANCELLED),
    "failed": (Message.Status.FAILED, Message.Finish.ERROR),
}


def reply_finish(
    *,
    job: ReplyJob,
    content: str,
    model: str,
    ending: str,
    usage: llm.Usage | None,
    last_event_id: int | None,
    attachments: list[Attachment] | None = None,
) -> Message:
    """Store how the reply ended (`ending`: a key of ENDINGS) with its text and `attachments` (from
    attachments_save), and count its usage. A reply that failed before any text gives `current_node` back
    to the prompt. Usage the backend did not report is estimated. A reply that is no longer in progress (its
    worker was taken for dead meanwhile) or that was deleted is left as it is, and the attachments' files
    are deleted: Conflict (NotFound when the whole conversation was deleted)."""
    attachments = attachments or []
    try:
        return _reply_store(
            job=job,
            content=content,
            model=model,
            ending=ending,
            usage=usage,
            last_event_id=last_event_id,
            attachments=attachments,
        )
    except BaseException:
        attachment_files_delete(names=[attachment.file.name or "" for attachment in attachments])
        raise


def _reply_store(
    *,
    job: ReplyJob,
    content: str,
    model: str,
    ending: str,
    usage: llm.Usage | None,
    last_event_id: int | None,
    attachments: list[Attachment],
) -> Message:
    status, finish = ENDINGS[ending]
    if usage is None and status != Message.Status.FAILED:
        usage = llm.estimate_usage(job.context, content)
    now = timezone.now()
    conversation = job.conversation
    with transaction.atomic():
        # Its last change: the UPDATE locks the conversation's row, as _lock would, and finds it deleted.
        deleted: ApplicationError | None = None
        if not Conversation.objects.filter(pk=conversation.pk).update(updated_at=now):
            deleted = NotFound("Conversation not found: it was deleted.", code="conversation_not_found")
        values = {
            "content": content,
            "model": model,
            "status": status,
            "finish_details": finish,
            "lease_expires_at": None,
            "last_event_id": last_event_id,
            "token_count": usage.completion_tokens if usage else llm.estimate_tokens(content),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "total_tokens": usage.total_tokens if usage else None,
        }
        stored = not deleted and Message.objects.filter(pk=job.reply_id, status=Message.Status.IN_PROGRESS).update(
            **values
        )
        if usage is not None and job.api_key_id is not None:
            # Counted whatever became of the reply meanwhile: the backend did the work.
            api_key_usage_record(
                api_key_id=job.api_key_id, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )
        if stored:
            Attachment.objects.bulk_create(attachments)
            conversation.updated_at = now
            if status == Message.Status.FAILED:
                # If the reply is still the current node: back to its parent as it is now (the prompt may have
                # been taken out meanwhile by message_remove, its place given to the message above it).
                parent_id = Message.objects.filter(pk=job.reply_id).values_list("parent_id", flat=True).first()
                at_reply = Conversation.objects.filter(pk=conversation.pk, current_node_id=job.reply_id)
                if at_reply.update(current_node_id=parent_id):
                    conversation.current_node_id = parent_id
    if deleted is not None:
        raise deleted
    if not stored:
        raise Conflict(
            "The reply was deleted, or ended elsewhere, while it was generated; it was not stored.",
            code="concurrent_change",
        )
    if job.reply is None:
        return Message.objects.prefetch_related("attachments").get(pk=job.reply_id)
    # The row as the UPDATE left it, without reading it back: the reply as begun, with the values above (a
    # copy: whoever holds the reply in progress keeps it as it was), and the files made for it.
    reply = copy.copy(job.reply)
    for name, value in values.items():
        setattr(reply, name, value)
    reply.attachments_made = attachments
    return reply


def replies_keep(*, texts: dict[uuid.UUID, str]) -> list[uuid.UUID]:
    """Renew the lease of replies this worker is generating, and store their text so far (what a reload
    shows, and what is kept if the worker dies). Returns those that are no longer in progress: ended
    elsewhere (cancelled through a worker that could not tell this one, taken for dead) or deleted."""
    deadline = lease_deadline()
    in_progress = Message.objects.filter(status=Message.Status.IN_PROGRESS)
    gone: list[uuid.UUID] = []
    with transaction.atomic():
        for reply_id, text in texts.items():
            if not in_progress.filter(pk=reply_id).update(content=text, lease_expires_at=deadline):
                gone.append(reply_id)
    return gone


def reply_end_abandoned(
    *, reply_id: uuid.UUID, ending: str, content: str | None = None, last_event_id: int | None = None
) -> bool:
    """End a reply no worker is generating any more (its worker died, or never answered a cancel): with
    the given text, else the text last stored. False when it was not in progress (any more)."""
    status, finish = ENDINGS[ending]
    fields: dict[str, Any] = {
        "status": status,
        "finish_details": finish,
        "lease_expires_at": None,
        "last_event_id": last_event_id,
    }
    if content is not None:
        fields["content"] = content
        fields["token_count"] = llm.estimate_tokens(content)
    return bool(Message.objects.filter(pk=reply_id, status=Message.Status.IN_PROGRESS).update(**fields))


def replies_expired() -> list[uuid.UUID]:
    """Replies in progress whose lease ran out: their worker died."""
    expired = Message.objects.filter(status=Message.Status.IN_PROGRESS, lease_expires_at__lt=timezone.now())
    return list(expired.values_list("pk", flat=True))


def _validate_prompt(prompt: str, *, param: str = "prompt") -> str:
    if not prompt.strip():
        raise InvalidRequest(f"{param} must not be empty.", code="empty_prompt", param=param)
    return prompt


def context_budget(*, model: str, system_prompt: str, params: dict[str, Any]) -> int:
    """Tokens of the branch that a request to `model` can carry: its context window (CHATAPI_MODEL_CONTEXT)
    less the system prompt and what is kept for the reply (its max_tokens, else a quarter of the window, at
    most 4,096)."""
    sizes = settings.CHATAPI_MODEL_CONTEXT
    window = sizes.get(model, sizes["*"])
    reply = params.get("max_completion_tokens") or params.get("max_tokens") or min(window // 4, 4096)
    return window - int(reply) - llm.estimate_tokens(system_prompt)


def _check_fits(text: str, *, budget: int, param: str) -> None:
    if llm.estimate_tokens(text) > budget:
        raise InvalidRequest(
            f"{param} is too long for the model's context window ({budget} tokens left for the conversation).",
            code="context_length_exceeded",
            param=param,
        )


def _job(
    *,
    conversation: Conversation,
    request: Message,
    model: str,
    autocontinue: bool,
    new: bool,
    params: dict[str, Any] | None = None,
    path: list[Message] | None = None,
) -> ReplyJob:
    """The job of answering `request` (stored): its context is the newest part of its branch that fits
    (`path`, root→request, when the caller has it already)."""
    params = params or {}
    if path is None:
        budget = context_budget(model=model, system_prompt=conversation.system_prompt, params=params)
        path, left_out = message_context_get(conversation=conversation, leaf_id=request.pk, budget=budget)
    else:
        left_out = path[0].depth
    return ReplyJob(
        conversation=conversation,
        request=request,
        model=model,
        context=_context(conversation, path),
        autocontinue=autocontinue,
        request_is_new=new,
        params=params,
        left_out=left_out,
    )


def _message_at(conversation: Conversation, message_id: object, *, param: str | None = None) -> Message | None:
    """A message of the conversation by id (None for None): a bad id is a 400 naming `param`."""
    if message_id is None:
        return None
    return message_get_in_conversation(conversation=conversation, message_id=message_id, param=param)


def _check_not_in_progress(parent: Message | None, *, instead: str = "") -> None:
    if parent is not None and parent.status == Message.Status.IN_PROGRESS:
        # Asking on top of a reply still being written would send the model half an answer (a client
        # retrying a request it gave up on does exactly that).
        raise Conflict(
            f"The reply this would follow is still being generated: wait for it or cancel it{instead}.",
            code="reply_in_progress",
            details={"message_id": str(parent.pk)},
        )


def conversation_ask_prepare(
    *,
    conversation: Conversation,
    prompt: str,
    parent_id: str | uuid.UUID | None = None,
    model: str | None = None,
    autocontinue: bool = False,
    locked: bool = False,
) -> ReplyJob:
    """Validate and store the user's prompt; the reply is generated from the returned job.

    Without `parent_id` the prompt continues `current_node`; with it, the prompt becomes a child of
    that message (a sibling branch when it is an earlier one: "edit and resend"). `locked`: the caller
    read `conversation` locked (conversation_get_for_user's `lock`) in its transaction, or made it there.
    """
    _validate_prompt(prompt)
    chosen_model = llm.model_resolve(model or conversation.model)
    budget = context_budget(model=chosen_model, system_prompt=conversation.system_prompt, params={})
    _check_fits(prompt, budget=budget, param="prompt")
    token_count = llm.estimate_tokens(prompt)
    # No savepoint inside generations.generation_begin's transaction: an error there ends all of it anyway,
    # and a savepoint costs two round trips.
    with transaction.atomic(savepoint=False):
        if not locked:
            _lock(conversation)
        parent_param = "parent_id" if parent_id is not None else None
        if parent_id is None:
            parent_id = conversation.current_node_id
        parent: Message | None = None
        path: list[Message] = []
        if parent_id is not None:
            # The parent and the part of its branch that fits beside the prompt, in one query.
            parent, path = message_with_context_get(
                conversation=conversation, message_id=parent_id, budget=budget - token_count, param=parent_param
            )
        _check_not_in_progress(parent, instead=", or ask from an earlier message (parent_id)")
        now = timezone.now()
        request = Message(
            conversation=conversation,
            parent=parent,
            depth=parent.depth + 1 if parent else 0,
            token_count=token_count,
            role=Message.Role.USER,
            content=prompt,
            created_at=now,
        )
        request.save(force_insert=True)
        if not conversation.title:
            conversation.title = title_from_prompt(prompt)
            conversation.updated_at = now
            conversation.save(update_fields=["title", "updated_at"])
    return _job(
        conversation=conversation,
        request=request,
        model=chosen_model,
        autocontinue=autocontinue,
        new=True,
        path=[*path, request],
    )


def conversation_start_prepare(
    *,
    owner: User,
    prompt: str,
    title: str = "",
    model: str | None = None,
    system_prompt: str = "",
    folder_id: uuid.UUID | None = None,
    autocontinue: bool = False,
) -> ReplyJob:
    """`POST /conversations/new`: a new conversation with its first prompt stored."""
    _validate_prompt(prompt)
    conversation = conversation_create(
        owner=owner, title=title, model=model, system_prompt=system_prompt, folder_id=folder_id
    )
    # Made in the caller's transaction (generations.generation_begin's), no one else can write to it yet.
    made_here = transaction.get_connection().in_atomic_block
    return conversation_ask_prepare(
        conversation=conversation, prompt=prompt, autocontinue=autocontinue, locked=made_here
    )


def complete_prepare(*, owner: User, content: str) -> ReplyJob:
    """`/api/complete`: the prompt continues the caller's latest conversation made there (or a new one)."""
    _validate_prompt(content, param="content")
    conversation = conversation_latest_for_origin(user=owner, origin=Conversation.Origin.COMPLETE)
    if conversation is None:
        conversation = _conversation_insert(owner=owner, origin=Conversation.Origin.COMPLETE)
    return conversation_ask_prepare(conversation=conversation, prompt=content)


def compat_ask_prepare(
    *, owner: User, content: str, conversation_id: uuid.UUID | None = None, parent_id: uuid.UUID | None = None
) -> ReplyJob:
    """`/api/ask`: ask in the given conversation (from `parent_id`, or its current node), in the conversation
    of `parent_id` when only that is given (the previous answer's `response_id`), or in a new one."""
    _validate_prompt(content, param="content")
    if conversation_id is not None:
        conversation = conversation_get_for_user(user=owner, conversation_id=conversation_id)
    elif parent_id is not None:
        conversation = conversation_of_message_for_user(user=owner, message_id=parent_id, param="parent_id")
    else:
        conversation = _conversation_insert(owner=owner, origin=Conversation.Origin.ASK)
    return conversation_ask_prepare(conversation=conversation, prompt=content, parent_id=parent_id)


def _message_text(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(part.get("text", "")) for part in content)
    raise InvalidRequest(
        "In a stored conversation (X-Conversation-Id) message content must be text.",
        param=f"messages[{index}].content",
    )


def openai_turn_prepare(
    *,
    owner: User,
    conversation_id: str,
    messages: list[dict[str, Any]],
    model: str,
    params: dict[str, Any],
) -> ReplyJob:
    """Stateful `/v1/chat/completions` (`X-Conversation-Id: <id>` or `new`): `messages` is only the new turn.

    System (and developer) messages set the conversation's system prompt; the others are added to the
    tree after its current node, and the reply answers the last of them, which must be the user's.
    """
    turn = [m for m in messages if m["role"] not in ("system", "developer")]
    if not turn or turn[-1]["role"] != "user":
        raise InvalidRequest("The new turn must end with a user message.", param="messages")
    if any(m["role"] not in ("user", "assistant") for m in turn):
        raise InvalidRequest(
            "In a stored conversation messages are system, user or assistant messages.", param="messages"
        )
    texts = [(m, _message_text(m, i)) for i, m in enumerate(messages)]
    system = "\n\n".join(text for m, text in texts if m["role"] in ("system", "developer"))
    with transaction.atomic(savepoint=False):
        if conversation_id == "new":
            conversation = _conversation_insert(owner=owner, origin=Conversation.Origin.OPENAI)
        else:
            conversation = conversation_get_for_user(user=owner, conversation_id=conversation_id)
            _lock(conversation)
        parent = _message_at(conversation, conversation.current_node_id)
        fields = []
        if system and system != conversation.system_prompt:
            conversation.system_prompt = system
            fields.append("system_prompt")
        turn_in = [TurnInput(m["role"], text) for m, text in texts if m["role"] in ("user", "assistant")]
        added = _turn_append(conversation, parent, turn_in)
        if not conversation.title:
            conversation.title = title_from_prompt(next(text for m, text in texts if m["role"] == "user"))
            fields.append("title")
        if fields:
            conversation.save(update_fields=fields)
    return _job(conversation=conversation, request=added[-1], model=model, autocontinue=False, new=True, params=params)


@dataclass
class TurnInput:
    """One message of a Responses API turn: its role (system, user or assistant) and its text."""

    role: str
    text: str


def _turn_append(conversation: Conversation, parent: Message | None, turn: list[TurnInput]) -> list[Message]:
    """Store `turn` as a chain of messages after `parent` (None: from a new root), oldest first, in one query.
    Assistant messages a client sends are earlier replies it already has: complete ones."""
    now = timezone.now()
    added = []
    for item in turn:
        parent = Message(
            conversation=conversation,
            parent=parent,
            depth=parent.depth + 1 if parent else 0,
            token_count=llm.estimate_tokens(item.text),
            role=item.role,
            content=item.text,
            finish_details=Message.Finish.STOP if item.role == Message.Role.ASSISTANT else None,
            created_at=now,
        )
        added.append(parent)
        now += timedelta(microseconds=1)  # keeps them in order
    return Message.objects.bulk_create(added)


def responses_turn_prepare(
    *,
    owner: User,
    turn: list[TurnInput],
    model: str,
    params: dict[str, Any],
    previous_id: uuid.UUID | None = None,
    conversation_id: uuid.UUID | None = None,
    fit: bool = True,
) -> ReplyJob:
    """`POST /v1/responses`: store a turn (its instructions and input, oldest first) after the message
    `previous_id` (a branch), after the current node of `conversation_id`, or in a new conversation.

    The reply answers the turn's last message, which must be the user's. With `fit=False` (OpenAI's
    `truncation: "disabled"`) a branch that does not fit in the model's context is a 400
    `context_length_exceeded` and nothing is stored, instead of leaving its earlier messages out.
    """
    if not turn or turn[-1].role != Message.Role.USER:
        raise InvalidRequest("The input must end with a user message.", param="input")
    with transaction.atomic(savepoint=False):
        if previous_id is not None:
            parent = (
                Message.objects.select_related("conversation")
                .filter(pk=previous_id, conversation__owner=owner, role=Message.Role.ASSISTANT)
                .first()
            )
            if parent is None:
                raise NotFound(
                    f"Previous response with id 'resp_{previous_id.hex}' not found.",
                    code="previous_response_not_found",
                    param="previous_response_id",
                )
            conversation = parent.conversation
            _lock(conversation)
        elif conversation_id is not None:
            conversation = conversation_get_for_user(user=owner, conversation_id=conversation_id)
            _lock(conversation)
            parent = _message_at(conversation, conversation.current_node_id)
        else:
            conversation = _conversation_insert(owner=owner, origin=Conversation.Origin.OPENAI)
            parent = None
        _check_not_in_progress(parent)
        added = _turn_append(conversation, parent, turn)
        if not conversation.title:
            conversation.title = title_from_prompt(turn[-1].text)
            conversation.save(update_fields=["title"])
        job = _job(
            conversation=conversation, request=added[-1], model=model, autocontinue=False, new=True, params=params
        )
        if not fit:
            budget = context_budget(model=model, system_prompt=conversation.system_prompt, params=params)
            if job.left_out > 0 or added[-1].token_count > budget:
                # Raised inside the transaction: nothing of the turn is stored.
                raise InvalidRequest(
                    f"The conversation does not fit in the model's context window ({budget} tokens), and "
                    "truncation is disabled.",
                    code="context_length_exceeded",
                    param="input",
                )
    return job


def responses_context(
    *,
    owner: User,
    turn: list[TurnInput],
    previous_id: uuid.UUID | None = None,
    conversation_id: uuid.UUID | None = None,
) -> llm.ChatMessages:
    """`POST /v1/responses` with `store: false`: what the model sees (the branch the turn follows, then the
    turn), read and sent without storing anything."""
    path: list[Message] = []
    system_prompt = ""
    if previous_id is not None:
        previous = (
            Message.objects.filter(pk=previous_id, conversation__owner=owner, role=Message.Role.ASSISTANT)
            .select_related("conversation")
            .first()
        )
        if previous is None:
            raise NotFound(
                f"Previous response with id 'resp_{previous_id.hex}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
        system_prompt = previous.conversation.system_prompt
        path = message_path_get(conversation=previous.conversation, leaf_id=previous.pk)
    elif conversation_id is not None:
        conversation = conversation_get_for_user(user=owner, conversation_id=conversation_id)
        system_prompt = conversation.system_prompt
        path = message_path_get(conversation=conversation, leaf_id=conversation.current_node_id)
    messages: llm.ChatMessages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.extend({"role": m.role, "content": m.content} for m in path)
    messages.extend({"role": item.role, "content": item.text} for item in turn)
    return messages


def openai_conversation_create(*, owner: User, items: list[TurnInput], metadata: dict[str, str]) -> Conversation:
    """`POST /v1/conversations`: a new conversation holding `items` (none, or a branch of them) and `metadata`."""
    with transaction.atomic():
        conversation = _conversation_insert(owner=owner, origin=Conversation.Origin.OPENAI, metadata=metadata)
        if items:
            _items_append(conversation, items)
    return conversation


def conversation_items_add(*, conversation: Conversation, items: list[TurnInput]) -> list[Message]:
    """`POST /v1/conversations/{id}/items`: `items` continue the current branch (no reply is asked for), and
    `current_node` moves to the last of them. On top of a reply still being generated: 409."""
    with transaction.atomic():
        _lock(conversation)
        return _items_append(conversation, items)


def _items_append(conversation: Conversation, items: list[TurnInput]) -> list[Message]:
    parent = _message_at(conversation, conversation.current_node_id)
    _check_not_in_progress(parent)
    added = _turn_append(conversation, parent, items)
    conversation.current_node = added[-1]
    conversation.updated_at = added[-1].created_at
    fields = ["current_node", "updated_at"]
    prompt = next((item.text for item in items if item.role == Message.Role.USER), None)
    if not conversation.title and prompt is not None:
        conversation.title = title_from_prompt(prompt)
        fields.append("title")
    conversation.save(update_fields=fields)
    return added


def message_remove(*, conversation: Conversation, message: Message) -> None:
    """Take one message out of its branch and keep what follows it (OpenAI's "delete an item"): its children
    move up to its parent (a root's become roots), and `current_node` moves to its parent if it was this
    message. `message_delete` takes the whole subtree instead."""
    with transaction.atomic():
        _lock(conversation)
        found = Message.objects.filter(pk=message.pk, conversation=conversation).values_list("parent_id").first()
        if found is None:
            raise NotFound("Message not found: it was deleted.", code="message_not_found")
        parent_id = found[0]
        below = [pk for pk in message_subtree_ids(root=message) if pk != message.pk]
        Message.objects.filter(parent_id=message.pk).update(parent_id=parent_id)
        Message.objects.filter(pk__in=below).update(depth=F("depth") - 1)
        if conversation.current_node_id == message.pk:
            conversation.current_node_id = parent_id
            conversation.save(update_fields=["current_node"])
        _stop_generating(Message.objects.filter(pk=message.pk))
        Message.objects.filter(pk=message.pk).delete()


def message_regenerate_prepare(
    *, conversation: Conversation, message: Message, model: str | None = None, autocontinue: bool = False
) -> ReplyJob:
    """A new reply: a sibling of an assistant message, or a new child of a user message."""
    if message.role == Message.Role.ASSISTANT:
        if message.parent_id is None:
            raise InvalidRequest("This assistant message has no prompt to answer.", code="cannot_regenerate")
        request = Message.objects.get(pk=message.parent_id)
    elif message.role == Message.Role.USER:
        request = message
    else:
        raise InvalidRequest("Only user and assistant messages can be regenerated.", code="cannot_regenerate")
    chosen_model = llm.model_resolve(model or conversation.model)
    return _job(conversation=conversation, request=request, model=chosen_model, autocontinue=autocontinue, new=False)


def message_delete(*, conversation: Conversation, message: Message) -> int:
    """Delete `message` and its whole subtree; `current_node` falls back to the parent if it was inside."""
    with transaction.atomic():
        _lock(conversation)
        ids = message_subtree_ids(root=message)
        if conversation.current_node_id in set(ids):
            conversation.current_node_id = message.parent_id
            conversation.save(update_fields=["current_node"])
        # Their files go once this commits (conversations.signals).
        Attachment.objects.filter(message_id__in=ids).delete()
        _stop_generating(Message.objects.filter(pk__in=ids))
        Message.objects.filter(pk__in=ids).delete()
    return len(ids)


def conversation_fork(
    *, conversation: Conversation, message_id: str | uuid.UUID | None = None, title: str = ""
) -> Conversation:
    """A new conversation holding a copy of the path root→message (default: `current_node`)."""
    if message_id is not None:
        path = message_path_or_400(conversation=conversation, leaf_id=message_id, param="message_id")
    else:
        path = message_path_get(conversation=conversation, leaf_id=conversation.current_node_id)
    base_title = conversation.title or "Conversation"
    with transaction.atomic():
        fork = Conversation.objects.create(
            owner_id=conversation.owner_id,
            title=title.strip() or f"{base_title} (fork)"[:255],
            model=conversation.model,
            system_prompt=conversation.system_prompt,
        )
        new_ids: dict[uuid.UUID, uuid.UUID] = {}
        copies: list[Message] = []
        for message in path:
            new_ids[message.pk] = uuid.uuid4()
            copies.append(
                Message(
                    id=new_ids[message.pk],
                    conversation=fork,
                    parent_id=new_ids.get(message.parent_id) if message.parent_id else None,
                    depth=len(copies),
                    token_count=message.token_count,
                    status=message.status,
                    role=message.role,
                    content=message.content,
                    model=message.model,
                    finish_details=message.finish_details,
                    prompt_tokens=message.prompt_tokens,
                    completion_tokens=message.completion_tokens,
                    total_tokens=message.total_tokens,
                    created_at=message.created_at,
                )
            )
        Message.objects.bulk_create(copies)
        if copies:
            fork.current_node_id = copies[-1].pk
            fork.save(update_fields=["current_node"])
    return fork


# --- folders and bulk actions -------------------------------------------------------------------


def folder_create(*, owner: User, name: str, system_prompt: str = "") -> Folder:
    return Folder.objects.create(owner=owner, name=_folder_name(name), system_prompt=system_prompt)


def _folder_name(name: str) -> str:
    if not name.strip():
        raise InvalidRequest("name must not be empty.", code="empty_name", param="name")
    return name.strip()


def folder_update(*, folder: Folder, name: str | _Unset = UNSET, system_prompt: str | _Unset = UNSET) -> Folder:
    """Rename it or change its system prompt (which only conversations made in it later start with)."""
    fields = []
    if not isinstance(name, _Unset):
        folder.name = _folder_name(name)
        fields.append("name")
    if not isinstance(system_prompt, _Unset):
        folder.system_prompt = system_prompt
        fields.append("system_prompt")
    if fields:
        folder.save(update_fields=fields)
    return folder


def folder_delete(*, folder: Folder) -> None:
    """Delete the folder; its conversations stay, outside any folder."""
    folder.delete()


BULK_ACTIONS = ("archive", "unarchive", "pin", "unpin", "delete", "tag", "untag", "move")


def conversation_bulk_apply(
    *,
    owner: User,
    ids: list[uuid.UUID],
    action: str,
    tag: str | None = None,
    folder_id: uuid.UUID | None = None,
) -> int:
    """Apply `action` to the owner's conversations `ids`, all or nothing: when any id is not one of the
    owner's conversations nothing changes (400, the ids named in `details`). Returns how many were affected."""
    unique = list(dict.fromkeys(ids))
    if action in ("tag", "untag"):
        cleaned = (tag or "").strip()
        if not cleaned:
            raise InvalidRequest(f"tag is required for {action}.", code="tag_required", param="tag")
    with transaction.atomic():
        folder = folder_get_for_user(user=owner, folder_id=folder_id, param="folder_id") if folder_id else None
        conversations = Conversation.objects.filter(owner=owner, pk__in=unique)
        found = set(conversations.select_for_update().values_list("pk", flat=True))
        missing = [str(pk) for pk in unique if pk not in found]
        if missing:
            raise InvalidRequest(
                f"{len(missing)} of the ids are not conversations of yours; nothing was changed.",
                code="invalid_conversation_ids",
                param="ids",
                details={"ids": missing},
            )
        if action == "delete":
            _stop_generating(Message.objects.filter(conversation__in=found))
            conversations.delete()
        elif action in ("archive", "unarchive"):
            conversations.update(archived=action == "archive")
        elif action in ("pin", "unpin"):
            conversations.update(pinned=action == "pin")
        elif action == "move":
            conversations.update(folder=folder)
        elif action == "tag":
            ConversationTag.objects.bulk_create(
                [ConversationTag(conversation_id=pk, name=cleaned) for pk in unique], ignore_conflicts=True
            )
        elif action == "untag":
            ConversationTag.objects.filter(conversation_id__in=unique, name=cleaned).delete()
        else:
            raise InvalidRequest(f"Unknown action {action!r}.", code="invalid_action", param="action")
    return len(unique)


# --- import --------------------------------------------------------------------------------------


def conversation_import(*, owner: User, tree: ImportedConversation) -> Conversation | None:
    """Store a conversation read from an export, in one atomic block (a savepoint within the transaction of an
    import's batch: a conversation the database refuses leaves nothing), with the fields the service gives the
    messages it makes (depth, token_count, status; the search index by the database's triggers). None when
    the owner has it already: imported before (same source id), or it is one of theirs (our own export)."""
    with transaction.atomic():
        existing = Conversation.objects.filter(owner=owner, source_id=tree.source_id)
        if tree.own_id is not None:
            existing = existing | Conversation.objects.filter(owner=owner, pk=tree.own_id)
        if existing.exists():
            return None
        folder = None
        if tree.folder is not None:
            name, system_prompt = tree.folder
            folder = Folder.objects.filter(owner=owner, name=name).order_by("created_at", "id").first()
            if folder is None:
                folder = Folder.objects.create(owner=owner, name=name, system_prompt=system_prompt)
        model = tree.model if tree.model in settings.CHATAPI_MODELS else ""
        conversation = Conversation.objects.create(
            owner=owner,
            title=tree.title or title_from_prompt(next((m.text for m in tree.messages if m.role == "user"), "")),
            model=model,
            system_prompt=tree.system_prompt,
            pinned=tree.pinned,
            archived=tree.archived,
            folder=folder,
            source_id=tree.source_id,
            metadata=tree.metadata,
            origin=tree.origin,
            created_at=tree.created_at,
            updated_at=tree.updated_at,
        )
        # Ids in the file's order (sorted random ids): siblings with the same time keep their order, as the
        # service's children are listed by (created_at, id).
        new_ids = sorted(uuid.uuid4() for _ in tree.messages)
        ids = {id(message): new_id for message, new_id in zip(tree.messages, new_ids, strict=True)}
        _messages_insert(conversation, tree.messages, ids)
        if tree.current is not None:
            conversation.current_node_id = ids[id(tree.current)]
            conversation.save(update_fields=["current_node"])
        ConversationTag.objects.bulk_create([ConversationTag(conversation=conversation, name=t) for t in tree.tags])
    return conversation


_IMPORT_COLUMNS = (
    "id",
    "conversation_id",
    "parent_id",
    "role",
    "content",
    "model",
    "finish_details",
    "status",
    "depth",
    "token_count",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "created_at",
)


def _messages_insert(conversation: Conversation, messages: list[ImportedMessage], ids: dict[int, uuid.UUID]) -> None:
    """INSERT the imported messages (parents first), many rows a statement. bulk_create's preparation of every
    field of every row (a Message instance each, then each field's get_db_prep_save) cost ~300 µs of CPU a
    message, four times the database's own work, FTS index included; rows of plain values cost ~10 µs."""
    uuid_value = (lambda u: u) if connection.features.has_native_uuid_field else (lambda u: u.hex)
    time_value = connection.ops.adapt_datetimefield_value
    conversation_id = uuid_value(conversation.pk)
    assistant = Message.Role.ASSISTANT
    rows = []
    for message in messages:
        prompt, completion, total = message.usage or (None, None, None)
        mine = message.role == assistant
        rows.append(
            (
                uuid_value(ids[id(message)]),
                conversation_id,
                uuid_value(ids[id(message.parent)]) if message.parent is not None else None,
                message.role,
                message.text,
                message.model if mine else "",
                message.finish if mine else None,
                message.status,
                message.depth,
                completion if completion is not None and mine else llm.estimate_tokens(message.text),
                prompt,
                completion,
                total,
                time_value(message.created_at),
            )
        )
    columns = ", ".join(connection.ops.quote_name(column) for column in _IMPORT_COLUMNS)
    row = f"({', '.join(['%s'] * len(_IMPORT_COLUMNS))})"
    # Many rows a statement (as bulk_create does), within the database's limit of parameters a statement.
    size = max(1, (connection.features.max_query_params or 10_000) // len(_IMPORT_COLUMNS))
    size = min(size, 500)
    with connection.cursor() as cursor:
        for start in range(0, len(rows), size):
            batch = rows[start : start + size]
            cursor.execute(
                f"INSERT INTO {Message._meta.db_table} ({columns}) VALUES {', '.join([row] * len(batch))}",
                [value for values in batch for value in values],
            )
