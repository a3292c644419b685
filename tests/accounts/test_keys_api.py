"""Self-service API keys: GET/POST /api/keys, DELETE /api/keys/{id}."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey
from accounts.services import api_key_create

pytestmark = pytest.mark.django_db

OUTPUT_FIELDS = {
    "id",
    "name",
    "prefix",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked_at",
    "usage",
    "limits",
    "standing",
}


def client_with(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def assert_error(response, status: int, type_: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param", "details"}
    assert body["error"]["type"] == type_
    assert body["error"]["param"] == param
    assert body["error"]["message"]
    return body["error"]


def test_list_shows_only_my_keys_without_the_key_itself(api, user, other_user):
    mine, raw = api_key_create(user=user, name="laptop")
    api_key_create(user=other_user, name="bob's")

    response = api.get("/api/keys")

    assert response.status_code == 200
    keys = response.json()
    assert len(keys) == 2  # `api`'s own key and "laptop"
    assert all(set(key) == OUTPUT_FIELDS for key in keys)
    laptop = next(key for key in keys if key["id"] == str(mine.pk))
    assert laptop["name"] == "laptop" and laptop["prefix"] == mine.prefix
    assert laptop["revoked_at"] is None and laptop["expires_at"] is None
    assert raw not in response.content.decode()
    assert mine.digest not in response.content.decode()


def test_create_answers_the_full_key_once_and_list_never_shows_it(api, user):
    response = api.post("/api/keys", {"name": "ci", "expires_in_days": 30}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == OUTPUT_FIELDS | {"key", "tightened"}
    raw = body["key"]
    assert raw.startswith(body["prefix"] + "_") and body["prefix"].startswith("ck_")
    assert len(raw.removeprefix(body["prefix"] + "_")) >= 43  # 32 random bytes, base64url
    assert body["name"] == "ci"
    expires_at = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(days=29, hours=23) < expires_at - timezone.now() <= dt.timedelta(days=30)

    listed = api.get("/api/keys")
    assert raw not in listed.content.decode()
    assert all("key" not in key for key in listed.json())

    assert client_with(raw).get("/api/keys").status_code == 200


def test_create_without_a_body_makes_an_unnamed_key_that_never_expires(api):
    response = api.post("/api/keys")

    assert response.status_code == 201, response.content
    assert response.json()["name"] == "" and response.json()["expires_at"] is None


def test_only_the_sha256_digest_is_stored(api):
    raw = api.post("/api/keys", {"name": "stored"}, format="json").json()["key"]
    lookup_id, secret = raw.split("_", 2)[1:]
    key = APIKey.objects.get(lookup_id=lookup_id)

    assert key.digest == hashlib.sha256(raw.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {APIKey._meta.db_table}")
        cells = [str(cell) for row in cursor.fetchall() for cell in row]
    assert not any(raw in cell or secret in cell for cell in cells)


def test_delete_revokes_the_key_which_then_gets_401(api, user):
    api_key, raw = api_key_create(user=user, name="to revoke")
    victim = client_with(raw)
    assert victim.get("/api/keys").status_code == 200

    response = api.delete(f"/api/keys/{api_key.pk}")

    assert response.status_code == 204 and response.content == b""
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None  # revoked, not deleted
    assert_error(victim.get("/api/keys"), 401, "authentication_error")
    listed = {key["id"]: key for key in api.get("/api/keys").json()}
    assert listed[str(api_key.pk)]["revoked_at"] is not None


def test_delete_with_a_trailing_slash_works_too(api, user):
    api_key, _ = api_key_create(user=user)
    assert api.delete(f"/api/keys/{api_key.pk}/").status_code == 204


def test_a_key_can_revoke_itself(user):
    api_key, raw = api_key_create(user=user)
    client = client_with(raw)

    assert client.delete(f"/api/keys/{api_key.pk}").status_code == 204
    assert client.get("/api/keys").status_code == 401


def test_delete_another_users_key_is_404_and_leaves_it_working(api, other_user):
    theirs, raw = api_key_create(user=other_user)

    error = assert_error(api.delete(f"/api/keys/{theirs.pk}"), 404, "not_found_error")

    assert error["code"] == "api_key_not_found"
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    assert client_with(raw).get("/api/keys").status_code == 200


@pytest.mark.parametrize("key_id", ["not-a-uuid", "123", str(uuid.uuid4())])
def test_delete_unknown_or_malformed_id_is_404(api, key_id):
    assert_error(api.delete(f"/api/keys/{key_id}"), 404, "not_found_error")


@pytest.mark.parametrize("days", [0, -1, 3651, "soon", 1.5, True])
def test_bad_expires_in_days_is_400_with_the_contract_body(api, days):
    error = assert_error(
        api.post("/api/keys", {"expires_in_days": days}, format="json"), 400, "invalid_request_error", "expires_in_days"
    )
    assert "expires_in_days" in error["details"]
    assert not APIKey.objects.exclude(name="").exists() and APIKey.objects.count() == 1  # only `api`'s own key


def test_name_too_long_is_400(api):
    error = assert_error(
        api.post("/api/keys", {"name": "x" * 101}, format="json"), 400, "invalid_request_error", "name"
    )
    assert "name" in error["details"]
    assert APIKey.objects.count() == 1


def test_keys_endpoints_need_a_key():
    client = APIClient()
    for response in (client.get("/api/keys"), client.post("/api/keys"), client.delete(f"/api/keys/{uuid.uuid4()}")):
        assert_error(response, 401, "authentication_error")
        assert response["WWW-Authenticate"] == "Bearer"


def test_a_limit_too_large_to_store_is_a_400(api):
    # Found by the fuzzer: a number past the database's integer was a 500.
    response = api.post("/api/keys", {"name": "huge", "budget_tokens": 3278548239571528285648060416}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "budget_tokens"
