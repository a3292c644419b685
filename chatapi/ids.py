"""Ids in URLs and bodies are UUIDs; this reads one without raising."""

from __future__ import annotations

import uuid


def parse_uuid(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
