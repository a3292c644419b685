"""Request bodies as clients really send them: streamed without a length, or not what their type says."""

from __future__ import annotations

import pytest

from accounts.models import APIKey
from conversations.models import Conversation
from tests.conversations.test_bad_input import assert_error

pytestmark = pytest.mark.django_db


def chunked(data: bytes, size: int = 7):
    """A body that `requests` sends with `Transfer-Encoding: chunked` (a generator has no length)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_a_chunked_json_body_is_read(http, backend):
    body = b'{"prompt": "sent in chunks", "title": "chunky"}'
    response = http.post(
        f"{http.base_url}/conversations/new",
        data=chunked(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 201, response.text
    assert response.json()["response"]["message"] == "Reply 1 to: sent in chunks"
    assert Conversation.objects.get().title == "chunky"


def test_a_chunked_form_body_is_read(http, user):
    response = http.post(
        f"{http.base_url}/api/keys",
        data=chunked(b"name=from+a+form"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert APIKey.objects.filter(user=user, name="from a form").exists()


def test_a_chunked_body_past_the_limit_is_413_and_stores_nothing(http, backend, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = b'{"prompt": "' + b"x" * 20_000 + b'"}'
    response = http.post(
        f"{http.base_url}/conversations/new",
        data=chunked(body, 1000),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert Conversation.objects.count() == 0
    assert backend.requests == []


@pytest.mark.parametrize(
    "body",
    [b"name=caf\xe9", b"name=caf%E9", b"name=%FF%FE"],
    ids=["raw-latin-1-byte", "percent-escaped-latin-1", "percent-escaped-garbage"],
)
def test_a_form_body_that_is_not_utf8_is_400_and_makes_nothing(api, body):
    before = APIKey.objects.count()
    response = api.generic("POST", "/api/keys", body, content_type="application/x-www-form-urlencoded")
    error = assert_error(response, 400)
    assert "not valid utf-8" in error["message"].lower()
    assert APIKey.objects.count() == before


def test_a_valid_utf8_form_body_keeps_its_text(api):
    response = api.generic(
        "POST", "/api/keys", b"name=caf%C3%A9+%E2%9C%93", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "café ✓"


@pytest.mark.parametrize(
    "body",
    [
        b"this is not multipart at all",
        b'--other\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--other--\r\n',
        b'--b0undary\r\nContent-Disposition: form-data; name="name"\r\n\r\ncut off her',
        b'--b0undary\r\nContent-Disposition: form-data; name="name"\r\n\r\ncaf\xe9\r\n--b0undary--\r\n',
    ],
    ids=["garbage", "another-boundary", "no-closing-boundary", "not-utf8"],
)
def test_a_malformed_multipart_body_is_400_and_makes_nothing(api, body):
    before = APIKey.objects.count()
    response = api.generic("POST", "/api/keys", body, content_type="multipart/form-data; boundary=b0undary")
    assert_error(response, 400)
    assert APIKey.objects.count() == before


def test_a_well_formed_multipart_body_is_read(api, backend):
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nfrom a multipart form\r\n--b0undary--\r\n'
    )
    response = api.generic("POST", "/conversations/new", body, content_type="multipart/form-data; boundary=b0undary")
    assert response.status_code == 201, response.content
    assert response.json()["response"]["message"] == "Reply 1 to: from a multipart form"
