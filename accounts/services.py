"""Use cases for users and API keys: create, revoke, authenticate."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts import limits as key_limits  # a module: accounts.limits imports DRF, whose settings import us
from accounts.models import KEY_DEFAULT_FIELDS, KEY_PREFIX, LIMIT_FIELDS, MAX_LIMIT, APIKey, BudgetPeriod, User
from accounts.selectors import api_key_get_by_lookup_id
from chatapi.errors import InvalidRequest

LOOKUP_ID_BYTES = 6  # 12 hex characters
SECRET_BYTES = 32
MAX_EXPIRES_IN_DAYS = 3650


class InvalidAPIKey(Exception):
    """The presented key is unknown, malformed, revoked, expired or belongs to an inactive user."""


class InvalidAdminKey(Exception):
    """An operator endpoint's admin_key is neither CHATAPI_ADMIN_KEY nor a staff user's API key. `user` is set
    when it is a working API key of a user who is not staff."""

    def __init__(self, reason: str, *, user: User | None = None) -> None:
        super().__init__(reason)
        self.user = user


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


# Limits as given to the services: a number (0: no limit) or a period; a limit left out is left as it is.
Limits = dict[str, int | str | None]


def _limits_clean(limits: Limits) -> dict[str, int | str | None]:
    """`limits` as stored: 0 or None becomes None (no limit); a bad value is a 400 naming its field."""
    cleaned: dict[str, int | str | None] = {}
    for field, value in limits.items():
        if field not in LIMIT_FIELDS:
            raise InvalidRequest(f"Unknown limit {field!r}.", param=field)
        if field == "budget_period":
            if value not in (None, "", *BudgetPeriod.values):
                raise InvalidRequest(
                    f"budget_period must be one of {', '.join(BudgetPeriod.values)}.", param="budget_period"
                )
            cleaned[field] = value or ""
            continue
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not value >= 0):
            raise InvalidRequest(f"{field} must be a whole number, 0 for no limit.", param=field)
        if value is not None and value > MAX_LIMIT:
            raise InvalidRequest(f"{field} must be at most {MAX_LIMIT}.", param=field)
        cleaned[field] = value or None
    return cleaned


def _limits_default(user: User) -> dict[str, int | str | None]:
    """The limits a new key of `user` starts with: the user's defaults, each falling back to the server's
    (CHATAPI_DEFAULT_*) when the user has none."""
    server: Limits = {
        "rpm": settings.CHATAPI_DEFAULT_RPM,
        "tpm": settings.CHATAPI_DEFAULT_TPM,
        "max_parallel": settings.CHATAPI_DEFAULT_MAX_PARALLEL,
        "budget_tokens": settings.CHATAPI_DEFAULT_BUDGET_TOKENS,
        "budget_period": settings.CHATAPI_DEFAULT_BUDGET_PERIOD,
    }
    own: Limits = {field: getattr(user, f"key_{field}") for field in LIMIT_FIELDS}
    return _limits_clean({field: server[field] if own[field] in (None, "") else own[field] for field in LIMIT_FIELDS})


def user_key_defaults(*, user: User) -> dict[str, int | str | None]:
    """The limits a new key of `user` would start with (None: no limit)."""
    chosen = _limits_default(user)
    if not chosen["budget_tokens"]:
        chosen["budget_period"] = ""
    return chosen


def user_key_defaults_update(*, user: User, limits: Limits, reset: bool = False) -> User:
    """Set the limits `user`'s new keys start with: a number (0: none), a period, or None (the server's default
    again) for each limit given; `reset` first puts every one back to the server's default."""
    if reset:
        for field in LIMIT_FIELDS:
            setattr(user, f"key_{field}", "" if field == "budget_period" else None)
    for field, value in limits.items():
        if value is None:
            setattr(user, f"key_{field}", "" if field == "budget_period" else None)
            continue
        cleaned = _limits_clean({field: value})[field]
        # Unlike a key's own limits, 0 (none) is kept: it is not the same as "the server's default".
        setattr(user, f"key_{field}", cleaned if field == "budget_period" else cleaned or 0)
    user.save(update_fields=list(KEY_DEFAULT_FIELDS))
    return user


def _limits_check(api_key: APIKey) -> None:
    if api_key.budget_tokens and not api_key.budget_period:
        raise InvalidRequest("A token budget needs a budget_period.", param="budget_period")


def _limits_within(chosen: dict[str, int | str | None], given: Limits, maker: APIKey) -> list[str]:
    """Tighten `chosen` (in place) to the maker's key: a limit given looser than the maker's, or none where the
    maker has one, is a 400 naming it; one left out (a default) is lowered to the maker's, and its name
    returned."""
    tightened = []
    for field in ("rpm", "tpm", "max_parallel", "budget_tokens"):
        ceiling = getattr(maker, field)
        value = chosen[field]
        if ceiling is None or (value is not None and int(value) <= ceiling):
            continue
        if field in given:
            raise InvalidRequest(
                f"{field} may be at most {ceiling}, the limit of the key this request was made with.", param=field
            )
        chosen[field] = ceiling
        tightened.append(field)
    if not maker.budget_tokens:
        return tightened
    if given.get("budget_period"):
        if given["budget_period"] not in (maker.budget_period, BudgetPeriod.TOTAL):
            raise InvalidRequest(
                f"budget_period must be {maker.budget_period} (or total), the period of the key this request was "
                "made with.",
                param="budget_period",
            )
    elif "budget_tokens" in tightened or chosen["budget_period"] not in (maker.budget_period, BudgetPeriod.TOTAL):
        # The maker's budget, or one counted over another period than the maker's: the maker's period.
        chosen["budget_period"] = maker.budget_period
        tightened.append("budget_period")
    return tightened


def api_key_create(
    *,
    user: User,
    name: str = "",
    expires_in_days: int | None = None,
    limits: Limits | None = None,
    maker: APIKey | None = None,
) -> tuple[APIKey, str]:
    """Make a key for `user`. The full key is returned here once and never stored. `limits` override the
    user's defaults for new keys, and those the server-wide ones (CHATAPI_DEFAULT_*); with `maker` (the key a
    user makes it with), the new key is never looser than it: a default looser than the maker's limit is
    lowered to it (listed in `api_key.tightened`), a given one is a 400."""
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRES_IN_DAYS:
        raise InvalidRequest(f"expires_in_days must be between 1 and {MAX_EXPIRES_IN_DAYS}.", param="expires_in_days")
    name = name.strip()
    max_name_length = APIKey._meta.get_field("name").max_length
    if max_name_length is not None and len(name) > max_name_length:
        raise InvalidRequest(f"name must be at most {max_name_length} characters.", param="name")
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    given = _limits_clean(limits or {})
    chosen = {**_limits_default(user), **given}
    tightened = _limits_within(chosen, given, maker) if maker is not None else []
    if not chosen["budget_tokens"] and "budget_period" not in given:
        chosen["budget_period"] = ""
    candidate = APIKey(**chosen)
    _limits_check(candidate)
    for _ in range(5):
        lookup_id = secrets.token_hex(LOOKUP_ID_BYTES)
        if not APIKey.objects.filter(lookup_id=lookup_id).exists():
            break
    raw_key = f"{KEY_PREFIX}_{lookup_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    api_key = APIKey.objects.create(
        user=user, name=name, lookup_id=lookup_id, digest=_digest(raw_key), expires_at=expires_at, **chosen
    )
    api_key.tightened = tightened  # type: ignore[attr-defined]
    return api_key, raw_key


def api_key_update(*, api_key: APIKey, name: str | None = None, limits: Limits | None = None) -> APIKey:
    """Change a key's name or limits (those given; 0 removes a limit). Takes effect on its next request."""
    fields: list[str] = []
    if name is not None:
        api_key.name = name.strip()
        fields.append("name")
    for field, value in _limits_clean(limits or {}).items():
        setattr(api_key, field, value)
        fields.append(field)
    _limits_check(api_key)
    if fields:
        api_key.save(update_fields=fields)
    return api_key


# The budget period of each key as this process last read it while counting its usage. With it, a reply's usage is
# one UPDATE of the key's row, guarded by the windows that period and this minute give (−0.45 ms of CPU per reply
# against a locked read and an UPDATE, measured in one process on PostgreSQL); a guess that no longer holds (a new
# minute or period, a key moved to another period, a deleted key) matches no row, and the usage is counted the
# careful way. Cleared rather than let grow past _PERIODS_KNOWN_MAX keys.
_periods_known: dict[uuid.UUID, str] = {}
_PERIODS_KNOWN_MAX = 10_000


def api_key_usage_record(*, api_key_id: uuid.UUID, prompt_tokens: int, completion_tokens: int) -> None:
    """Add one reply's token usage to a key's totals, its tokens this minute and in its budget period: a
    window that has passed starts again from this reply. The key's row is locked while its windows are read
    and written, so that no concurrent reply's usage is lost; when both windows are the current ones, as they
    are for most replies, one UPDATE guarded by them does it without the read.

    (One UPDATE choosing the windows with CASE expressions needs no read either, but the ORM takes some 7 ms of
    CPU to build it, against some 3 ms for this read and a plain UPDATE: measured in one process, interleaved.)
    """
    tokens = prompt_tokens + completion_tokens
    now = timezone.now()
    minute = key_limits.minute_start(now)
    totals = {
        "request_count": F("request_count") + 1,
        "prompt_tokens": F("prompt_tokens") + prompt_tokens,
        "completion_tokens": F("completion_tokens") + completion_tokens,
        "total_tokens": F("total_tokens") + tokens,
    }
    known = _periods_known.get(api_key_id)
    if known is not None:
        current = APIKey.objects.filter(
            pk=api_key_id, budget_period=known, budget_window=key_limits.period_start(known, now), tpm_window=minute
        )
        if current.update(**totals, tpm_used=F("tpm_used") + tokens, budget_used=F("budget_used") + tokens):
            return
    with transaction.atomic(savepoint=False):  # a savepoint inside a caller's transaction would change nothing
        windows = APIKey.objects.select_for_update().filter(pk=api_key_id)
        try:
            budget_period, budget_window, tpm_window = windows.values_list(
                "budget_period", "budget_window", "tpm_window"
            ).get()
        except APIKey.DoesNotExist:
            _periods_known.pop(api_key_id, None)
            return  # the key was deleted meanwhile: there is nothing to count against
        period = key_limits.period_start(budget_period, now)
        windows.update(
            **totals,
            tpm_used=F("tpm_used") + tokens if tpm_window == minute else tokens,
            tpm_window=minute,
            budget_used=F("budget_used") + tokens if budget_window == period else tokens,
            budget_window=period,
        )
    if len(_periods_known) >= _PERIODS_KNOWN_MAX:
        _periods_known.clear()
    _periods_known[api_key_id] = budget_period


def api_key_revoke(*, api_key: APIKey) -> APIKey:
    """Revoke a key at once; revoking twice keeps the first revocation time."""
    with transaction.atomic():
        APIKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


@dataclass(frozen=True)
class Operator:
    """Who uses the operator endpoints: whoever holds CHATAPI_ADMIN_KEY (no `api_key`), or a staff user by one
    of their API keys."""

    api_key: APIKey | None = None

    def __str__(self) -> str:
        if self.api_key is None:
            return "the admin key (CHATAPI_ADMIN_KEY)"
        user = self.api_key.user
        return f"staff user {user.username} (id {user.pk}, key {self.api_key.prefix})"


def operator_authenticate(*, admin_key: str) -> Operator:
    """The operator `admin_key` stands for, or InvalidAdminKey."""
    configured = settings.CHATAPI_ADMIN_KEY
    # Digests of both, compared in constant time: neither the key's characters nor its length show in timing.
    if configured and hmac.compare_digest(_digest(admin_key), _digest(configured)):
        return Operator()
    try:
        api_key = api_key_authenticate(raw_key=admin_key)
    except InvalidAPIKey as exc:
        raise InvalidAdminKey(f"not the admin key, nor a working API key ({exc})") from None
    if not api_key.user.is_staff:
        raise InvalidAdminKey("the API key of a user who is not staff", user=api_key.user)
    return Operator(api_key=api_key)


def operator_user_create() -> tuple[User, APIKey, str]:
    """A user with a generated name and one API key, for the older proxy's `POST /admin/users/add`; the full key
    is returned here once and never stored. Both or neither are made."""
    with transaction.atomic():
        user = user_create(username=f"user-{secrets.token_hex(6)}")
        api_key, raw_key = api_key_create(user=user, name="admin/users/add")
    return user, api_key, raw_key


def user_deactivate(*, user: User) -> int:
    """Deactivate `user` and revoke every key of theirs, at once and on every worker (keys are checked against
    the database on each request). Conversations, keys and usage stay, attributable. Returns how many keys
    were revoked."""
    with transaction.atomic():
        User.objects.filter(pk=user.pk).update(is_active=False)
        revoked = APIKey.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    user.is_active = False
    return revoked


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
