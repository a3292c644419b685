"""Liveness and readiness probes for load balancers and orchestrators (no auth)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse

from chatapi.errors import allow_methods

logger = logging.getLogger(__name__)


@allow_methods("GET", "HEAD")
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving."""
    return JsonResponse({"status": "ok"})


@allow_methods("GET", "HEAD")
def readyz(request: HttpRequest) -> JsonResponse:
    """The process can do its work: the database answers (and the cache, when Redis is configured)."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not ready", with the reason logged
        logger.warning("readyz: database check failed: %s", exc)
        checks["database"] = "unavailable"
    if settings.REDIS_URL:
        try:
            cache.set("chatapi:readyz", "1", timeout=5)
            checks["cache"] = "ok" if cache.get("chatapi:readyz") == "1" else "unavailable"
        except Exception as exc:
            logger.warning("readyz: cache check failed: %s", exc)
            checks["cache"] = "unavailable"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)
