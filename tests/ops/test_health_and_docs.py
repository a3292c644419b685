"""Health probes and the OpenAPI documentation."""

from __future__ import annotations

import io
import re
import warnings
from urllib.parse import urljoin, urlsplit

import pytest
import requests
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_healthz_needs_no_key(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_the_database(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


def test_readyz_is_503_when_the_cache_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": settings.REDIS_URL}
    }
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["cache"] == "unavailable"


def test_schema_validates_without_warnings():
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    schema = yaml.safe_load(out.getvalue())
    paths = schema["paths"]
    for path in [
        "/conversations",
        "/conversations/new",
        "/conversations/all",
        "/conversations/{conversation_id}",
        "/conversations/{conversation_id}/ask",
        "/conversations/{conversation_id}/messages",
        "/conversations/{conversation_id}/messages/{message_id}",
        "/conversations/{conversation_id}/messages/{message_id}/regenerate",
        "/conversations/{conversation_id}/fork",
        "/api/keys",
        "/api/keys/{key_id}",
    ]:
        assert path in paths, path
    ask = paths["/conversations/{conversation_id}/ask"]["post"]
    assert ask["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/AskInput"
    assert "prompt" in schema["components"]["schemas"]["AskInput"]["required"]
    assert {"201", "400", "401", "404", "502", "503", "504"} <= set(ask["responses"])


def test_docs_pages_are_served(client):
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/docs/").status_code == 200
    assert client.get("/redoc/").status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/api/schema", "/admin"])
def test_pages_answer_without_their_trailing_slash_too(client, page):
    response = client.get(page)
    assert response.status_code == 302
    assert response["Location"] == f"{page}/"


@pytest.mark.parametrize("page", ["/docs/", "/redoc/"])
def test_docs_pages_load_only_their_own_assets_and_every_one_answers(live_url, page):
    """The pages work offline: every script, stylesheet and icon they load is served by the service."""
    response = requests.get(f"{live_url}{page}", timeout=30)
    assert response.status_code == 200
    assets = re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", response.text)
    assert any(asset.endswith(".js") for asset in assets), assets
    for asset in assets:
        url = urljoin(response.url, asset)
        assert urlsplit(url).netloc == urlsplit(live_url).netloc, f"{page} loads {asset} from elsewhere"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            answer = requests.get(url, timeout=30)
        assert answer.status_code == 200, asset
        assert int(answer.headers["Content-Length"]) == len(answer.content) > 0
        # Sent from an asynchronous iterator, not read whole in a thread first (Django warns when it must).
        assert not [w for w in caught if "synchronous iterators" in str(w.message)], asset
    assert "fonts.googleapis" not in response.text
