"""Input and output serializers of the API-key endpoints."""

from __future__ import annotations

from rest_framework import serializers

from chatapi.fields import StrictCharField, StrictIntegerField


class APIKeyCreateInput(serializers.Serializer):
    name = StrictCharField(required=False, allow_blank=True, max_length=100, default="", trim_whitespace=True)
    expires_in_days = StrictIntegerField(
        required=False, allow_null=True, min_value=1, max_value=3650, default=None, help_text="Omit for no expiry."
    )


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


class APIKeyCreatedOutput(APIKeyOutput):
    key = serializers.CharField(help_text="The full key. It is shown this once and never again.")
