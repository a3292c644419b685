"""Input and output serializers of the API-key endpoints."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import APIKey
from accounts.selectors import api_key_standing
from chatapi.fields import StrictCharField, StrictIntegerField


def _limit_field(help_text: str) -> StrictIntegerField:
    # The bound keeps a number the database cannot store (a 500) out: far above any real limit.
    return StrictIntegerField(
        required=False, allow_null=True, min_value=0, max_value=2**31 - 1, help_text=f"{help_text} 0: no limit."
    )


class APIKeyLimitsInput(serializers.Serializer):
    """Limits of a new key; one left out is the server's default, or the limit of the key making it (a
    key is never looser than the key it was made with)."""

    rpm = _limit_field("Requests a minute that call the model.")
    tpm = _limit_field("Tokens a minute.")
    max_parallel = _limit_field("Replies in progress at once.")
    budget_tokens = _limit_field("Tokens per budget period.")
    budget_period = serializers.ChoiceField(
        choices=["day", "week", "month", "total"], required=False, help_text="The period of the token budget."
    )


class APIKeyCreateInput(APIKeyLimitsInput):
    name = StrictCharField(required=False, allow_blank=True, max_length=100, default="", trim_whitespace=True)
    expires_in_days = StrictIntegerField(
        required=False, allow_null=True, min_value=1, max_value=3650, default=None, help_text="Omit for no expiry."
    )


class APIKeyLimitsOutput(serializers.Serializer):
    rpm = serializers.IntegerField(allow_null=True)
    tpm = serializers.IntegerField(allow_null=True)
    max_parallel = serializers.IntegerField(allow_null=True)
    budget_tokens = serializers.IntegerField(allow_null=True)
    budget_period = serializers.CharField(allow_null=True, source="budget_period_or_none")


class APIKeyStandingOutput(serializers.Serializer):
    budget_tokens_used = serializers.IntegerField(help_text="Tokens used in the current budget period.")
    budget_resets_at = serializers.DateTimeField(
        allow_null=True, help_text="When the budget period ends (null: no budget, or a `total` one)."
    )
    tokens_this_minute = serializers.IntegerField(help_text="Tokens used in the current minute (for tpm).")


class APIKeyUsageOutput(serializers.Serializer):
    requests = serializers.IntegerField(source="request_count", help_text="Replies generated with this key.")
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class APIKeyOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The key's readable start, `ck_<lookup id>`.")
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    usage = APIKeyUsageOutput(source="*", help_text="Token usage of the replies made with this key.")
    limits = APIKeyLimitsOutput(source="*", help_text="The key's limits; null: none.")
    standing = serializers.SerializerMethodField(help_text="Where the key stands against its token limits.")

    @extend_schema_field(APIKeyStandingOutput)
    def get_standing(self, api_key: APIKey) -> dict[str, Any]:
        return APIKeyStandingOutput(api_key_standing(api_key=api_key)).data


class APIKeyCreatedOutput(APIKeyOutput):
    key = serializers.CharField(help_text="The full key. It is shown this once and never again.")
    tightened = serializers.ListField(
        child=serializers.CharField(),
        help_text="Limits left out of the request that were set to those of the key it was made with.",
    )


# --- the operator endpoints (the older proxy's `/admin/users…`) -------------------------------------------

_MAX_USER_ID = 2**63 - 1


class UserIdField(serializers.Field):
    """A user's id as `add` gave it: a string of digits (or the number itself, as some scripts send it)."""

    default_error_messages = {"invalid": "Must be a user id, as /admin/users/add answered it."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, str) and data.strip().isascii() and data.strip().isdigit():
            data = int(data.strip())
        if not isinstance(data, int) or isinstance(data, bool) or not 0 < data <= _MAX_USER_ID:
            self.fail("invalid")
        return data

    def to_representation(self, value: Any) -> str:
        return str(value)


class OperatorUserDeleteInput(serializers.Serializer):
    user_id = UserIdField()


class OperatorUserCreatedOutput(serializers.Serializer):
    user_id = serializers.CharField(source="user.pk")
    username = serializers.CharField(source="user.username")
    token = serializers.CharField(help_text="The full API key. It is shown this once and never again.")


class OperatorUserKeyOutput(serializers.Serializer):
    user_id = serializers.CharField(source="user.pk")
    username = serializers.CharField(source="user.username")
    token = serializers.CharField(
        source="api_key.prefix", allow_null=True, help_text="The key's public prefix (keys are never stored)."
    )


class OperatorUserListOutput(serializers.Serializer):
    users = OperatorUserKeyOutput(many=True)
