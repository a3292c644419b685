"""Admin for users and their API keys. Keys are made and revoked through the services, shown once, never deleted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from accounts import selectors, services
from accounts.models import KEY_DEFAULT_FIELDS, LIMIT_FIELDS, APIKey, User
from chatapi.admin_mixins import ReadOnlyInlineMixin

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

SHOWN_ONCE = "Copy it now: it will not be shown again."


class APIKeyInline(ReadOnlyInlineMixin, admin.TabularInline):
    """A user's keys, read-only: keys are made with the action or on the API key page, and revoked there."""

    model = APIKey
    fields = ("prefix", "name", "status", "created_at", "last_used_at", "expires_at", "revoked_at", "total_tokens")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    @admin.display(description="status")
    def status(self, obj: APIKey) -> str:
        return selectors.api_key_status(api_key=obj)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "email", "name", "is_staff", "active_keys", "tokens_used")
    fieldsets = (
        *(DjangoUserAdmin.fieldsets or ()),
        (
            "Limits of this user's new API keys (empty: the server's CHATAPI_DEFAULT_*; 0: none)",
            {
                "fields": KEY_DEFAULT_FIELDS,
                "description": "Keys made for this user from now on start with these; existing keys keep theirs.",
            },
        ),
    )
    inlines = [APIKeyInline]
    actions = ["create_api_key"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        return selectors.user_annotate_active_key_count(super().get_queryset(request))

    @admin.display(description="name", ordering="first_name")
    def name(self, obj: User) -> str:
        return obj.get_full_name()

    @admin.display(description="active keys", ordering="active_key_count")
    def active_keys(self, obj: WithAnnotations[User, selectors.KeyCounts]) -> int:
        return obj.active_key_count

    @admin.display(description="tokens used", ordering="total_tokens")
    def tokens_used(self, obj: WithAnnotations[User, selectors.KeyCounts]) -> int:
        return obj.total_tokens

    def has_create_api_key_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.add_apikey")

    @admin.action(description="Create an API key", permissions=["create_api_key"])
    def create_api_key(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            api_key, raw_key = services.api_key_create(user=user, name="admin")
            messages.success(request, f"New API key for {user.username} ({api_key.prefix}): {raw_key} — {SHOWN_ONCE}")


class APIKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[APIKey]) -> QuerySet[APIKey]:
        status = self.value()
        if status in {"active", "revoked", "expired"}:
            return selectors.api_key_filter_by_status(keys=queryset, status=status)
        return queryset


class APIKeyAddForm(forms.ModelForm):
    expires_in_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=services.MAX_EXPIRES_IN_DAYS,
        help_text="Leave empty for a key that never expires.",
    )

    class Meta:
        model = APIKey
        fields = ("user", "name", *LIMIT_FIELDS)


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    add_form = APIKeyAddForm
    add_fieldsets = (
        (None, {"fields": ("user", "name", "expires_in_days")}),
        ("Limits (empty: the user's defaults for new keys, else the server's; 0: none)", {"fields": LIMIT_FIELDS}),
    )
    fieldsets = (
        (None, {"fields": ("user", "name", "prefix", "status")}),
        ("Limits (empty or 0: none)", {"fields": LIMIT_FIELDS}),
        ("Dates", {"fields": ("created_at", "last_used_at", "expires_at", "revoked_at")}),
        ("Usage", {"fields": ("request_count", "prompt_tokens", "completion_tokens", "total_tokens", "standing")}),
    )
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "expires_at", "status", "total_tokens")
    list_filter = (APIKeyStatusFilter, "created_at", "last_used_at", "expires_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "user__email", "name", "lookup_id")
    actions = ["revoke"]

    @admin.display(description="status")
    def status(self, obj: APIKey) -> str:
        return selectors.api_key_status(api_key=obj)

    def get_fieldsets(self, request: HttpRequest, obj: APIKey | None = None) -> Any:
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    @admin.display(description="standing")
    def standing(self, obj: APIKey) -> str:
        standing = selectors.api_key_standing(api_key=obj)
        resets = standing["budget_resets_at"]
        budget = f"{standing['budget_tokens_used']} tokens used in this budget period"
        if resets:
            budget += f" (resets {resets:%Y-%m-%d %H:%M %Z})"
        return f"{budget}; {standing['tokens_this_minute']} this minute"

    def get_readonly_fields(self, request: HttpRequest, obj: APIKey | None = None) -> Any:
        if obj is None:
            return ()
        # Only the limits can be changed; the rest of a key is fixed when it is made.
        return [field for _, options in self.fieldsets for field in options["fields"] if field not in LIMIT_FIELDS]

    def get_form(self, request: HttpRequest, obj: APIKey | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change=change, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: APIKey | None = None) -> bool:
        # Only a key's limits are edited (see get_readonly_fields); change permission also allows revoking.
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: APIKey | None = None) -> bool:
        return False  # revoked, never deleted, so that usage stays attributable

    def save_model(self, request: HttpRequest, obj: APIKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            limits = {field: form.cleaned_data.get(field) for field in LIMIT_FIELDS if field in form.changed_data}
            services.api_key_update(api_key=obj, limits=limits)
            return
        given = {field: form.cleaned_data.get(field) for field in LIMIT_FIELDS}
        api_key, raw_key = services.api_key_create(
            user=form.cleaned_data["user"],
            name=form.cleaned_data["name"],
            expires_in_days=form.cleaned_data["expires_in_days"],
            limits={field: value for field, value in given.items() if value not in (None, "")},
        )
        # The admin goes on with `obj` (log entry, redirect): make it the key the service made.
        for field in APIKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(api_key, field.attname))
        obj._state.adding = False
        obj._state.db = api_key._state.db
        obj._raw_key = raw_key  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: APIKey, post_url_continue: str | None = None) -> HttpResponse:
        raw_key = getattr(obj, "_raw_key", None)
        if raw_key:
            messages.success(request, f"The new API key for {obj.user.username} is {raw_key} — {SHOWN_ONCE}")
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[APIKey]) -> None:
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            services.api_key_revoke(api_key=api_key)
            revoked += 1
        messages.success(request, f"Revoked {revoked} API key{'' if revoked == 1 else 's'}.")
