"""The Django admin: users with their keys, keys shown once and revoked (never deleted), conversations read-only."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey, User
from accounts.services import api_key_create, api_key_revoke, user_create
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db

KEY_RE = re.compile(r"ck_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def status_with(key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client.get("/api/keys").status_code


def keys_in(response) -> list[str]:
    return KEY_RE.findall(response.content.decode())


def conversation_with_messages(owner: User, title: str) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title=title, model="echo")
    question = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=f"Tell me of {title}")
    answer = Message.objects.create(
        conversation=conversation,
        parent=question,
        role=Message.Role.ASSISTANT,
        content=f"All about {title}. " + "blah " * 100,
        model="echo",
        finish_details=Message.Finish.STOP,
        prompt_tokens=3,
        completion_tokens=5,
        total_tokens=8,
    )
    conversation.current_node = answer
    conversation.save()
    return conversation


# --- users ---------------------------------------------------------------------------------


def test_user_changelist_shows_active_key_counts(admin, user, other_user):
    api_key_create(user=user)
    api_key_create(user=user)
    revoked, _ = api_key_create(user=user)
    api_key_revoke(api_key=revoked)

    response = admin.get("/admin/accounts/user/")

    assert response.status_code == 200
    users = {u.username: u for u in response.context["cl"].result_list}
    assert users["alice"].active_key_count == 2
    assert users["bob"].active_key_count == 0
    assert "Alice Liddell" in response.content.decode()


def test_user_changelist_queries_do_not_grow_with_users(admin, user):
    api_key_create(user=user)
    with CaptureQueriesContext(connection) as few:
        assert admin.get("/admin/accounts/user/").status_code == 200
    for i in range(5):
        api_key_create(user=user_create(username=f"user{i}"))
    with CaptureQueriesContext(connection) as many:
        assert admin.get("/admin/accounts/user/").status_code == 200
    assert len(many) == len(few)


def test_user_change_page_shows_the_keys_read_only(admin, user):
    api_key, raw = api_key_create(user=user, name="laptop")

    response = admin.get(f"/admin/accounts/user/{user.pk}/change/")

    assert response.status_code == 200
    page = response.content.decode()
    assert api_key.prefix in page and "laptop" in page
    assert raw not in page and api_key.digest not in page
    assert 'name="api_keys-0-name"' not in page  # no editable key fields
    assert 'name="api_keys-0-DELETE"' not in page
    [inline] = response.context["inline_admin_formsets"]
    assert inline.has_view_permission
    assert not (inline.has_add_permission or inline.has_change_permission or inline.has_delete_permission)


def test_user_change_page_still_saves_with_the_read_only_key_inline(admin, user):
    api_key_create(user=user, name="laptop")
    data = {
        "username": "alice",
        "email": "alice@new.example.com",
        "first_name": "Alice",
        "last_name": "Liddell",
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "api_keys-TOTAL_FORMS": "1",
        "api_keys-INITIAL_FORMS": "1",
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "1000",
        "api_keys-0-id": str(APIKey.objects.get().pk),
        "api_keys-0-user": str(user.pk),
    }
    response = admin.post(f"/admin/accounts/user/{user.pk}/change/", data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    user.refresh_from_db()
    assert user.email == "alice@new.example.com"
    assert APIKey.objects.get().name == "laptop"


def test_create_api_key_action_shows_each_key_once_and_the_keys_work(admin, user, other_user):
    response = admin.post(
        "/admin/accounts/user/",
        {"action": "create_api_key", ACTION_CHECKBOX_NAME: [user.pk, other_user.pk]},
        follow=True,
    )

    assert response.status_code == 200
    shown = keys_in(response)
    assert len(shown) == 2
    assert "it will not be shown again" in response.content.decode()
    assert {APIKey.objects.get(lookup_id=key.split("_")[1]).user for key in shown} == {user, other_user}
    assert all(status_with(key) == 200 for key in shown)

    again = admin.get("/admin/accounts/user/")
    assert keys_in(again) == []


# --- API keys ------------------------------------------------------------------------------


def test_api_key_add_form_creates_a_key_through_the_service_and_shows_it_once(admin, user):
    form = admin.get("/admin/accounts/apikey/add/")
    assert form.status_code == 200
    assert 'name="expires_in_days"' in form.content.decode()

    response = admin.post(
        "/admin/accounts/apikey/add/", {"user": user.pk, "name": "from admin", "expires_in_days": "10"}, follow=True
    )

    assert response.status_code == 200
    [raw] = keys_in(response)
    api_key = APIKey.objects.get(user=user)
    assert raw.startswith(api_key.prefix + "_")
    assert api_key.name == "from admin" and api_key.expires_at is not None
    assert status_with(raw) == 200
    assert keys_in(admin.get("/admin/accounts/apikey/")) == []
    assert keys_in(admin.get(f"/admin/accounts/apikey/{api_key.pk}/change/")) == []


def test_api_key_add_form_validates_expiry(admin, user):
    response = admin.post("/admin/accounts/apikey/add/", {"user": user.pk, "name": "x", "expires_in_days": "0"})

    assert response.status_code == 200  # the form again, with its errors
    assert "expires_in_days" in response.context["adminform"].form.errors
    assert not APIKey.objects.exists()


def test_api_key_changelist_and_search(admin, user, other_user):
    mine, _ = api_key_create(user=user, name="laptop")
    theirs, _ = api_key_create(user=other_user, name="phone")

    for query, expected in [("alice", mine), ("bob@example.com", theirs), ("phone", theirs), (mine.lookup_id, mine)]:
        response = admin.get("/admin/accounts/apikey/", {"q": query})
        assert response.status_code == 200
        assert list(response.context["cl"].result_list) == [expected]


def test_api_key_changelist_filters_by_status(admin, user):
    active, _ = api_key_create(user=user, expires_in_days=5)
    revoked, _ = api_key_create(user=user)
    api_key_revoke(api_key=revoked)
    expired, _ = api_key_create(user=user, expires_in_days=1)
    APIKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - dt.timedelta(minutes=1))

    for status, expected in [("active", active), ("revoked", revoked), ("expired", expired)]:
        response = admin.get("/admin/accounts/apikey/", {"status": status})
        assert response.status_code == 200
        assert list(response.context["cl"].result_list) == [expected]
        assert f">{status}<" in response.content.decode()  # the status column


def test_api_key_change_page_edits_only_the_limits(admin, user):
    api_key, _ = api_key_create(user=user, name="laptop")

    response = admin.get(f"/admin/accounts/apikey/{api_key.pk}/change/")

    assert response.status_code == 200
    page = response.content.decode()
    assert api_key.prefix in page and "active" in page
    assert api_key.digest not in page
    assert 'name="name"' not in page and 'name="rpm"' in page and 'name="budget_period"' in page
    data = {"name": "renamed", "rpm": "5", "tpm": "", "max_parallel": "2", "budget_tokens": "", "budget_period": ""}
    assert admin.post(f"/admin/accounts/apikey/{api_key.pk}/change/", data).status_code == 302
    api_key.refresh_from_db()
    assert (api_key.name, api_key.rpm, api_key.max_parallel, api_key.tpm) == ("laptop", 5, 2, None)


def test_a_changed_budget_without_its_period_is_a_form_error(admin, user):
    api_key, _ = api_key_create(user=user, limits={"budget_tokens": 1000, "budget_period": "day"})

    data = {"rpm": "", "tpm": "", "max_parallel": "", "budget_tokens": "1000", "budget_period": ""}
    response = admin.post(f"/admin/accounts/apikey/{api_key.pk}/change/", data)

    assert response.status_code == 200  # the form again, with the error, not a 500
    assert "A token budget needs a budget period." in response.content.decode()
    api_key.refresh_from_db()
    assert (api_key.budget_tokens, api_key.budget_period) == (1000, "day")


def test_api_keys_cannot_be_deleted(admin, user):
    api_key, _ = api_key_create(user=user)

    assert admin.post(f"/admin/accounts/apikey/{api_key.pk}/delete/", {"post": "yes"}).status_code == 403
    changelist = admin.get("/admin/accounts/apikey/")
    assert "delete_selected" not in changelist.content.decode()
    assert APIKey.objects.filter(pk=api_key.pk).exists()


def test_revoke_action_revokes_the_selected_keys(admin, user):
    first, first_raw = api_key_create(user=user)
    second, second_raw = api_key_create(user=user)
    kept, kept_raw = api_key_create(user=user)

    response = admin.post(
        "/admin/accounts/apikey/", {"action": "revoke", ACTION_CHECKBOX_NAME: [first.pk, second.pk]}, follow=True
    )

    assert response.status_code == 200
    assert "Revoked 2 API keys" in response.content.decode()
    assert status_with(first_raw) == 401 and status_with(second_raw) == 401
    assert status_with(kept_raw) == 200
    assert set(APIKey.objects.filter(revoked_at__isnull=False)) == {first, second}


# --- conversations -------------------------------------------------------------------------


def test_conversation_changelist_and_search_by_title_and_owner(admin, user, other_user):
    paris = conversation_with_messages(user, "Trip to Paris")
    rome = conversation_with_messages(other_user, "Trip to Rome")

    everything = admin.get("/admin/conversations/conversation/")
    assert everything.status_code == 200
    counts = {c.title: c.message_count for c in everything.context["cl"].result_list}
    assert counts == {"Trip to Paris": 2, "Trip to Rome": 2}

    for query, expected in [("Paris", paris), ("bob", rome), ("alice@example.com", paris)]:
        response = admin.get("/admin/conversations/conversation/", {"q": query})
        assert response.status_code == 200
        assert list(response.context["cl"].result_list) == [expected]


def test_conversation_changelist_queries_do_not_grow_with_conversations(admin, user, other_user):
    conversation_with_messages(user, "one")
    with CaptureQueriesContext(connection) as few:
        assert admin.get("/admin/conversations/conversation/").status_code == 200
    for i in range(5):
        conversation_with_messages(other_user if i % 2 else user, f"more {i}")
    with CaptureQueriesContext(connection) as many:
        assert admin.get("/admin/conversations/conversation/").status_code == 200
    assert len(many) == len(few)


def test_conversation_page_shows_its_messages_read_only(admin, user):
    conversation = conversation_with_messages(user, "Trip to Paris")

    response = admin.get(f"/admin/conversations/conversation/{conversation.pk}/change/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Tell me of Trip to Paris" in page and "All about Trip to Paris" in page
    assert "3 / 5 / 8" in page
    assert "<textarea" not in page and 'name="_save"' not in page
    assert 'name="messages-0-content"' not in page
    [inline] = response.context["inline_admin_formsets"]
    assert not (inline.has_add_permission or inline.has_change_permission or inline.has_delete_permission)
    response = admin.post(f"/admin/conversations/conversation/{conversation.pk}/change/", {"title": "changed"})
    assert response.status_code == 403
    assert admin.get("/admin/conversations/conversation/add/").status_code == 403


def test_deleting_a_conversation_deletes_its_messages(admin, user):
    doomed = conversation_with_messages(user, "doomed")
    kept = conversation_with_messages(user, "kept")

    confirm = admin.get(f"/admin/conversations/conversation/{doomed.pk}/delete/")
    assert confirm.status_code == 200
    response = admin.post(f"/admin/conversations/conversation/{doomed.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Conversation.objects.filter(pk=doomed.pk).exists()
    assert not Message.objects.filter(conversation_id=doomed.pk).exists()
    assert Message.objects.filter(conversation=kept).count() == 2


def test_token_usage_is_shown_per_key_and_per_user(admin, user, backend):
    first, first_raw = api_key_create(user=user, name="one")
    second, second_raw = api_key_create(user=user, name="two")
    for raw in (first_raw, second_raw):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert client.post("/conversations/new", {"prompt": "count my tokens"}, format="json").status_code == 201
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.request_count == second.request_count == 1
    assert first.total_tokens > 0
    users = admin.get("/admin/accounts/user/").content.decode()
    assert f'<td class="field-tokens_used">{first.total_tokens + second.total_tokens}</td>' in users
    keys = admin.get("/admin/accounts/apikey/").content.decode()
    assert f'<td class="field-total_tokens">{first.total_tokens}</td>' in keys
