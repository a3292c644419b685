"""Export (ChatGPT's conversations.json shape, our NDJSON, Markdown) and import of history: round trips,
a realistic ChatGPT export, bad files, idempotency, streaming, and the management commands."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from accounts.services import api_key_create
from conversations import transfer
from conversations.models import Attachment, Conversation, ConversationTag, Folder, Message
from conversations.services import conversation_create, conversation_update

pytestmark = pytest.mark.django_db

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def node(key, parent, children, role=None, parts=None, t=None, **message):
    """A mapping node of ChatGPT's export (message None when role is None)."""
    if role is None:
        return {"id": key, "message": None, "parent": parent, "children": children}
    content = message.pop("content", None) or {"content_type": "text", "parts": parts}
    return {
        "id": key,
        "message": {
            "id": key,
            "author": {"role": role, "name": None, "metadata": {}},
            "create_time": None if t is None else T0 + t,
            "update_time": None,
            "content": content,
            "status": message.pop("status", "finished_successfully"),
            "end_turn": None,
            "weight": 1.0,
            "metadata": message.pop("metadata", {}),
            "recipient": message.pop("recipient", "all"),
            **message,
        },
        "parent": parent,
        "children": children,
    }


def chatgpt_conversation(cid="c-1", title="Cat names", current="a2", **extra):
    """A conversation as ChatGPT exports it: an empty root, a hidden system message, an edited prompt (two user
    siblings), a regenerated reply (two assistant siblings), a picture with a question (multimodal parts), and
    a tool call with its output between a prompt and the answer."""
    hidden = {"is_visually_hidden_from_conversation": True}
    gpt4o = {"model_slug": "gpt-4o", "finish_details": {"type": "stop"}}
    mapping = [
        node("client-created-root", None, ["sys"]),
        node("sys", "client-created-root", ["u1", "u1b"], "system", [""], metadata=hidden),
        node("u1", "sys", ["a1", "a1b"], "user", ["Suggest a name for a cat"], t=1),
        node("a1", "u1", ["u2"], "assistant", ["Whiskers"], t=2, metadata=gpt4o),
        node("a1b", "u1", [], "assistant", ["Mittens"], t=3, metadata={"model_slug": "gpt-4o"}),
        node("u2", "a1", ["a2"], "user", ["Shorter, please"], t=4),
        node("a2", "u2", ["u3"], "assistant", ["Tom"], t=5, metadata=gpt4o),
        node(
            "u3",
            "a2",
            ["call"],
            "user",
            t=6,
            content={
                "content_type": "multimodal_text",
                "parts": [{"content_type": "image_asset_pointer", "asset_pointer": "file-service://x"}, "Is it a cat?"],
            },
        ),
        node(
            "call",
            "u3",
            ["out"],
            "assistant",
            t=7,
            recipient="python",
            content={"content_type": "code", "language": "python", "text": "look()"},
        ),
        node("out", "call", ["a3"], "tool", t=8, content={"content_type": "execution_output", "text": "cat"}),
        node("a3", "out", [], "assistant", ["Yes, a cat.", "A tabby."], t=9, metadata=gpt4o),
        node("u1b", "sys", ["a1c"], "user", ["Suggest a name for a dog"], t=10),
        node("a1c", "u1b", [], "assistant", ["Rex"], t=11, status="finished_partial_completion"),
    ]
    return {
        "title": title,
        "create_time": T0,
        "update_time": T0 + 11,
        "mapping": {n["id"]: n for n in mapping},
        "moderation_results": [],
        "current_node": current,
        "plugin_ids": None,
        "conversation_id": cid,
        "conversation_template_id": None,
        "gizmo_id": None,
        "is_archived": False,
        "default_model_slug": "gpt-4o",
        "id": cid,
        **extra,
    }


def with_instructions():
    """A second conversation: a hidden system message that holds custom instructions."""
    hidden = {"is_visually_hidden_from_conversation": True}
    mapping = [
        node("r", None, ["s"]),
        node("s", "r", ["q"], "system", ["Be brief."], t=20, metadata=hidden),
        node("q", "s", ["a"], "user", ["Hi"], t=21),
        node("a", "q", [], "assistant", ["Hello."], t=22, metadata={"finish_details": {"type": "max_tokens"}}),
    ]
    return {
        "title": "Greeting",
        "create_time": T0 + 20,
        "update_time": T0 + 22,
        "mapping": {n["id"]: n for n in mapping},
        "current_node": "a",
        "conversation_id": "c-2",
        "id": "c-2",
    }


def post_import(api, body: bytes, content_type="application/json", **headers):
    return api.generic("POST", "/conversations/import", body, content_type=content_type, **headers)


def imported(response, **expected):
    assert response.status_code == 200, response.content
    body = response.json()
    for key, value in expected.items():
        assert body[key] == value, body
    return body


def tree(conversation: Conversation) -> list[tuple[Any, ...]]:
    """Every message as (role, text, time, parent's text, depth), oldest first."""
    messages = list(conversation.messages.order_by("created_at", "id"))
    by_id = {m.pk: m for m in messages}
    return [
        (m.role, m.content, m.created_at, by_id[m.parent_id].content if m.parent_id else None, m.depth)
        for m in messages
    ]


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, tz=UTC)


# --- importing ChatGPT's export -----------------------------------------------------------------------


def test_a_chatgpt_export_imports_with_its_branches_roles_times_and_current_node(api, user):
    body = json.dumps([chatgpt_conversation(), with_instructions()]).encode()
    imported(post_import(api, body), imported=2, skipped=0, errors=[])

    cats = Conversation.objects.get(owner=user, title="Cat names")
    assert (cats.source_id, cats.system_prompt, cats.created_at, cats.updated_at) == ("c-1", "", at(0), at(11))
    assert tree(cats) == [
        # The empty root, the hidden system message, the tool call and its output are left out; what hung
        # from them hangs from the nearest message above.
        ("user", "Suggest a name for a cat", at(1), None, 0),
        ("assistant", "Whiskers", at(2), "Suggest a name for a cat", 1),
        ("assistant", "Mittens", at(3), "Suggest a name for a cat", 1),
        ("user", "Shorter, please", at(4), "Whiskers", 2),
        ("assistant", "Tom", at(5), "Shorter, please", 3),
        ("user", "Is it a cat?", at(6), "Tom", 4),
        ("assistant", "Yes, a cat.\n\nA tabby.", at(9), "Is it a cat?", 5),
        ("user", "Suggest a name for a dog", at(10), None, 0),
        ("assistant", "Rex", at(11), "Suggest a name for a dog", 1),
    ]
    assert cats.current_node is not None and cats.current_node.content == "Tom"
    tom = Message.objects.get(conversation=cats, content="Tom")
    assert (tom.model, tom.status, tom.finish_details) == ("gpt-4o", "completed", "stop")
    rex = Message.objects.get(conversation=cats, content="Rex")
    assert (rex.status, rex.finish_details) == ("interrupted", "interrupted")

    greeting = Conversation.objects.get(owner=user, title="Greeting")
    assert greeting.system_prompt == "Be brief."  # the hidden system message's text
    assert [m[:2] for m in tree(greeting)] == [("user", "Hi"), ("assistant", "Hello.")]
    assert Message.objects.get(conversation=greeting, role="assistant").finish_details == "length"

    # Through the API as any conversation: the branch shown, the mapping, the list (newest first).
    shown = api.get(f"/conversations/{cats.pk}/messages").json()
    assert [m["message"] for m in shown] == ["Suggest a name for a cat", "Whiskers", "Shorter, please", "Tom"]
    assert [c["title"] for c in api.get("/conversations").json()] == ["Greeting", "Cat names"]


def test_imported_messages_get_the_fields_the_service_gives_its_own(api, user):
    imported(post_import(api, json.dumps([chatgpt_conversation()]).encode()), imported=1)
    cats = Conversation.objects.get(owner=user)
    for message in cats.messages.all():
        assert message.token_count == (len(message.content) + 3) // 4
        assert message.lease_expires_at is None
    # Found by full-text search (the database's triggers index imported rows too) …
    hits = api.get("/conversations/search", {"q": "tabby"}).json()
    assert [h["conversation_id"] for h in hits] == [str(cats.pk)]
    # … and a thread that goes on from the imported current node.
    reply = api.post(f"/conversations/{cats.pk}/ask", {"prompt": "And for a dog?"}, format="json").json()["response"]
    assert reply["status"] == "completed"
    assert [m["message"] for m in api.get(f"/conversations/{cats.pk}/messages").json()][-3:-1] == [
        "Tom",
        "And for a dog?",
    ]


def test_the_zip_of_a_chatgpt_export_imports_like_its_conversations_json(api, user):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("chat.html", "<html></html>")
        archive.writestr("conversations.json", json.dumps([chatgpt_conversation(), with_instructions()]))
        archive.writestr("user.json", "{}")
    imported(post_import(api, buffer.getvalue(), "application/zip"), imported=2, errors=[])
    assert Conversation.objects.filter(owner=user).count() == 2


def test_a_multipart_file_imports_like_a_body(api, user):
    upload = io.BytesIO(json.dumps([chatgpt_conversation()]).encode())
    upload.name = "conversations.json"
    imported(api.post("/conversations/import", {"file": upload}, format="multipart"), imported=1)
    assert Conversation.objects.get(owner=user).messages.count() == 9


def test_importing_the_same_file_again_imports_nothing(api, other_api, user, other_user):
    body = json.dumps([chatgpt_conversation(), with_instructions()]).encode()
    imported(post_import(api, body), imported=2)
    imported(post_import(api, body), imported=0, skipped=2, errors=[])
    assert Conversation.objects.filter(owner=user).count() == 2
    assert Message.objects.filter(conversation__owner=user).count() == 11
    # Another account has its own copy.
    imported(post_import(other_api, body), imported=2)


def test_an_idempotency_key_on_the_import_gives_the_first_answer_again(api, user):
    body = json.dumps([chatgpt_conversation()]).encode()
    first = post_import(api, body, HTTP_IDEMPOTENCY_KEY="import-1")
    again = post_import(api, body, HTTP_IDEMPOTENCY_KEY="import-1")
    assert first.json() == again.json() == {"imported": 1, "skipped": 0, "errors": []}
    assert again["Idempotent-Replayed"] == "true"
    other = post_import(api, json.dumps([with_instructions()]).encode(), HTTP_IDEMPOTENCY_KEY="import-1")
    assert other.status_code == 422
    assert Conversation.objects.filter(owner=user).count() == 1


# --- bad files ----------------------------------------------------------------------------------------


def bad(mutate) -> dict:
    conversation = chatgpt_conversation(cid="bad", title="Bad one")
    mutate(conversation)
    return conversation


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda c: c["mapping"]["a2"].update(parent="nowhere"), "parent nowhere is not in mapping"),
        (lambda c: c["mapping"]["client-created-root"].update(parent="a3"), "cycle"),
        (lambda c: [c["mapping"][k].update(parent=p) for k, p in (("u2", "a2"),)], "cycle"),
        (lambda c: c.update(mapping=[]), "mapping must be an object"),
        (lambda c: c["mapping"]["u2"]["message"]["author"].update(role=7), "author.role must be a string"),
        (lambda c: c["mapping"]["u2"]["message"]["content"].update(parts="text"), "parts must be a list"),
        (lambda c: c["mapping"]["u2"]["message"].update(create_time="yesterday"), "create_time is not a time"),
        (lambda c: c.update(current_node="gone"), "current_node gone is not in mapping"),
        (lambda c: c["mapping"]["u2"].update(children="a2"), "children must be a list"),
        (lambda c: c["mapping"]["u2"]["message"]["content"].update(parts=["Short\x00er"]), "NUL character"),
    ],
)
def test_a_malformed_conversation_is_reported_and_the_others_are_imported(api, user, mutate, says):
    body = json.dumps([chatgpt_conversation(), bad(mutate), with_instructions()]).encode()
    result = imported(post_import(api, body), imported=2, skipped=0)
    [error] = result["errors"]
    assert (error["index"], error["id"], error["title"]) == (1, "bad", "Bad one")
    assert says in error["message"]
    # Nothing half-made: only the two good ones and their messages.
    assert sorted(Conversation.objects.values_list("title", flat=True)) == ["Cat names", "Greeting"]
    assert Message.objects.count() == 11


def refuse_messages_saying(text: str) -> None:
    """A trigger (for this test's transaction) by which the database refuses to store a message with `text`."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""CREATE FUNCTION refuse_message() RETURNS trigger AS $$ BEGIN
                IF NEW.content = '{text}' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"""
            )
            cursor.execute(
                "CREATE TRIGGER refuse_message BEFORE INSERT ON conversations_message "
                "FOR EACH ROW EXECUTE FUNCTION refuse_message()"
            )
        else:
            cursor.execute(
                f"""CREATE TRIGGER refuse_message BEFORE INSERT ON conversations_message
                WHEN NEW.content = '{text}' BEGIN SELECT RAISE(ABORT, 'refused'); END"""
            )


def test_a_conversation_the_database_refuses_is_reported_and_leaves_nothing_behind(api, user):
    refuse_messages_saying("Refuse me")
    refused = bad(lambda c: c["mapping"]["u2"]["message"]["content"].update(parts=["Refuse me"]))
    body = json.dumps([chatgpt_conversation(), refused, with_instructions()]).encode()
    result = imported(post_import(api, body), imported=2, skipped=0)
    [error] = result["errors"]
    assert (error["index"], error["id"], error["title"]) == (1, "bad", "Bad one")
    assert "refused" in error["message"]
    # Its conversation and the messages stored before the refused one were rolled back; the next one is there.
    assert sorted(Conversation.objects.values_list("title", flat=True)) == ["Cat names", "Greeting"]
    assert Message.objects.count() == 11


@pytest.mark.parametrize("batch", [{"IMPORT_BATCH_CONVERSATIONS": 2}, {"IMPORT_BATCH_MESSAGES": 1}])
def test_an_import_committed_in_several_batches_keeps_every_conversation_once(api, user, monkeypatch, batch):
    for name, value in batch.items():
        monkeypatch.setattr(transfer, name, value)
    refuse_messages_saying("Refuse me")
    refused = bad(lambda c: c["mapping"]["u2"]["message"]["content"].update(parts=["Refuse me"]))
    conversations = [chatgpt_conversation(cid=f"c-{n}", title=f"Cats {n}") for n in range(5)]
    body = json.dumps([*conversations[:3], refused, *conversations[3:]]).encode()

    result = imported(post_import(api, body), imported=5, skipped=0)
    assert [(e["index"], e["id"]) for e in result["errors"]] == [(3, "bad")]
    assert sorted(Conversation.objects.values_list("title", flat=True)) == [f"Cats {n}" for n in range(5)]
    assert Message.objects.count() == 5 * 9
    imported(post_import(api, body), imported=0, skipped=5)


def test_conversations_that_are_not_objects_are_reported(api, user):
    result = imported(post_import(api, json.dumps([1, "two", None, chatgpt_conversation()]).encode()), imported=1)
    assert [e["index"] for e in result["errors"]] == [0, 1, 2]


def test_a_file_cut_off_midway_keeps_what_came_before_and_says_where_it_broke(api, user):
    whole = json.dumps([chatgpt_conversation(), with_instructions()])
    cut = whole[: whole.index('"Greeting"') + 5]
    result = imported(post_import(api, cut.encode()), imported=1)
    assert result["errors"][0]["index"] == 1 and "not valid JSON" in result["errors"][0]["message"]
    assert Conversation.objects.get().title == "Cat names"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"this is not json", "application/json"),
        (b"\x00\x01\x02", "application/octet-stream"),
        (b'[{"title": "cut off', "application/json"),
        (b"PK\x03\x04 not really a zip", "application/zip"),
    ],
)
def test_a_body_that_is_not_an_export_is_400(api, body, content_type):
    response = post_import(api, body, content_type)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_import"
    assert Conversation.objects.count() == 0


def test_an_empty_body_is_400(api):
    response = post_import(api, b"")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def test_a_zip_without_conversations_json_is_400(api):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("user.json", "{}")
    response = post_import(api, buffer.getvalue(), "application/zip")
    assert response.status_code == 400
    assert "no conversations.json" in response.json()["error"]["message"]


def test_a_zip_bomb_is_413_and_imports_nothing(api, settings):
    settings.CHATAPI_IMPORT_MAX_BYTES = 1_000_000
    buffer = io.BytesIO()
    padding = " " * 50_000_000  # 50 MB of whitespace after a valid conversation: a few KB compressed
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("conversations.json", json.dumps([chatgpt_conversation()]) + padding)
    assert len(buffer.getvalue()) < 200_000
    response = post_import(api, buffer.getvalue(), "application/zip")
    assert response.status_code == 413, response.content
    assert response.json()["error"]["code"] == "import_too_large"
    assert Conversation.objects.count() == 0


def test_a_body_past_the_import_limit_is_413(api, settings):
    settings.CHATAPI_IMPORT_MAX_BYTES = 10_000
    body = json.dumps([chatgpt_conversation(title="x" * 20_000)]).encode()
    response = post_import(api, body)
    assert response.status_code == 413
    assert Conversation.objects.count() == 0


def test_an_import_may_be_larger_than_the_body_limit_of_other_requests(api, user, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    conversations = [chatgpt_conversation(cid=f"c-{i}", title=f"Chat {i}") for i in range(20)]
    body = json.dumps(conversations).encode()
    assert len(body) > 10 * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    imported(post_import(api, body), imported=20)


# --- exporting --------------------------------------------------------------------------------------


def build_history(api, user) -> None:
    """Conversations made through the API, with branches, a regenerated reply, a system prompt, tags, a folder,
    a pin, an archive and a metadata pair."""
    started = api.post(
        "/conversations/new", {"prompt": "Suggest a name for a cat", "system_prompt": "Be brief."}, format="json"
    ).json()["response"]
    cid, first = started["conversation_id"], started["id"]
    api.post(f"/conversations/{cid}/ask", {"prompt": "Shorter, please"}, format="json")
    api.post(f"/conversations/{cid}/ask", {"prompt": "A dog instead", "parent_id": first}, format="json")
    api.post(f"/conversations/{cid}/messages/{first}/regenerate", {}, format="json")
    folder = api.post("/folders", {"name": "Pets", "system_prompt": "Talk about pets."}, format="json").json()
    api.patch(
        f"/conversations/{cid}",
        {"tags": ["pets", "names"], "folder_id": folder["id"], "pinned": True, "current_node": first},
        format="json",
    )
    Conversation.objects.filter(pk=cid).update(metadata={"topic": "pets"})
    other = api.post("/conversations/new", {"prompt": "Hello there", "title": "Greeting"}, format="json").json()
    api.patch(f"/conversations/{other['response']['conversation_id']}", {"archived": True}, format="json")
    conversation_create(owner=user, title="Empty")


def shape(conversations) -> list[dict]:
    """What must survive a round trip: each conversation's fields, and its tree by texts, roles and times."""
    out = []
    for conversation in sorted(conversations, key=lambda c: c.created_at):
        messages = list(conversation.messages.order_by("created_at", "id"))
        by_id = {m.pk: m for m in messages}
        nodes = [
            (m.role, m.content, m.created_at, by_id[m.parent_id].content if m.parent_id else None, m.depth, m.status)
            for m in messages
        ]
        current = by_id[conversation.current_node_id].content if conversation.current_node_id else None
        out.append(
            {
                "title": conversation.title,
                "system_prompt": conversation.system_prompt,
                "created_at": conversation.created_at,
                "updated_at": conversation.updated_at,
                "archived": conversation.archived,
                "current": current,
                "nodes": nodes,
            }
        )
    return out


def lossless(conversations) -> list[dict]:
    """And what only the NDJSON keeps."""
    out = shape(conversations)
    for item, conversation in zip(out, sorted(conversations, key=lambda c: c.created_at), strict=True):
        item.update(
            pinned=conversation.pinned,
            tags=sorted(ConversationTag.objects.filter(conversation=conversation).values_list("name", flat=True)),
            folder=(conversation.folder.name, conversation.folder.system_prompt) if conversation.folder else None,
            metadata=conversation.metadata,
            model=conversation.model,
            usage=[
                (m.prompt_tokens, m.completion_tokens, m.total_tokens, m.model, m.finish_details)
                for m in conversation.messages.order_by("created_at", "id")
            ],
        )
    return out


def export(http, path="/conversations/export", **params):
    response = http.get(f"{http.base_url}{path}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("fmt", ["chatgpt", "ndjson"])
def test_the_round_trip_keeps_conversations_trees_texts_roles_and_times(http, user, other_user, client_for, fmt):
    api = client_for(user)
    build_history(api, user)
    first = export(http, format=fmt).content

    other = client_for(other_user)
    content_type = "application/json" if fmt == "chatgpt" else "application/x-ndjson"
    imported(post_import(other, first, content_type), imported=3, skipped=0, errors=[])
    mine, theirs = Conversation.objects.filter(owner=user), Conversation.objects.filter(owner=other_user)
    assert shape(theirs) == shape(mine)
    if fmt == "ndjson":
        assert lossless(theirs) == lossless(mine)
        assert Folder.objects.get(owner=other_user).name == "Pets"

    # Exported again from the other account: the same conversations, trees, texts, roles and times.
    other_http = type(http)()
    other_http.headers["Authorization"] = f"Bearer {api_key_create(user=other_user)[1]}"
    other_http.base_url = http.base_url
    again = export(other_http, format=fmt).content
    assert normalised(again, fmt) == normalised(first, fmt)


def normalised(body: bytes, fmt: str) -> list[Any]:
    """An export with its ids replaced by the texts they stand for (ids differ from account to account)."""
    lines = body.decode().splitlines()
    conversations = json.loads(body) if fmt == "chatgpt" else [json.loads(line) for line in lines]
    out = []
    for conversation in conversations:
        mapping = conversation["mapping"]

        def label(key, mapping=mapping):
            if key is None:
                return None
            message = mapping[key]["message"]
            if fmt == "chatgpt":
                return (message["author"]["role"], message["content"]["parts"][0], message["create_time"])
            return (message["author"]["role"], message["message"], message["create_time"])

        nodes = sorted(
            (label(key), label(n["parent"]), [label(c) for c in n["children"]]) for key, n in mapping.items()
        )
        kept = {k: v for k, v in conversation.items() if k not in ("id", "conversation_id", "mapping", "folder_id")}
        kept["current_node"] = label(conversation["current_node"])
        kept.pop("source_id", None)
        out.append((kept, nodes))
    return out


def test_the_chatgpt_export_has_chatgpts_shape(http, user, client_for):
    build_history(client_for(user), user)
    response = export(http, format="chatgpt")
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="conversations-')
    conversations = response.json()
    assert [c["title"] for c in conversations] == ["Suggest a name for a cat", "Greeting", "Empty"]
    cats = conversations[0]
    assert cats["id"] == cats["conversation_id"]
    assert isinstance(cats["create_time"], float) and isinstance(cats["update_time"], float)
    root = next(n for n in cats["mapping"].values() if n["parent"] is None)
    # The system prompt is a hidden system root, as in ChatGPT's own exports.
    assert root["message"]["author"]["role"] == "system"
    assert root["message"]["metadata"]["is_visually_hidden_from_conversation"] is True
    assert root["message"]["content"] == {"content_type": "text", "parts": ["Be brief."]}
    [prompt] = [cats["mapping"][k] for k in root["children"]]
    assert prompt["message"]["content"]["parts"] == ["Suggest a name for a cat"]
    assert len(prompt["children"]) == 2  # the first reply and its regenerated sibling
    for key, n in cats["mapping"].items():
        assert n["id"] == key and n["message"]["id"] == key
        assert all(cats["mapping"][c]["parent"] == key for c in n["children"])
    assert cats["mapping"][cats["current_node"]]["message"]["author"]["role"] == "assistant"
    assert conversations[2]["mapping"] == {} and conversations[2]["current_node"] is None


def test_the_export_is_streamed_in_chunks_a_page_at_a_time(http, user, monkeypatch):
    from conversations import transfer

    monkeypatch.setattr(transfer, "PAGE_SIZE", 2)
    for i in range(7):
        conversation = conversation_create(owner=user, title=f"Chat {i}")
        Message.objects.create(conversation=conversation, role="user", content=f"Prompt {i}")
    response = http.get(f"{http.base_url}/conversations/export", params={"format": "ndjson"}, stream=True, timeout=30)
    assert response.status_code == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.headers
    chunks = [chunk for chunk in response.iter_content(chunk_size=None) if chunk]
    assert len(chunks) == 4  # pages of 2, 2, 2 and 1 conversations
    lines = b"".join(chunks).decode().splitlines()
    assert [json.loads(line)["title"] for line in lines] == [f"Chat {i}" for i in range(7)]


def test_an_empty_history_exports_as_an_empty_array(http, user):
    assert export(http).json() == []
    assert export(http, format="ndjson").content == b""


def test_the_export_holds_only_the_callers_conversations(http, user, other_user):
    conversation_create(owner=other_user, title="Not yours")
    conversation_create(owner=user, title="Yours")
    assert [c["title"] for c in export(http).json()] == ["Yours"]


def test_one_conversation_exports_in_each_format(http, user, other_user, client_for):
    api = client_for(user)
    build_history(api, user)
    cats = Conversation.objects.get(owner=user, pinned=True)
    path = f"/conversations/{cats.pk}/export"
    [one] = export(http, path).json()
    assert one["id"] == str(cats.pk) and len(one["mapping"]) == cats.messages.count() + 1  # + the system root
    [line] = export(http, path, format="ndjson").content.decode().splitlines()
    assert json.loads(line)["tags"] == ["names", "pets"]

    markdown = export(http, path, format="markdown")
    assert markdown.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert markdown.headers["Content-Disposition"].endswith('.md"')
    text = markdown.text
    assert text.startswith("# Suggest a name for a cat\n")
    assert "> Be brief." in text
    # The current branch (switched back to the first reply), not the other branches.
    assert "Suggest a name for a cat" in text and "Shorter, please" not in text and "A dog instead" not in text

    not_mine = conversation_create(owner=other_user, title="Theirs")
    response = http.get(f"{http.base_url}/conversations/{not_mine.pk}/export", timeout=30)
    assert response.status_code == 404


def test_the_ndjson_export_lists_the_files_a_reply_made(http, user, client_for):
    build_history(client_for(user), user)
    cats = Conversation.objects.get(owner=user, pinned=True)
    reply = cats.messages.filter(role=Message.Role.ASSISTANT).first()
    assert reply is not None
    made = Attachment.objects.create(
        message=reply,
        conversation=cats,
        kind="image",
        content_type="image/png",
        size=68,
        source_text="a cat",
        file="attachments/cat.png",
    )

    [line] = export(http, f"/conversations/{cats.pk}/export", format="ndjson").content.decode().splitlines()

    listed = {node["id"]: node["message"]["attachments"] for node in json.loads(line)["mapping"].values()}
    assert listed[str(reply.pk)] == [
        {"id": str(made.pk), "content_type": "image/png", "size": 68, "url": f"/attachments/{made.pk}"}
    ]
    assert sum(len(files) for files in listed.values()) == 1


@pytest.mark.parametrize("params", [{"format": "csv"}, {"format": "markdown"}])
def test_an_unknown_export_format_is_400(api, params):
    response = api.get("/conversations/export", params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "format"


# --- management commands ------------------------------------------------------------------------------


def test_the_commands_export_and_import_files(user, other_user, tmp_path, client_for):
    build_history(client_for(user), user)
    target = tmp_path / "history.ndjson"
    out, err = io.StringIO(), io.StringIO()
    call_command("export_conversations", "--user", "alice", "--format", "ndjson", "--output", str(target), stdout=out)
    assert len(target.read_text().splitlines()) == 3
    assert "3 conversations" in out.getvalue()

    call_command("import_conversations", str(target), "--user", "bob", "--progress", stdout=out, stderr=err)
    assert "imported 3, skipped 0, errors 0" in out.getvalue()
    assert "3 conversations" in err.getvalue()  # the progress line
    assert shape(Conversation.objects.filter(owner=other_user)) == shape(Conversation.objects.filter(owner=user))

    out = io.StringIO()
    call_command("import_conversations", str(target), "--user", "bob", stdout=out)
    assert "imported 0, skipped 3, errors 0" in out.getvalue()


def test_the_export_command_writes_to_stdout(user):
    conversation = conversation_create(owner=user, title="Only one")
    conversation_update(conversation=conversation, tags=["a"])
    out = io.StringIO()
    call_command("export_conversations", "--user", str(user.pk), stdout=out)
    assert [c["title"] for c in json.loads(out.getvalue())] == ["Only one"]


def test_the_import_command_reports_malformed_conversations(user, tmp_path):
    source = tmp_path / "conversations.json"
    source.write_text(json.dumps([chatgpt_conversation(), {"title": "broken", "mapping": "no"}]))
    out = io.StringIO()
    call_command("import_conversations", str(source), "--user", "alice", stdout=out)
    assert "imported 1, skipped 0, errors 1" in out.getvalue()
    assert "broken" in out.getvalue()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.json", "--user", "alice"], "No such file"),
        (["{file}", "--user", "nobody"], "No user"),
    ],
)
def test_the_import_command_refuses_bad_arguments(user, tmp_path, args, says):
    from django.core.management.base import CommandError

    source = tmp_path / "conversations.json"
    source.write_text("[]")
    with pytest.raises(CommandError, match=says):
        call_command("import_conversations", *[a.format(file=source) for a in args])


def ndjson_of(user) -> bytes:
    out = io.StringIO()
    call_command("export_conversations", "--user", user.username, "--format", "ndjson", stdout=out)
    return out.getvalue().encode()


def test_our_own_export_imported_into_the_same_account_imports_nothing(api, user, client_for):
    build_history(client_for(user), user)
    imported(post_import(api, ndjson_of(user), "application/x-ndjson"), imported=0, skipped=3, errors=[])
    assert Conversation.objects.filter(owner=user).count() == 3


def test_an_ndjson_line_that_is_not_json_is_reported_and_the_next_ones_are_imported(api, user, other_user, client_for):
    build_history(client_for(user), user)
    lines = ndjson_of(user).splitlines()
    body = b"\n".join([lines[0], b'{"title": "cut', *lines[1:]]) + b"\n"
    other = client_for(other_user)
    result = imported(post_import(other, body, "application/x-ndjson"), imported=3)
    [error] = result["errors"]
    assert error["index"] == 1 and "Line 2 is not JSON" in error["message"]
