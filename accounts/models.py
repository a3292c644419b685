"""Users and their API keys (only a digest of each key is stored)."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone

KEY_PREFIX = "ck"


class User(AbstractUser):
    """The service's user; custom from the first migration so it can grow without pain."""


class APIKey(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True, help_text="A label to tell keys apart.")
    lookup_id = models.CharField(
        max_length=16, unique=True, editable=False, help_text="Public part of the key, used to find it."
    )
    digest = models.CharField(max_length=64, editable=False, help_text="SHA-256 of the full key; never the key.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Updated at most once a minute (CHATAPI_KEY_LAST_USED_INTERVAL).",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="The key stops working after this time.")
    revoked_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Keys are revoked, never deleted, so usage stays attributable."
    )
    # Usage totals, added to with one UPDATE per reply (from the backend's counts, or estimated).
    request_count = models.PositiveBigIntegerField(default=0, editable=False, help_text="Replies generated.")
    prompt_tokens = models.PositiveBigIntegerField(default=0, editable=False)
    completion_tokens = models.PositiveBigIntegerField(default=0, editable=False)
    total_tokens = models.PositiveBigIntegerField(default=0, editable=False)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    @property
    def prefix(self) -> str:
        """What people see of the key: `ck_<lookup id>`."""
        return f"{KEY_PREFIX}_{self.lookup_id}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def is_usable(self) -> bool:
        return not self.is_revoked and not self.is_expired()
