"""Pinning, archiving, tags, folders, the list's filters, and bulk actions (all or nothing)."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations.models import Conversation, ConversationTag, Folder

pytestmark = pytest.mark.django_db


def make(api, title="chat", **fields):
    response = api.post("/conversations", {"title": title, **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def ids(response):
    assert response.status_code == 200, response.content
    return [c["id"] for c in response.json()]


def test_new_conversation_has_the_organising_fields(api):
    body = make(api)
    assert body["pinned"] is False and body["archived"] is False
    assert body["tags"] == [] and body["folder_id"] is None
    listed = api.get("/conversations").json()[0]
    assert (listed["pinned"], listed["archived"], listed["tags"], listed["folder_id"]) == (False, False, [], None)


def test_patch_pins_archives_and_tags(api):
    cid = make(api)["id"]
    body = api.patch(
        f"/conversations/{cid}", {"pinned": True, "archived": "true", "tags": ["b", " a ", "b"]}, format="json"
    ).json()
    assert body["pinned"] is True and body["archived"] is True
    assert body["tags"] == ["a", "b"]
    body = api.patch(f"/conversations/{cid}", {"tags": ["c"]}, format="json").json()
    assert body["tags"] == ["c"]
    assert list(ConversationTag.objects.values_list("name", flat=True)) == ["c"]


@pytest.mark.parametrize(
    "body",
    [
        {"pinned": "yes"},
        {"archived": 1},
        {"tags": "work"},
        {"tags": [1]},
        {"tags": ["x" * 65]},
        {"tags": [f"t{i}" for i in range(33)]},
        {"folder_id": "nope"},
        {"folder_id": str(uuid.uuid4())},
    ],
)
def test_bad_organising_fields_are_400(api, body):
    cid = make(api)["id"]
    response = api.patch(f"/conversations/{cid}", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == next(iter(body))


def test_list_filters_and_pinned_first(api):
    old_pinned = make(api, "old pinned")["id"]
    plain = make(api, "plain")["id"]
    archived = make(api, "archived")["id"]
    tagged = make(api, "tagged")["id"]
    api.patch(f"/conversations/{old_pinned}", {"pinned": True}, format="json")
    api.patch(f"/conversations/{archived}", {"archived": True}, format="json")
    api.patch(f"/conversations/{tagged}", {"tags": ["work", "urgent"]}, format="json")
    folder = api.post("/folders", {"name": "Projects"}, format="json").json()["id"]
    api.patch(f"/conversations/{plain}", {"folder_id": folder}, format="json")

    assert ids(api.get("/conversations")) == [old_pinned, tagged, plain]
    assert ids(api.get("/conversations", {"archived": "true"})) == [archived]
    assert ids(api.get("/conversations", {"archived": "all"})) == [old_pinned, tagged, archived, plain]
    assert ids(api.get("/conversations", {"pinned": "true"})) == [old_pinned]
    assert ids(api.get("/conversations", {"tag": "work"})) == [tagged]
    assert ids(api.get("/conversations", {"folder_id": folder})) == [plain]
    assert ids(api.get("/conversations", {"order": "title"})) == [old_pinned, plain, tagged]
    response = api.get("/conversations", {"tag": "work", "limit": 1})
    assert response["X-Total-Count"] == "1"
    assert api.get("/conversations", {"archived": "maybe"}).status_code == 400


def test_list_with_filters_costs_a_constant_number_of_queries(api, user, django_assert_num_queries):
    for i in range(3):
        chat = make(api, f"chat {i}")["id"]
        api.patch(f"/conversations/{chat}", {"tags": ["work", f"t{i}"], "pinned": i == 0}, format="json")
    api.get("/conversations")

    def count(params):
        with CaptureQueriesContext(connection) as queries:
            assert api.get("/conversations", params).status_code == 200
        return len(queries)

    few = count({"tag": "work", "archived": "all", "pinned": "false"})
    for i in range(20):
        chat = make(api, f"more {i}")["id"]
        api.patch(f"/conversations/{chat}", {"tags": ["work"]}, format="json")
    assert count({"tag": "work", "archived": "all", "pinned": "false"}) == few
    # Authentication, count, page, and the page's tags.
    with django_assert_num_queries(few):
        api.get("/conversations", {"tag": "work", "limit": 100})


def test_folders_crud_and_their_system_prompt(api):
    response = api.post("/folders", {"name": " Work ", "system_prompt": "Be brief."}, format="json")
    assert response.status_code == 201
    folder = response.json()
    assert folder["name"] == "Work" and folder["system_prompt"] == "Be brief."
    assert [f["id"] for f in api.get("/folders").json()] == [folder["id"]]

    made = make(api, folder_id=folder["id"])
    assert made["folder_id"] == folder["id"] and made["system_prompt"] == "Be brief."
    own = make(api, folder_id=folder["id"], system_prompt="Mine.")
    assert own["system_prompt"] == "Mine."
    started = api.post("/conversations/new", {"prompt": "hi", "folder_id": folder["id"]}, format="json")
    assert started.status_code == 201
    assert Conversation.objects.get(pk=started.json()["response"]["conversation_id"]).system_prompt == "Be brief."

    renamed = api.patch(f"/folders/{folder['id']}", {"name": "Jobs"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["name"] == "Jobs"
    assert api.get(f"/folders/{folder['id']}").json()["name"] == "Jobs"

    assert api.delete(f"/folders/{folder['id']}").status_code == 204
    assert not Folder.objects.exists()
    assert api.get(f"/conversations/{made['id']}").json()["folder_id"] is None
    assert len(api.get("/conversations").json()) == 3


def test_folders_are_private(api, other_api):
    folder = api.post("/folders", {"name": "Mine"}, format="json").json()["id"]
    assert other_api.get("/folders").json() == []
    assert other_api.get(f"/folders/{folder}").status_code == 404
    assert other_api.patch(f"/folders/{folder}", {"name": "x"}, format="json").status_code == 404
    assert other_api.delete(f"/folders/{folder}").status_code == 404
    response = other_api.post("/conversations", {"folder_id": folder}, format="json")
    assert response.status_code == 400 and response.json()["error"]["param"] == "folder_id"
    assert api.post("/folders", {"name": "  "}, format="json").status_code == 400
    assert api.get("/folders/not-a-uuid").status_code == 404


@pytest.mark.parametrize(
    ("action", "extra", "check"),
    [
        ("archive", {}, lambda c: c.archived),
        ("pin", {}, lambda c: c.pinned),
        ("tag", {"tag": "later"}, lambda c: list(c.tag_links.values_list("name", flat=True)) == ["later"]),
    ],
)
def test_bulk_actions(api, action, extra, check):
    chats = [make(api, f"c{i}")["id"] for i in range(3)]
    response = api.post("/conversations/bulk", {"ids": chats[:2], "action": action, **extra}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"affected": 2}
    assert [check(Conversation.objects.get(pk=c)) for c in chats] == [True, True, False]


def test_bulk_undo_move_and_delete(api):
    chats = [make(api, f"c{i}")["id"] for i in range(3)]
    folder = api.post("/folders", {"name": "F"}, format="json").json()["id"]
    for action, extra in [
        ("pin", {}),
        ("unpin", {}),
        ("archive", {}),
        ("unarchive", {}),
        ("tag", {"tag": "x"}),
        ("tag", {"tag": "x"}),  # again: no harm
        ("untag", {"tag": "x"}),
        ("move", {"folder_id": folder}),
    ]:
        response = api.post("/conversations/bulk", {"ids": chats, "action": action, **extra}, format="json")
        assert response.status_code == 200, (action, response.content)
    assert set(Conversation.objects.values_list("folder_id", flat=True)) == {uuid.UUID(folder)}
    assert not Conversation.objects.filter(pinned=True).exists() and not ConversationTag.objects.exists()
    api.post("/conversations/bulk", {"ids": chats, "action": "move", "folder_id": None}, format="json")
    assert set(Conversation.objects.values_list("folder_id", flat=True)) == {None}
    response = api.post("/conversations/bulk", {"ids": [*chats, chats[0]], "action": "delete"}, format="json")
    assert response.json() == {"affected": 3}
    assert not Conversation.objects.exists()


def test_bulk_is_all_or_nothing(api, other_api):
    mine = [make(api, f"c{i}")["id"] for i in range(2)]
    theirs = make(other_api)["id"]
    unknown = str(uuid.uuid4())
    response = api.post("/conversations/bulk", {"ids": [*mine, theirs, unknown], "action": "delete"}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "ids" and sorted(error["details"]["ids"]) == sorted([theirs, unknown])
    assert Conversation.objects.count() == 3


@pytest.mark.parametrize(
    "body",
    [
        {"ids": [], "action": "pin"},
        {"ids": ["nope"], "action": "pin"},
        {"ids": "x", "action": "pin"},
        {"action": "pin"},
        {"ids": [str(uuid.uuid4())], "action": "explode"},
        {"ids": [str(uuid.uuid4())], "action": "tag"},
        {"ids": [str(uuid.uuid4())], "action": "move"},
        {"ids": [str(uuid.uuid4())], "action": "move", "folder_id": str(uuid.uuid4())},
    ],
)
def test_bad_bulk_requests_are_400(api, body):
    response = api.post("/conversations/bulk", body, format="json")
    assert response.status_code == 400, response.content


def test_admin_lists_filters_and_archives(api, user, db):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
    from django.test import Client

    from accounts.services import user_create

    chat = make(api, "admin me")["id"]
    api.patch(f"/conversations/{chat}", {"tags": ["work"], "pinned": True}, format="json")
    folder = api.post("/folders", {"name": "Admin folder"}, format="json").json()["id"]
    admin = Client()
    admin.force_login(user_create(username="root", email="root@example.com", is_superuser=True))

    page = admin.get("/admin/conversations/conversation/", {"archived__exact": "0", "pinned__exact": "1"})
    assert page.status_code == 200 and "admin me" in page.content.decode() and "work" in page.content.decode()
    response = admin.post(
        "/admin/conversations/conversation/", {"action": "archive", ACTION_CHECKBOX_NAME: [chat]}, follow=True
    )
    assert response.status_code == 200
    assert Conversation.objects.get(pk=chat).archived
    assert admin.get(f"/admin/conversations/conversation/{chat}/change/").status_code == 200
    assert "Admin folder" in admin.get("/admin/conversations/folder/").content.decode()
    assert admin.get(f"/admin/conversations/folder/{folder}/change/").status_code == 200
