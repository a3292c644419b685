"""Users and their API keys (only a digest of each key is stored)."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils import timezone

KEY_PREFIX = "ck"
# The largest limit: what a 32-bit column holds, far above any real one. Forms and services refuse more.
MAX_LIMIT = 2**31 - 1


class BudgetPeriod(models.TextChoices):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TOTAL = "total"


LIMIT_FIELDS = ("rpm", "tpm", "max_parallel", "budget_tokens", "budget_period")
# A user's defaults for their new keys: User.key_<limit field>.
KEY_DEFAULT_FIELDS = tuple(f"key_{field}" for field in LIMIT_FIELDS)


def _key_default(help_text: str) -> models.PositiveIntegerField:
    return models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_LIMIT)],
        help_text=f"{help_text} for this user's new keys. Empty: the server's default; 0: none.",
    )


class User(AbstractUser):
    """The service's user; custom from the first migration so it can grow without pain."""

    # Limits a key made for this user starts with (by the admin, create_api_key or POST /api/keys), each
    # falling back to the server-wide CHATAPI_DEFAULT_* when empty.
    key_rpm = _key_default("Requests a minute")
    key_tpm = _key_default("Tokens a minute")
    key_max_parallel = _key_default("Replies in progress at once")
    key_budget_tokens = _key_default("Tokens per budget period")
    key_budget_period = models.CharField(
        max_length=8,
        blank=True,
        choices=BudgetPeriod.choices,
        help_text="The budget period of this user's new keys. Empty: the server's default.",
    )


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
    # Limits (null: none). Requests a minute and generations in progress are counted in Redis (in the
    # process without it); tokens are counted here, in the UPDATE that records each reply's usage.
    rpm = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_LIMIT)],
        help_text="Requests a minute that call the model.",
    )
    tpm = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(MAX_LIMIT)], help_text="Tokens a minute."
    )
    max_parallel = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(MAX_LIMIT)], help_text="Generations in progress at once."
    )
    budget_tokens = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_LIMIT)],
        help_text="Tokens allowed per budget period (needs a budget period).",
    )
    budget_period = models.CharField(
        max_length=8, blank=True, choices=BudgetPeriod.choices, help_text="The period the token budget is for."
    )
    tpm_window = models.DateTimeField(null=True, blank=True, editable=False, help_text="The minute tpm_used is of.")
    tpm_used = models.PositiveBigIntegerField(default=0, editable=False, help_text="Tokens used in tpm_window.")
    budget_window = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Start of the budget period budget_used is of."
    )
    budget_used = models.PositiveBigIntegerField(
        default=0, editable=False, help_text="Tokens used in the budget period that started at budget_window."
    )

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    def clean(self) -> None:
        """A changed key's budget keeps its period (a new key's is filled in from the defaults)."""
        super().clean()
        if not self._state.adding and self.budget_tokens and not self.budget_period:
            raise ValidationError({"budget_period": "A token budget needs a budget period."})

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
    def budget_period_or_none(self) -> str | None:
        return self.budget_period or None

    @property
    def has_limits(self) -> bool:
        return bool(self.rpm or self.tpm or self.max_parallel or self.budget_tokens)

    @property
    def is_usable(self) -> bool:
        return not self.is_revoked and not self.is_expired()


class IdempotencyRecord(models.Model):
    """What a `POST` with an `Idempotency-Key` did, so that a repeat gets the same answer without doing it again.
    The unique constraint makes two concurrent first requests with one key impossible to both carry out."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress"
        DONE = "done"
        STREAMED = "streamed"

    api_key = models.ForeignKey(APIKey, on_delete=models.CASCADE, related_name="idempotency_records")
    key = models.CharField(max_length=255, help_text="The client's Idempotency-Key.")
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the method, path and body.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_PROGRESS)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    body = models.JSONField(null=True, blank=True, help_text="The answer's body, as data (rendered again on repeats).")
    headers = models.JSONField(default=dict, blank=True)
    reply_id = models.UUIDField(null=True, blank=True, help_text="A streamed answer: the reply whose events it sent.")
    created_at = models.DateTimeField(default=timezone.now, help_text="Kept 24 hours from this time.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "key"], name="idempotency_key_per_api_key_uniq")]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created_idx")]

    def __str__(self) -> str:
        return f"{self.key} ({self.state})"
