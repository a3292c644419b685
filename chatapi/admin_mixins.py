"""Pieces shared by the apps' admin modules."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


class ReadOnlyInlineMixin:
    """An inline that only shows: rows are made and changed elsewhere (through the services)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
