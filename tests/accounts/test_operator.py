"""The older proxy's operator endpoints (`/admin/users/add`, `/admin/users/delete`, `GET /admin/users`): the
admin key or a staff key, 404 while they are off, failed attempts rate-limited per address, every use logged
without the key, and the Django admin beside them untouched."""

from __future__ import annotations

import itertools
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from rest_framework.test import APIClient

from accounts.models import APIKey, User
from accounts.services import api_key_create, api_key_revoke, user_create
from conversations.models import Conversation

pytestmark = pytest.mark.django_db

ADMIN_KEY = "operator-secret-0123456789abcdef"
ADD, DELETE, LIST = "/admin/users/add", "/admin/users/delete", "/admin/users"
# From a random start: counts left in Redis by a run a moment ago must not meet this one's.
_addresses = itertools.count(random.randrange(2**24))


def address() -> str:
    """A client address of its own per test, so that failures counted in one test (in this process, or in
    Redis for a minute) never spill into another."""
    n = next(_addresses)
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


@pytest.fixture
def admin_key(settings) -> str:
    settings.CHATAPI_ADMIN_KEY = ADMIN_KEY
    return ADMIN_KEY


@pytest.fixture
def no_admin_key(settings) -> None:
    settings.CHATAPI_ADMIN_KEY = ""


@pytest.fixture
def ops() -> APIClient:
    """An HTTP client with no credentials of its own (the admin_key goes in the body or the query)."""
    return APIClient(REMOTE_ADDR=address())


@pytest.fixture
def staff(db) -> User:
    return user_create(username="root", is_staff=True)


def add(ops: APIClient, key: object) -> Any:
    return ops.post(ADD, {"admin_key": key}, format="json")


def delete(ops: APIClient, key: object, user_id: object) -> Any:
    return ops.post(DELETE, {"admin_key": key, "user_id": user_id}, format="json")


def listing(ops: APIClient, key: str) -> Any:
    return ops.get(LIST, {"admin_key": key})


def works(raw_key: str) -> bool:
    response = APIClient().get("/api/keys", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert response.status_code in (200, 401), response.content
    return response.status_code == 200


# --- add, list, delete ------------------------------------------------------------------------


def test_add_makes_a_user_with_a_generated_name_and_one_working_key(ops, admin_key):
    response = add(ops, admin_key)

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"user_id", "token", "username"}
    assert isinstance(body["user_id"], str) and body["token"].startswith("ck_")
    user = User.objects.get(pk=int(body["user_id"]))
    assert user.username == body["username"] and user.username.startswith("user-")
    assert user.is_active and not user.is_staff
    assert user.api_keys.count() == 1
    assert works(body["token"])
    # Another add is another user.
    assert add(ops, admin_key).json()["user_id"] != body["user_id"]


def test_list_shows_active_users_with_each_working_keys_prefix_never_a_key(ops, admin_key, user, other_user):
    first = add(ops, admin_key).json()
    _, second_key = api_key_create(user=user, name="laptop")
    revoked, _ = api_key_create(user=user, name="old")
    api_key_revoke(api_key=revoked)
    gone = add(ops, admin_key).json()
    assert delete(ops, admin_key, gone["user_id"]).status_code == 200

    response = listing(ops, admin_key)

    assert response.status_code == 200, response.content
    rows = response.json()["users"]
    new_user_key = APIKey.objects.get(user_id=int(first["user_id"]))
    alice_key = APIKey.objects.get(user=user, name="laptop")
    assert {"user_id": first["user_id"], "username": first["username"], "token": new_user_key.prefix} in rows
    assert {"user_id": str(user.pk), "username": "alice", "token": alice_key.prefix} in rows
    assert {"user_id": str(other_user.pk), "username": "bob", "token": None} in rows  # no key: listed once
    assert revoked.prefix not in response.content.decode()
    assert all(row["user_id"] != gone["user_id"] for row in rows)
    for secret in (first["token"], second_key):
        assert secret not in response.content.decode()
    assert all(row["token"] is None or len(row["token"]) == len("ck_") + 12 for row in rows)


def test_list_takes_a_fixed_number_of_queries(ops, admin_key, django_assert_max_num_queries):
    for _ in range(3):
        add(ops, admin_key)
    with django_assert_max_num_queries(2):
        few = len(listing(ops, admin_key).json()["users"])
    for _ in range(5):
        add(ops, admin_key)
    with django_assert_max_num_queries(2):
        assert len(listing(ops, admin_key).json()["users"]) == few + 5


def test_delete_deactivates_the_user_and_their_keys_stop_working_at_once(ops, admin_key, client_for):
    made = add(ops, admin_key).json()
    user = User.objects.get(pk=int(made["user_id"]))
    api = client_for(user)
    assert api.post("/conversations/new", {"prompt": "hello"}, format="json").status_code == 201
    assert works(made["token"])

    response = delete(ops, admin_key, made["user_id"])

    assert response.status_code == 200, response.content
    assert response.json() == {"message": "User deleted"}
    assert not works(made["token"])
    assert api.get("/conversations").status_code == 401  # the second key too
    user.refresh_from_db()
    assert not user.is_active
    # Revoked, not deleted: the keys and their usage stay attributable, and so do the conversations.
    keys = APIKey.objects.filter(user=user)
    assert keys.count() == 2 and all(key.revoked_at is not None for key in keys)
    assert sum(key.request_count for key in keys) == 1
    assert Conversation.objects.filter(owner=user).count() == 1


def test_delete_takes_the_user_id_as_a_number_too(ops, admin_key):
    made = add(ops, admin_key).json()
    assert delete(ops, admin_key, int(made["user_id"])).json() == {"message": "User deleted"}


def test_delete_of_an_unknown_or_already_deleted_user_is_a_404(ops, admin_key):
    made = add(ops, admin_key).json()
    assert delete(ops, admin_key, made["user_id"]).status_code == 200

    for user_id in (made["user_id"], "987654321"):
        response = delete(ops, admin_key, user_id)
        assert response.status_code == 404
        assert response.json() == {"error": "User not found"}


def test_a_staff_user_is_not_deleted_here(ops, admin_key, staff):
    response = delete(ops, admin_key, str(staff.pk))
    assert response.status_code == 403
    assert "Django admin" in response.json()["error"]
    staff.refresh_from_db()
    assert staff.is_active


@pytest.mark.parametrize("user_id", ["abc", "", "1.5", True, None, [1], {"id": 1}, -3, 0, 2**70, "²"])
def test_a_bad_user_id_is_a_400_in_the_proxys_shape(ops, admin_key, user_id):
    response = delete(ops, admin_key, user_id)
    assert response.status_code == 400, response.content
    assert response.json()["error"].startswith("user_id")


def test_a_missing_user_id_is_a_400(ops, admin_key):
    response = ops.post(DELETE, {"admin_key": admin_key}, format="json")
    assert response.status_code == 400
    assert response.json() == {"error": "user_id: This field is required."}


def test_paths_take_an_optional_trailing_slash_and_forms(ops, admin_key):
    assert ops.post(f"{ADD}/", {"admin_key": admin_key}, format="json").status_code == 200
    assert ops.post(ADD, {"admin_key": admin_key}).status_code == 200  # form-encoded
    assert ops.get(f"{LIST}/", {"admin_key": admin_key}).status_code == 200


# --- the admin key ----------------------------------------------------------------------------


@pytest.mark.parametrize("call", [add, listing, lambda ops, key: delete(ops, key, "1")])
def test_a_wrong_admin_key_is_a_401_in_the_proxys_shape(ops, admin_key, call):
    for wrong in (admin_key + "x", admin_key[:-1], "ck_0123456789ab_nope", "x"):
        response = call(ops, wrong)
        assert response.status_code == 401, response.content
        assert response.json() == {"error": "Invalid admin key"}
    assert User.objects.count() == 0


def test_a_missing_admin_key_is_a_401(ops, admin_key):
    for response in (ops.post(ADD, {}, format="json"), ops.get(LIST), add(ops, "")):
        assert response.status_code == 401
        assert response.json() == {"error": "admin_key is required."}


@pytest.mark.parametrize("key", [123, True, ["k"], {"k": 1}])
def test_an_admin_key_that_is_not_a_string_is_a_400(ops, admin_key, key):
    response = add(ops, key)
    assert response.status_code == 400
    assert response.json() == {"error": "admin_key: Must be a string."}


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ('["admin_key"]', "application/json", 400),
        ('"admin_key"', "application/json", 400),
        ("admin_key=x", "text/plain", 415),
    ],
)
def test_a_bad_body_is_answered_in_the_proxys_shape_never_a_500(ops, admin_key, body, content_type, status):
    for path in (ADD, DELETE):
        response = ops.post(path, body, content_type=content_type)
        assert response.status_code == status, response.content
        assert isinstance(response.json()["error"], str)


def test_a_staff_users_api_key_is_an_admin_key(ops, admin_key, staff):
    _, staff_key = api_key_create(user=staff)
    made = add(ops, staff_key).json()
    assert works(made["token"])
    assert listing(ops, staff_key).status_code == 200
    assert delete(ops, staff_key, made["user_id"]).json() == {"message": "User deleted"}


def test_a_non_staff_users_key_is_a_403_and_a_revoked_staff_key_a_401(ops, admin_key, staff, user):
    _, user_key = api_key_create(user=user)
    response = add(ops, user_key)
    assert response.status_code == 403
    assert "not staff" in response.json()["error"]
    revoked, staff_key = api_key_create(user=staff)
    api_key_revoke(api_key=revoked)
    assert add(ops, staff_key).status_code == 401
    assert User.objects.count() == 2


# --- off without CHATAPI_ADMIN_KEY --------------------------------------------------------------


def test_without_an_admin_key_configured_they_answer_as_an_unknown_path(ops, no_admin_key, user):
    _, user_key = api_key_create(user=user)
    unknown = ops.post("/no/such/path", {"admin_key": "x"}, format="json")
    assert unknown.status_code == 404
    answers = [
        add(ops, "anything"),
        add(ops, ""),
        add(ops, 5),
        add(ops, user_key),  # a working key, but not staff
        ops.post(ADD, "{not json", content_type="application/json"),
        delete(ops, "anything", "1"),
        listing(ops, "anything"),
        ops.get(LIST),
        ops.delete(ADD),  # a wrong method: no 405 either
        ops.options(LIST),
        ops.put(f"{DELETE}/", {}, format="json"),
    ]
    for response in answers:
        assert response.status_code == 404
        assert response.content == unknown.content
        assert response.get("Allow") is None
        assert response["Content-Type"] == unknown["Content-Type"]
    assert User.objects.count() == 1


def test_without_an_admin_key_configured_a_staff_key_still_works(ops, no_admin_key, staff):
    _, staff_key = api_key_create(user=staff)
    made = add(ops, staff_key)
    assert made.status_code == 200
    assert listing(ops, staff_key).status_code == 200
    assert delete(ops, staff_key, made.json()["user_id"]).status_code == 200


def test_a_wrong_method_is_a_405_when_they_are_on(ops, admin_key):
    response = ops.get(ADD)
    assert response.status_code == 405
    assert "POST" in response["Allow"]


# --- rate limit on failures -----------------------------------------------------------------------


@pytest.fixture
def three_failures(settings) -> int:
    """A limit of 3 failures a minute; the test that uses it starts early enough in a minute to stay in it
    (the failures are counted in whole-minute windows)."""
    settings.CHATAPI_ADMIN_MAX_FAILURES = 3
    if 60 - time.time() % 60 < 10:
        time.sleep(60 - time.time() % 60)
    return 3


def test_past_the_failures_a_minute_even_the_right_key_gets_429(ops, admin_key, three_failures):
    for _ in range(three_failures):
        assert add(ops, "wrong").status_code == 401

    refused = [add(ops, "wrong"), add(ops, admin_key), listing(ops, admin_key)]

    for response in refused:
        assert response.status_code == 429
        assert 1 <= int(response["Retry-After"]) <= 60
        assert "Too many failed admin_key attempts" in response.json()["error"]
    assert User.objects.count() == 0
    # Counted per address, whichever client object: another address is not held back.
    again = APIClient(REMOTE_ADDR=ops.defaults["REMOTE_ADDR"])
    assert add(again, admin_key).status_code == 429
    assert add(APIClient(REMOTE_ADDR=address()), admin_key).status_code == 200


def test_successes_do_not_count_toward_the_limit(ops, admin_key, three_failures):
    for _ in range(three_failures * 3):
        assert listing(ops, admin_key).status_code == 200
    for _ in range(three_failures - 1):
        assert listing(ops, "wrong").status_code == 401
    assert listing(ops, admin_key).status_code == 200
    assert listing(ops, "wrong").status_code == 401
    assert listing(ops, admin_key).status_code == 429


def test_while_off_a_client_past_the_limit_still_gets_404(ops, no_admin_key, staff, three_failures):
    _, staff_key = api_key_create(user=staff)
    for _ in range(three_failures):
        assert add(ops, "guess").status_code == 404
    response = add(ops, staff_key)  # not even checked: the guesses must stop
    assert response.status_code == 404
    assert add(APIClient(REMOTE_ADDR=address()), staff_key).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_guesses_cannot_slip_past_the_limit(live_url, admin_key, three_failures):
    """Counted before the key is checked, in one atomic step: of many guesses at once, exactly the limit get
    to be checked."""
    # Through a proxy uvicorn trusts (itself on loopback): the client's address is the forwarded one.
    forwarded = {"X-Forwarded-For": address()}

    def guess(_: int) -> requests.Response:
        return requests.post(f"{live_url}{ADD}", json={"admin_key": "guess"}, headers=forwarded, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(guess, range(12)))
    statuses = sorted(response.status_code for response in answers)
    assert statuses == [401] * three_failures + [429] * (12 - three_failures)
    other = requests.post(
        f"{live_url}{ADD}", json={"admin_key": admin_key}, headers={"X-Forwarded-For": address()}, timeout=30
    )
    assert other.status_code == 200


# --- logging ------------------------------------------------------------------------------------


def test_every_use_is_logged_with_who_what_and_where_never_the_key(ops, admin_key, staff, caplog):
    _, staff_key = api_key_create(user=staff)
    caplog.set_level(logging.INFO)

    made = add(ops, admin_key).json()
    listing(ops, staff_key)
    delete(ops, admin_key, made["user_id"])
    listing(ops, "wrong-" + admin_key)
    add(ops, "")

    lines = [r for r in caplog.records if r.name == "chatapi.operator"]
    messages = [r.getMessage() for r in lines]
    where = ops.defaults["REMOTE_ADDR"]
    assert len(messages) == 5, messages
    assert all(where in message for message in messages)
    assert "admin key (CHATAPI_ADMIN_KEY)" in messages[0] and f"added user {made['user_id']}" in messages[0]
    assert "POST /admin/users/add -> 200" in messages[0]
    assert "staff user root" in messages[1] and "GET /admin/users -> 200" in messages[1]
    assert f"deleted user {made['user_id']}" in messages[2] and "1 key(s) revoked" in messages[2]
    assert "refused" in messages[3] and "-> 401" in messages[3] and "1 of 10 failures" in messages[3]
    assert [r.levelname for r in lines] == ["INFO", "INFO", "INFO", "WARNING", "WARNING"]
    everything = caplog.text + "".join(messages)
    for secret in (admin_key, staff_key, made["token"]):
        assert secret not in everything
        assert secret[-20:] not in everything


def test_the_access_log_never_shows_the_admin_key():
    """uvicorn's access lines hold the path with its query; the filter the app installs takes the key out."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/admin/users?x=1&admin_key={ADMIN_KEY}&y=2", "1.1", 200),
        None,
    )
    assert logging.getLogger("uvicorn.access").filter(record)
    line = record.getMessage()
    assert ADMIN_KEY not in line
    assert "/admin/users?x=1&admin_key=[redacted]&y=2" in line


# --- the Django admin beside them -------------------------------------------------------------------


def test_the_django_admin_still_works(client, admin_key):
    assert client.get("/admin/login/").status_code == 200
    assert b"<form" in client.get("/admin/login/").content
    root = user_create(username="admin", is_superuser=True, password="a long enough password 123")
    client.force_login(root)
    assert client.get("/admin/").status_code == 200
    page = client.get("/admin/accounts/user/")
    assert page.status_code == 200
    assert b"admin" in page.content
    assert client.get(f"/admin/accounts/user/{root.pk}/change/").status_code == 200
    assert client.get("/admin/accounts/apikey/add/").status_code == 200


def test_the_endpoints_are_not_in_the_public_schema(client):
    paths = client.get("/api/schema/?format=json").json()["paths"]
    assert not [path for path in paths if path.startswith("/admin")]
