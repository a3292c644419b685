"""Conversations and their messages, kept as a tree (each message points at its parent)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Folder(models.Model):
    """A user's folder of conversations; new conversations made in it start with its system prompt."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=100)
    system_prompt = models.TextField(blank=True, help_text="What new conversations made in the folder start with.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["owner", "name"], name="folder_owner_name_idx")]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    class Origin(models.TextChoices):
        CONVERSATIONS = "conversations", "Conversation API"
        COMPLETE = "complete", "/api/complete"
        ASK = "ask", "/api/ask"
        OPENAI = "openai", "OpenAI-compatible API"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=255, blank=True, help_text="Set from the first prompt unless given.")
    model = models.CharField(max_length=200, blank=True, help_text="Model for new replies; empty means the default.")
    system_prompt = models.TextField(blank=True, help_text="Sent first in every request's context.")
    # DO_NOTHING: the services move current_node before deleting messages, and deleting a whole
    # conversation takes its messages with it in one statement.
    current_node = models.ForeignKey(
        "Message",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        related_name="+",
        help_text="The leaf of the branch the conversation shows.",
    )
    origin = models.CharField(
        max_length=16,
        choices=Origin.choices,
        default=Origin.CONVERSATIONS,
        help_text="Which API started it; /api/complete continues its own latest conversation.",
    )
    pinned = models.BooleanField(default=False, help_text="Pinned conversations come first in the list.")
    archived = models.BooleanField(default=False, help_text="Archived conversations are left out of the list.")
    folder = models.ForeignKey(
        Folder,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,  # deleting a folder keeps its conversations
        related_name="conversations",
    )
    source_id = models.CharField(  # noqa: DJ001 (null: most conversations were not imported)
        max_length=200,
        null=True,
        blank=True,
        help_text="The id of the conversation it was imported from; importing it again skips it.",
    )
    metadata = models.JSONField(
        default=dict,
        blank=True,
        help_text="Up to 16 string pairs a client attached (OpenAI's Conversations and Responses `metadata`).",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, help_text="Last time a message was added.")

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["owner", "-updated_at"], name="conv_owner_updated_idx"),
            # The list, in its order to the last key (pinned first, newest first, then id), so that a page is read
            # from the index and never sorted: of the conversations archived or not (the default list),
            models.Index(
                fields=["owner", "archived", "-pinned", "-updated_at", "-id"], name="conv_owner_archived_list_idx"
            ),
            # and of all of them (`archived=all`; and on SQLite, whose planner cannot use `NOT archived` as an index
            # key, every list: it reads this index in order and skips the archived ones).
            models.Index(fields=["owner", "-pinned", "-updated_at", "-id"], name="conv_owner_all_list_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "source_id"],
                name="conv_owner_source_uniq",
                condition=models.Q(source_id__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)


class ConversationTag(models.Model):
    """One tag of a conversation (a table, so that the list can filter on a tag with an index)."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="tag_links")
    name = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "name"], name="conv_tag_uniq")]
        indexes = [models.Index(fields=["name", "conversation"], name="conv_tag_name_idx")]

    def __str__(self) -> str:
        return self.name


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Finish(models.TextChoices):
        STOP = "stop"
        LENGTH = "length"
        INTERRUPTED = "interrupted"
        CANCELLED = "cancelled"
        ERROR = "error"

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        INTERRUPTED = "interrupted"  # the backend failed mid-way, or the worker died: partial text kept
        FAILED = "failed"  # the backend failed before any text
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,  # subtrees are deleted by the service, in one statement
        related_name="children",
        help_text="The message this one answers or follows; null for a root.",
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    model = models.CharField(max_length=200, blank=True, help_text="The model that wrote an assistant message.")
    finish_details = models.CharField(  # noqa: DJ001 (null for user and system messages, as in the contract)
        max_length=16, choices=Finish.choices, null=True, blank=True
    )
    status = models.CharField(
        max_length=16,
        choices=Status.choices,
        default=Status.COMPLETED,
        help_text="A reply is in_progress while it is generated; user and system messages are completed.",
    )
    lease_expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="While in progress: the worker generating it renews this; past it, the reply is interrupted.",
    )
    last_event_id = models.PositiveIntegerField(
        null=True, blank=True, help_text="The id of the last event of its generation's stream (its end)."
    )
    depth = models.PositiveIntegerField(default=0, help_text="How many messages lie above it on its branch.")
    token_count = models.PositiveIntegerField(
        default=0, help_text="Its tokens in a model's context: measured by the backend for a reply, else estimated."
    )
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    # Not a column: the attachments a reply was just stored with, when the service hands back the reply it
    # wrote without reading it again (None: ask the database, or what a list prefetched).
    attachments_made: list[Attachment] | None = None

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="msg_conv_created_idx"),
            # The replies in progress, for the sweep that finds those whose worker died.
            models.Index(
                fields=["lease_expires_at"], name="msg_in_progress_idx", condition=models.Q(status="in_progress")
            ),
        ]
        constraints = [
            # Target of the composite foreign keys (migration 0002) that keep every parent and every
            # current node inside its own conversation.
            models.UniqueConstraint(fields=["id", "conversation"], name="message_id_conversation_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"

    def attachment_list(self) -> list[Attachment]:
        """Its attachments: those it was just stored with, else what its list prefetched (else one query)."""
        return self.attachments_made if self.attachments_made is not None else list(self.attachments.all())


class Attachment(models.Model):
    """What a reply made besides text (an image, speech), kept through Django's storage API.

    Its file's name is made from its own id, never from anything a user sent. Deleting the row (with its
    message or conversation) deletes the file once the transaction commits (conversations.signals).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # DO_NOTHING: messages are deleted in one statement (a subtree by the service, which deletes their
    # attachments first; a whole conversation by `conversation`'s cascade), never one by one.
    message = models.ForeignKey(Message, on_delete=models.DO_NOTHING, related_name="attachments")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="attachments")
    kind = models.CharField(max_length=16, help_text="The tool that made it: image or speech.")
    content_type = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField(help_text="Bytes.")
    source_text = models.TextField(help_text="The prompt of an image, or the text that was spoken.")
    file = models.FileField(upload_to="attachments/%Y/%m/", max_length=255)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} of {self.message_id}"
