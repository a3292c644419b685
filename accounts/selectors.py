"""Read queries for users and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, TypedDict

from django.db.models import Count, Prefetch, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts import limits
from accounts.models import KEY_PREFIX, APIKey, User
from chatapi.ids import parse_uuid

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

# The largest value a BigAutoField id can hold; bigger digit strings can only be usernames.
_MAX_USER_ID = 2**63 - 1


def api_key_get_by_lookup_id(*, lookup_id: str) -> APIKey | None:
    """The key with this lookup id, its user attached; None if there is none."""
    # get(), not first(): the lookup id is unique, and first()'s ORDER BY costs CPU on every request.
    try:
        return APIKey.objects.select_related("user").get(lookup_id=lookup_id)
    except APIKey.DoesNotExist:
        return None


def api_key_list_for_user(*, user: User) -> QuerySet[APIKey]:
    return APIKey.objects.filter(user=user).order_by("-created_at")


def api_key_list(*, user: User | None = None) -> QuerySet[APIKey]:
    keys = APIKey.objects.select_related("user").order_by("user__username", "-created_at")
    return keys.filter(user=user) if user is not None else keys


def api_key_active_q(prefix: str = "") -> Q:
    """Keys that still work: not revoked and not expired (optionally through a relation `prefix`)."""
    now = timezone.now()
    return Q(**{f"{prefix}revoked_at__isnull": True}) & (
        Q(**{f"{prefix}expires_at__isnull": True}) | Q(**{f"{prefix}expires_at__gt": now})
    )


def api_key_status(*, api_key: APIKey, now: datetime | None = None) -> str:
    """`revoked`, `expired` or `active`, in that order of precedence."""
    if api_key.is_revoked:
        return "revoked"
    if api_key.is_expired(now):
        return "expired"
    return "active"


def api_key_filter_by_status(*, keys: QuerySet[APIKey], status: str) -> QuerySet[APIKey]:
    """`keys` whose api_key_status() would be `status` (`active`, `revoked` or `expired`)."""
    if status == "active":
        return keys.filter(api_key_active_q())
    if status == "revoked":
        return keys.filter(revoked_at__isnull=False)
    if status == "expired":
        return keys.filter(revoked_at__isnull=True, expires_at__lte=timezone.now())
    raise ValueError(f"Unknown API key status {status!r}.")


def api_key_get_by_id_or_prefix(*, ident: str) -> APIKey | None:
    """A key by its UUID, its prefix `ck_<lookup id>`, its bare lookup id, or a full key (by its lookup part)."""
    ident = ident.strip()
    pk = parse_uuid(ident)
    if pk is not None:
        return APIKey.objects.select_related("user").filter(pk=pk).first()
    lookup_id = ident
    if ident.startswith(f"{KEY_PREFIX}_"):
        # `ck_<lookup>` or `ck_<lookup>_<secret>`: the lookup id is hex, so it never holds an underscore.
        lookup_id = ident[len(KEY_PREFIX) + 1 :].partition("_")[0]
    if not lookup_id:
        return None
    return APIKey.objects.select_related("user").filter(lookup_id=lookup_id).first()


class KeyStanding(TypedDict):
    budget_tokens_used: int
    budget_resets_at: datetime | None
    tokens_this_minute: int


def api_key_standing(*, api_key: APIKey, now: datetime | None = None) -> KeyStanding:
    """Where a key stands: tokens used in its budget period and when that ends, tokens this minute."""
    now = now or timezone.now()
    period = api_key.budget_period
    return {
        "budget_tokens_used": limits.budget_used(api_key, now) if period else 0,
        "budget_resets_at": limits.period_end(period, now) if period and api_key.budget_tokens else None,
        "tokens_this_minute": limits.tpm_used(api_key, now),
    }


class KeyCounts(TypedDict):
    active_key_count: int
    total_tokens: int


def user_annotate_active_key_count(users: QuerySet[User]) -> QuerySet[WithAnnotations[User, KeyCounts]]:
    """`users`, each with `active_key_count` (its keys neither revoked nor expired) and `total_tokens`
    (the usage of all its keys), in the same query."""
    return users.annotate(
        active_key_count=Count("api_keys", filter=api_key_active_q("api_keys__")),
        total_tokens=Coalesce(Sum("api_keys__total_tokens"), 0),
    )


def user_list_with_key_counts() -> QuerySet[WithAnnotations[User, KeyCounts]]:
    return user_annotate_active_key_count(User.objects.all()).order_by("id")


def user_get_by_id_or_username(*, ident: str) -> User | None:
    # isascii: "²".isdigit() is true but int() refuses it; the bound keeps huge numbers out of the query.
    if ident.isascii() and ident.isdigit() and int(ident) <= _MAX_USER_ID:
        user = User.objects.filter(pk=int(ident)).first()
        if user is not None:
            return user
    return User.objects.filter(username=ident).first()


def user_get_active(*, user_id: int) -> User | None:
    return User.objects.filter(pk=user_id, is_active=True).first()


def user_list_active_with_keys() -> QuerySet[User]:
    """Active users, oldest first, each with `active_keys` (its working keys, oldest first): two queries."""
    keys = APIKey.objects.filter(api_key_active_q()).order_by("created_at")
    return (
        User.objects.filter(is_active=True)
        .prefetch_related(Prefetch("api_keys", queryset=keys, to_attr="active_keys"))
        .order_by("pk")
    )
