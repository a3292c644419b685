"""Read queries for users and API keys."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from accounts.models import APIKey, User


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


def user_list_with_key_counts() -> QuerySet[User]:
    return User.objects.annotate(active_key_count=Count("api_keys", filter=api_key_active_q("api_keys__"))).order_by(
        "id"
    )


def user_get_by_id_or_username(*, ident: str) -> User | None:
    if ident.isdigit():
        user = User.objects.filter(pk=int(ident)).first()
        if user is not None:
            return user
    return User.objects.filter(username=ident).first()
