"""API-key authentication: accepted header forms, every way a key is refused, and last-used bookkeeping."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey
from accounts.services import api_key_create, api_key_revoke

pytestmark = pytest.mark.django_db


def get_with(authorization: str | None):
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    return client.get("/api/keys")


def assert_401(response) -> dict:
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert set(error) == {"message", "type", "code", "param", "details"}
    return error


def test_bearer_key_works(api_key):
    assert get_with(f"Bearer {api_key}").status_code == 200


def test_bearer_scheme_is_case_insensitive(api_key):
    assert get_with(f"bearer {api_key}").status_code == 200


def test_bare_key_without_a_scheme_works(api_key):
    assert get_with(api_key).status_code == 200


def test_missing_header_is_401_with_www_authenticate(user):
    error = assert_401(get_with(None))
    assert error["code"] == "not_authenticated"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer garbage", "garbage", "Bearer ck_", "Bearer ck_abc", "Bearer sk-not-ours", "Bearer", ""],
)
def test_garbage_keys_are_401(user, authorization):
    assert_401(get_with(authorization))


def test_wrong_secret_with_a_real_lookup_id_is_401(user, api_key):
    api_key_record = APIKey.objects.get(user=user)
    forged = f"{api_key_record.prefix}_{'A' * 43}"
    assert forged != api_key

    assert_401(get_with(f"Bearer {forged}"))
    assert_401(get_with(f"Bearer {api_key}x"))


def test_revoked_key_gets_401(user):
    api_key, raw = api_key_create(user=user)
    assert get_with(f"Bearer {raw}").status_code == 200

    api_key_revoke(api_key=api_key)

    error = assert_401(get_with(f"Bearer {raw}"))
    assert "revoked" in error["message"]


def test_expired_key_gets_401(user):
    api_key, raw = api_key_create(user=user, expires_in_days=1)
    APIKey.objects.filter(pk=api_key.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))

    error = assert_401(get_with(f"Bearer {raw}"))
    assert "expired" in error["message"]


def test_key_of_an_inactive_user_gets_401(user, api_key):
    user.is_active = False
    user.save()

    error = assert_401(get_with(f"Bearer {api_key}"))
    assert "inactive" in error["message"]


def test_basic_auth_is_not_accepted(user):
    credentials = base64.b64encode(b"alice:password").decode()
    assert_401(get_with(f"Basic {credentials}"))


def test_last_used_at_is_written_on_first_use_and_not_on_an_immediate_second_request(settings, user, api_key):
    settings.CHATAPI_KEY_LAST_USED_INTERVAL = 60
    record = APIKey.objects.get(user=user)
    assert record.last_used_at is None

    with CaptureQueriesContext(connection) as first:
        assert get_with(f"Bearer {api_key}").status_code == 200
    record.refresh_from_db()
    first_used = record.last_used_at
    assert first_used is not None and timezone.now() - first_used < dt.timedelta(seconds=10)

    with CaptureQueriesContext(connection) as second:
        assert get_with(f"Bearer {api_key}").status_code == 200
    record.refresh_from_db()

    assert record.last_used_at == first_used

    def updates(queries) -> int:
        return sum(q["sql"].startswith("UPDATE") for q in queries.captured_queries)

    assert updates(first) == 1
    assert updates(second) == 0


def test_last_used_at_is_written_again_once_the_interval_has_passed(settings, user, api_key):
    settings.CHATAPI_KEY_LAST_USED_INTERVAL = 60
    record = APIKey.objects.get(user=user)
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    APIKey.objects.filter(pk=record.pk).update(last_used_at=long_ago)

    assert get_with(f"Bearer {api_key}").status_code == 200

    record.refresh_from_db()
    assert record.last_used_at is not None
    assert record.last_used_at > long_ago + dt.timedelta(minutes=4)
