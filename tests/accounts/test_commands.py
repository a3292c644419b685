"""Management commands for users and keys, run through call_command with captured output."""

from __future__ import annotations

import datetime as dt
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey, User
from accounts.services import api_key_create, api_key_revoke, user_create

pytestmark = pytest.mark.django_db

KEY_RE = re.compile(r"ck_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def run(*args: str, **options) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def status_with(key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client.get("/api/keys").status_code


# --- create_user ---------------------------------------------------------------------------


def test_create_user_prints_its_id_and_has_no_usable_password_by_default(monkeypatch):
    monkeypatch.delenv("CHATAPI_NEW_USER_PASSWORD", raising=False)
    out, _ = run("create_user", "carol", "--email", "carol@example.com", "--first-name", "Carol", "--last-name", "Ann")

    user = User.objects.get(username="carol")
    assert out.count("\n") == 1 and f"id {user.pk}" in out and "carol" in out
    assert (user.email, user.first_name, user.last_name) == ("carol@example.com", "Carol", "Ann")
    assert not user.is_staff and not user.is_superuser
    assert not user.has_usable_password()


def test_create_user_with_staff_and_password():
    run("create_user", "dave", "--staff", "--password", "correct horse battery staple")

    user = User.objects.get(username="dave")
    assert user.is_staff and not user.is_superuser
    assert user.check_password("correct horse battery staple")


def test_create_user_reads_the_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("CHATAPI_NEW_USER_PASSWORD", "from the environment")
    run("create_user", "erin")

    assert User.objects.get(username="erin").check_password("from the environment")


def test_create_user_superuser_is_staff_too():
    run("create_user", "root", "--superuser")

    user = User.objects.get(username="root")
    assert user.is_superuser and user.is_staff


def test_create_user_duplicate_username_is_a_command_error(user):
    with pytest.raises(CommandError, match="already exists"):
        run("create_user", "alice")
    assert User.objects.filter(username="alice").count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "username is required"),
        (["bad name!"], "username"),
        (["frank", "--email", "not-an-email"], "email"),
    ],
)
def test_create_user_invalid_input_is_a_command_error_not_a_traceback(args, message):
    with pytest.raises(CommandError, match=message):
        run("create_user", *args)
    assert not User.objects.exists()


# --- list_users ----------------------------------------------------------------------------


def test_list_users_when_there_are_none():
    out, _ = run("list_users")
    assert out == "No users.\n"


def test_list_users_shows_an_aligned_table_with_active_key_counts(user, other_user):
    staff = user_create(username="staffer", is_staff=True)
    api_key_create(user=user, name="one")
    api_key_create(user=user, name="two")
    revoked, _ = api_key_create(user=user, name="revoked")
    api_key_revoke(api_key=revoked)
    expired, _ = api_key_create(user=user, name="expired")
    APIKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    api_key_create(user=other_user, name="bob's")

    out, _ = run("list_users")

    lines = out.splitlines()
    assert lines[0].split() == ["ID", "USERNAME", "NAME", "EMAIL", "STAFF", "ACTIVE", "KEYS"]
    assert set(lines[1]) <= {"-", " "}
    rows = {line.split()[1]: line for line in lines[2:]}
    assert rows["alice"].split() == [str(user.pk), "alice", "Alice", "Liddell", "alice@example.com", "no", "2"]
    assert rows["bob"].split() == [str(other_user.pk), "bob", "-", "bob@example.com", "no", "1"]
    assert rows["staffer"].split() == [str(staff.pk), "staffer", "-", "-", "yes", "0"]
    # Aligned: every column starts at the same offset on every line.
    email_column = lines[0].index("EMAIL")
    assert all(line[email_column - 2 : email_column] == "  " for line in lines[2:])
    assert rows["bob"][email_column:].startswith("bob@example.com")


def test_list_users_is_one_query(user, other_user, django_assert_num_queries):
    api_key_create(user=user)
    with django_assert_num_queries(1):
        run("list_users")


# --- create_api_key ------------------------------------------------------------------------


def test_create_api_key_prints_only_the_key_and_the_key_works(user):
    out, err = run("create_api_key", "alice", "--name", "laptop")

    assert KEY_RE.fullmatch(out.removesuffix("\n")) and out.endswith("\n") and out.count("\n") == 1
    assert "shown only this once" in err and out.strip() not in err
    key = APIKey.objects.get(user=user)
    assert key.name == "laptop" and key.expires_at is None
    assert out.startswith(key.prefix + "_")
    assert status_with(out.strip()) == 200


def test_create_api_key_by_user_id(user):
    out, _ = run("create_api_key", str(user.pk))
    assert APIKey.objects.get().user == user
    assert status_with(out.strip()) == 200


def test_create_api_key_with_expiry(user):
    before = timezone.now()
    run("create_api_key", "alice", "--expires-in-days", "7")

    key = APIKey.objects.get(user=user)
    assert key.expires_at is not None
    assert before + dt.timedelta(days=7) <= key.expires_at <= timezone.now() + dt.timedelta(days=7)


@pytest.mark.parametrize("days", ["0", "-3", "100000000"])
def test_create_api_key_bad_expiry_is_a_command_error(user, days):
    with pytest.raises(CommandError, match="expires_in_days"):
        run("create_api_key", "alice", "--expires-in-days", days)
    assert not APIKey.objects.exists()


def test_create_api_key_name_too_long_is_a_command_error(user):
    with pytest.raises(CommandError, match="name"):
        run("create_api_key", "alice", "--name", "x" * 101)


@pytest.mark.parametrize("ident", ["nobody", "999999", "²", "9" * 30])
def test_create_api_key_for_an_unknown_user_is_a_command_error(user, ident):
    with pytest.raises(CommandError, match="No user"):
        run("create_api_key", ident)
    assert not APIKey.objects.exists()


# --- list_api_keys -------------------------------------------------------------------------


def test_list_api_keys_when_there_are_none(user):
    out, _ = run("list_api_keys")
    assert out == "No API keys.\n"


def test_list_api_keys_shows_every_key_with_its_status(user, other_user):
    active, raw = api_key_create(user=user, name="laptop", expires_in_days=30)
    revoked, _ = api_key_create(user=user, name="old")
    api_key_revoke(api_key=revoked)
    expired, _ = api_key_create(user=other_user, name="")
    APIKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - dt.timedelta(days=1))

    out, _ = run("list_api_keys")

    lines = out.splitlines()
    assert lines[0].split() == ["ID", "USER", "NAME", "PREFIX", "CREATED", "LAST", "USED", "EXPIRES", "STATUS"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert len(rows) == 3
    assert rows[str(active.pk)].split()[1:4] == ["alice", "laptop", active.prefix]
    assert rows[str(active.pk)].split()[-1] == "active"
    assert "never" in rows[str(active.pk)]  # not used yet
    assert rows[str(revoked.pk)].split()[-1] == "revoked"
    assert rows[str(expired.pk)].split()[1:4] == ["bob", "-", expired.prefix]
    assert rows[str(expired.pk)].split()[-1] == "expired"
    assert raw not in out
    assert not any(key.digest in out for key in APIKey.objects.all())


def test_list_api_keys_for_one_user(user, other_user):
    mine, _ = api_key_create(user=user)
    theirs, _ = api_key_create(user=other_user)

    by_name, _ = run("list_api_keys", "--user", "bob")
    by_id, _ = run("list_api_keys", "--user", str(other_user.pk))

    assert by_name == by_id
    assert str(theirs.pk) in by_name and str(mine.pk) not in by_name


def test_list_api_keys_for_an_unknown_user_is_a_command_error(user):
    with pytest.raises(CommandError, match="No user"):
        run("list_api_keys", "--user", "nobody")


# --- revoke_api_key ------------------------------------------------------------------------


def test_revoke_api_key_by_id_and_the_key_then_gets_401(user):
    api_key, raw = api_key_create(user=user, name="laptop")
    assert status_with(raw) == 200

    out, _ = run("revoke_api_key", str(api_key.pk))

    assert "Revoked" in out and api_key.prefix in out
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert status_with(raw) == 401


@pytest.mark.parametrize("form", ["prefix", "lookup id", "full key"])
def test_revoke_api_key_by_prefix_lookup_id_or_full_key(user, form):
    api_key, raw = api_key_create(user=user)
    other, other_raw = api_key_create(user=user)
    ident = {"prefix": api_key.prefix, "lookup id": api_key.lookup_id, "full key": raw}[form]

    out, _ = run("revoke_api_key", ident)

    assert api_key.prefix in out and raw not in out
    assert status_with(raw) == 401
    assert status_with(other_raw) == 200  # only that key


def test_revoke_api_key_twice_keeps_the_first_revocation(user):
    api_key, _ = api_key_create(user=user)
    run("revoke_api_key", api_key.prefix)
    api_key.refresh_from_db()
    first = api_key.revoked_at

    out, _ = run("revoke_api_key", api_key.prefix)

    assert "already revoked" in out
    api_key.refresh_from_db()
    assert api_key.revoked_at == first


@pytest.mark.parametrize(
    "ident", ["ck_000000000000", "000000000000", "ck_", "", "3f1c0d5e-0000-4000-8000-000000000000"]
)
def test_revoke_api_key_unknown_is_a_command_error(user, ident):
    api_key_create(user=user)
    with pytest.raises(CommandError, match="No API key"):
        run("revoke_api_key", ident)
    assert not APIKey.objects.filter(revoked_at__isnull=False).exists()


def test_revoke_api_key_does_not_echo_an_unknown_full_key(user):
    with pytest.raises(CommandError) as excinfo:
        run("revoke_api_key", "ck_000000000000_s3cr3t-s3cr3t")
    assert "s3cr3t" not in str(excinfo.value)
