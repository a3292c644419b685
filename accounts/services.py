"""Use cases for users and API keys: create, revoke, authenticate."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import KEY_PREFIX, APIKey, User
from accounts.selectors import api_key_get_by_lookup_id
from chatapi.errors import InvalidRequest

LOOKUP_ID_BYTES = 6  # 12 hex characters
SECRET_BYTES = 32
MAX_EXPIRES_IN_DAYS = 3650


class InvalidAPIKey(Exception):
    """The presented key is unknown, malformed, revoked, expired or belongs to an inactive user."""


def _digest(raw_key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is right; a password hasher would cost
    # tens of milliseconds on every request for no gain.
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _split_key(raw_key: str) -> tuple[str, str] | None:
    prefix, sep, rest = raw_key.partition("_")
    lookup_id, sep2, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not sep or not sep2 or not lookup_id or not secret:
        return None
    return lookup_id, secret


def user_create(
    *,
    username: str,
    email: str = "",
    first_name: str = "",
    last_name: str = "",
    password: str | None = None,
    is_staff: bool = False,
    is_superuser: bool = False,
) -> User:
    username = username.strip()
    if not username:
        raise InvalidRequest("A username is required.", param="username")
    if User.objects.filter(username=username).exists():
        raise InvalidRequest(f"A user named {username!r} already exists.", code="duplicate", param="username")
    user = User(
        username=username,
        email=User.objects.normalize_email(email),
        first_name=first_name,
        last_name=last_name,
        is_staff=is_staff or is_superuser,
        is_superuser=is_superuser,
    )
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    try:
        user.full_clean(exclude=["password"])
    except ValidationError as exc:
        # Callers (the API, commands, admin) expect ApplicationError, never a Django ValidationError.
        field, messages = next(iter(exc.message_dict.items()))
        raise InvalidRequest(f"{field}: {messages[0]}", param=field, details=exc.message_dict) from None
    user.save()
    return user


def api_key_create(*, user: User, name: str = "", expires_in_days: int | None = None) -> tuple[APIKey, str]:
    """Make a key for `user`. The full key is returned here once and never stored."""
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRES_IN_DAYS:
        raise InvalidRequest(f"expires_in_days must be between 1 and {MAX_EXPIRES_IN_DAYS}.", param="expires_in_days")
    name = name.strip()
    max_name_length = APIKey._meta.get_field("name").max_length
    if max_name_length is not None and len(name) > max_name_length:
        raise InvalidRequest(f"name must be at most {max_name_length} characters.", param="name")
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    for _ in range(5):
        lookup_id = secrets.token_hex(LOOKUP_ID_BYTES)
        if not APIKey.objects.filter(lookup_id=lookup_id).exists():
            break
    raw_key = f"{KEY_PREFIX}_{lookup_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    api_key = APIKey.objects.create(
        user=user, name=name, lookup_id=lookup_id, digest=_digest(raw_key), expires_at=expires_at
    )
    return api_key, raw_key


def api_key_usage_record(*, api_key_id: uuid.UUID, prompt_tokens: int, completion_tokens: int) -> None:
    """Add one reply's token usage to a key's totals, in one UPDATE (no read, no race)."""
    APIKey.objects.filter(pk=api_key_id).update(
        request_count=F("request_count") + 1,
        prompt_tokens=F("prompt_tokens") + prompt_tokens,
        completion_tokens=F("completion_tokens") + completion_tokens,
        total_tokens=F("total_tokens") + prompt_tokens + completion_tokens,
    )


def api_key_revoke(*, api_key: APIKey) -> APIKey:
    """Revoke a key at once; revoking twice keeps the first revocation time."""
    with transaction.atomic():
        APIKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, raw_key: str) -> APIKey:
    """The key's record, with its user, if the key is valid now; else InvalidAPIKey."""
    parts = _split_key(raw_key)
    if parts is None:
        raise InvalidAPIKey("Malformed API key.")
    api_key = api_key_get_by_lookup_id(lookup_id=parts[0])
    if api_key is None or not hmac.compare_digest(api_key.digest, _digest(raw_key)):
        raise InvalidAPIKey("Invalid API key.")
    now = timezone.now()
    if api_key.revoked_at is not None:
        raise InvalidAPIKey("This API key has been revoked.")
    if api_key.is_expired(now):
        raise InvalidAPIKey("This API key has expired.")
    if not api_key.user.is_active:
        raise InvalidAPIKey("The user of this API key is inactive.")
    interval = timedelta(seconds=settings.CHATAPI_KEY_LAST_USED_INTERVAL)
    if api_key.last_used_at is None or now - api_key.last_used_at >= interval:
        # One cheap conditional UPDATE at most once per interval, not a write on every request.
        APIKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key
