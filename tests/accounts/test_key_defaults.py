"""A user's defaults for their new keys: set in the admin or with set_key_defaults, taken by every way a key is
made (the admin, create_api_key, POST /api/keys), each falling back to the server's CHATAPI_DEFAULT_*."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.models import APIKey, User
from accounts.services import api_key_create, user_create
from tests.accounts.test_admin import keys_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def server_defaults(settings) -> None:
    settings.CHATAPI_DEFAULT_RPM = 100
    settings.CHATAPI_DEFAULT_TPM = 50_000
    settings.CHATAPI_DEFAULT_MAX_PARALLEL = 0
    settings.CHATAPI_DEFAULT_BUDGET_TOKENS = 0
    settings.CHATAPI_DEFAULT_BUDGET_PERIOD = "month"


def limits_of(api_key: APIKey) -> tuple:
    return (api_key.rpm, api_key.tpm, api_key.max_parallel, api_key.budget_tokens, api_key.budget_period)


def user_form(user: User, **defaults: str) -> dict[str, str]:
    return {
        "username": user.username,
        "email": user.email,
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "1000",
        **{f"key_{field}": value for field, value in defaults.items()},
    }


def test_defaults_set_in_the_admin_are_what_every_new_key_of_the_user_starts_with(admin, user, server_defaults):
    page = admin.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    assert 'name="key_rpm"' in page and 'name="key_budget_period"' in page
    form = user_form(user, rpm="10", tpm="", max_parallel="0", budget_tokens="5000", budget_period="day")
    assert admin.post(f"/admin/accounts/user/{user.pk}/change/", form).status_code == 302
    # rpm the user's, tpm the server's (left empty), max_parallel none, the user's budget.
    expected = (10, 50_000, None, 5000, "day")

    added = admin.post("/admin/accounts/apikey/add/", {"user": user.pk, "name": "admin-made"}, follow=True)
    [raw] = keys_in(added)
    assert limits_of(APIKey.objects.get(name="admin-made")) == expected

    call_command("create_api_key", "alice", "--name", "command-made", "--tpm", "70")
    assert limits_of(APIKey.objects.get(name="command-made")) == (10, 70, None, 5000, "day")

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    made = api.post("/api/keys", {"name": "api-made"}, format="json")
    assert made.status_code == 201, made.json()
    assert made.json()["limits"] == {
        "rpm": 10,
        "tpm": 50_000,
        "max_parallel": None,
        "budget_tokens": 5000,
        "budget_period": "day",
    }
    assert made.json()["tightened"] == []

    # Another user's keys still start with the server's defaults.
    other, _ = api_key_create(user=user_create(username="bob"))
    assert limits_of(other) == (100, 50_000, None, None, "")


def test_a_default_looser_than_the_makers_key_is_tightened_to_it_and_said(user, server_defaults):
    user.key_rpm, user.key_max_parallel = 500, 4
    user.save()
    _, raw = api_key_create(user=user, limits={"rpm": 20, "max_parallel": 8, "budget_tokens": 900})
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    made = api.post("/api/keys", {}, format="json").json()

    assert made["limits"] == {
        "rpm": 20,  # the user's 500, lowered to the maker's
        "tpm": 50_000,
        "max_parallel": 4,  # the user's, already tighter
        "budget_tokens": 900,
        "budget_period": "month",
    }
    assert made["tightened"] == ["rpm", "budget_tokens", "budget_period"]
    # Given explicitly, a looser limit is still refused, whatever the defaults.
    assert api.post("/api/keys", {"rpm": 21}, format="json").json()["error"]["param"] == "rpm"


def test_the_admin_refuses_a_default_the_column_cannot_hold(admin, user):
    form = user_form(user, rpm=str(10**30), tpm="", max_parallel="", budget_tokens="", budget_period="")
    response = admin.post(f"/admin/accounts/user/{user.pk}/change/", form)

    assert response.status_code == 200  # the form again, with its error
    assert "key_rpm" in response.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.key_rpm is None


def test_set_key_defaults_sets_clears_and_goes_back_to_the_servers(user, server_defaults, capsys):
    call_command("set_key_defaults", "alice", "--rpm", "0", "--max-parallel", "3", "--budget-tokens", "100")
    out = capsys.readouterr().out
    assert (
        out.strip()
        == "New keys of 'alice' start with: tpm=50000, max_parallel=3, budget_tokens=100, budget_period=month."
    )
    user.refresh_from_db()
    assert (user.key_rpm, user.key_max_parallel, user.key_budget_tokens) == (0, 3, 100)
    # 0 is "no limit", not "the server's default": the key has no rpm although the server's default is 100.
    assert limits_of(api_key_create(user=user)[0]) == (None, 50_000, 3, 100, "month")

    call_command("set_key_defaults", str(user.pk), "--server-defaults", "--tpm", "7")

    assert capsys.readouterr().out.strip() == "New keys of 'alice' start with: rpm=100, tpm=7."
    user.refresh_from_db()
    assert limits_of(api_key_create(user=user)[0]) == (100, 7, None, None, "")
    with pytest.raises(CommandError, match="No user"):
        call_command("set_key_defaults", "nobody", "--rpm", "1")
    with pytest.raises(CommandError, match="argument --tpm"):
        call_command("set_key_defaults", "alice", "--tpm", str(2**31))
