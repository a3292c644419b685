"""Serializer fields shared by the apps' input serializers."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.fields import empty


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers, booleans, lists and objects instead of turning them into text.

    Whitespace is kept as sent (a prompt's spacing is the user's), unless asked otherwise.
    """

    default_error_messages = {"invalid": "Must be a string."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class PromptField(StrictCharField):
    """A prompt: required text that is not blank. The schema says so (`minLength: 1`); a blank value (empty,
    or only whitespace) passes the field and is refused by the service that takes the prompt, so that every
    endpoint answers it with the same 400 (code `empty_prompt`, the field named)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_length", 1)
        super().__init__(**kwargs)

    def run_validation(self, data: Any = empty) -> Any:
        if isinstance(data, str) and not data.strip():
            return data
        return super().run_validation(data)


class StrictBooleanField(serializers.BooleanField):
    """true/false as JSON booleans or the strings "true"/"false" (forms send strings); nothing else,
    not even 1 or 0."""

    default_error_messages = {"invalid": 'Must be a boolean: true or false (or the strings "true"/"false").'}

    def to_internal_value(self, data: Any) -> bool:
        if isinstance(data, bool):
            return data
        if isinstance(data, str) and data.lower() in ("true", "false"):
            return data.lower() == "true"
        self.fail("invalid")


class StrictIntegerField(serializers.IntegerField):
    """An integer as a JSON number or a form string of digits; booleans and floats are refused."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, (bool, float)):
            self.fail("invalid")
        return super().to_internal_value(data)
