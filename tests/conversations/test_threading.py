"""The conversation API end to end against the fake backend: asking, branching, switching, regenerating."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def new(api, prompt="Hello", **extra):
    response = api.post("/conversations/new", {"prompt": prompt, **extra}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["response"]


def ask(api, conversation_id, prompt, **extra):
    response = api.post(f"/conversations/{conversation_id}/ask", {"prompt": prompt, **extra}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["response"]


def branch(api, conversation_id, **params):
    response = api.get(f"/conversations/{conversation_id}/messages", params)
    assert response.status_code == 200, response.json()
    return response.json()


def texts(messages):
    return [m["message"] for m in messages]


def test_new_conversation_stores_prompt_and_reply_and_follows_reply_convention(api, backend):
    reply = new(api, "What is 2+2?")

    assert reply["message"] == "Reply 1 to: What is 2+2?"
    assert reply["author"]["role"] == "assistant"
    assert reply["parent_id"] == reply["id"]  # the id to continue from
    assert reply["model"] == "test-model"
    assert reply["finish_details"] == "stop"
    assert reply["end_turn"] is True
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    messages = branch(api, reply["conversation_id"])
    assert [m["id"] for m in messages] == [reply["request_id"], reply["id"]]
    assert messages[0]["author"]["role"] == "user"
    assert messages[0]["message"] == "What is 2+2?"
    assert messages[0]["parent_id"] is None
    assert messages[0]["children"] == [reply["id"]]
    assert messages[1]["parent_id"] == reply["request_id"]  # the real parent outside the ask response
    assert messages[0]["usage"] is None and messages[0]["finish_details"] is None


def test_new_conversation_is_titled_from_its_first_prompt(api, backend):
    reply = new(api, "Plan a three day trip to Lisbon with a budget of 500 euros and lots of seafood please")
    conversation = api.get(f"/conversations/{reply['conversation_id']}").json()
    assert conversation["title"].startswith("Plan a three day trip to Lisbon")
    assert conversation["title"].endswith("…")
    assert len(conversation["title"]) <= 60


def test_given_title_and_system_prompt_are_kept(api, backend):
    reply = new(api, "Hi", title="My chat", system_prompt="You are terse.")
    conversation = api.get(f"/conversations/{reply['conversation_id']}").json()
    assert conversation["title"] == "My chat"
    assert conversation["system_prompt"] == "You are terse."
    assert backend.last_messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ]


def test_ask_continues_current_node_and_sends_the_whole_branch(api, backend):
    first = new(api, "one", system_prompt="sys")
    cid = first["conversation_id"]
    second = ask(api, cid, "two")
    third = ask(api, cid, "three")

    assert backend.last_messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": first["message"]},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": second["message"]},
        {"role": "user", "content": "three"},
    ]
    assert texts(branch(api, cid)) == ["one", first["message"], "two", second["message"], "three", third["message"]]
    assert api.get(f"/conversations/{cid}").json()["current_node"] == third["id"]


def test_asking_with_an_earlier_parent_makes_a_branch_and_only_that_branch_is_sent(api, backend):
    first = new(api, "Tell me a joke")
    cid = first["conversation_id"]
    ask(api, cid, "Another one")
    # "Edit and resend" the second prompt: a sibling of "Another one", child of the first reply.
    edited = ask(api, cid, "A pun instead", parent_id=first["parent_id"])

    assert backend.last_messages == [
        {"role": "user", "content": "Tell me a joke"},
        {"role": "assistant", "content": first["message"]},
        {"role": "user", "content": "A pun instead"},
    ]
    assert texts(branch(api, cid)) == ["Tell me a joke", first["message"], "A pun instead", edited["message"]]
    everything = branch(api, cid, all="true")
    assert len(everything) == 6
    first_reply = next(m for m in everything if m["id"] == first["id"])
    assert len(first_reply["children"]) == 2  # two branches


def test_switching_branch_with_patch_current_node(api, backend):
    first = new(api, "root")
    cid = first["conversation_id"]
    old = ask(api, cid, "old branch")
    new_branch = ask(api, cid, "new branch", parent_id=first["id"])

    response = api.patch(f"/conversations/{cid}", {"current_node": old["id"]}, format="json")
    assert response.status_code == 200
    assert response.json()["current_node"] == old["id"]
    assert texts(branch(api, cid))[-2:] == ["old branch", old["message"]]

    ask(api, cid, "continue old")
    assert [m["content"] for m in backend.last_messages] == [
        "root",
        first["message"],
        "old branch",
        old["message"],
        "continue old",
    ]
    assert texts(branch(api, cid, leaf=new_branch["id"]))[-2:] == ["new branch", new_branch["message"]]


def test_regenerate_an_assistant_message_makes_a_sibling(api, backend):
    first = new(api, "Name a colour")
    cid = first["conversation_id"]
    backend.reply_with("Blue")
    response = api.post(f"/conversations/{cid}/messages/{first['id']}/regenerate", {}, format="json")

    assert response.status_code == 201, response.json()
    regenerated = response.json()["response"]
    assert regenerated["message"] == "Blue"
    assert regenerated["request_id"] == first["request_id"]  # same user message: a sibling
    assert regenerated["parent_id"] == regenerated["id"]
    assert backend.last_messages == [{"role": "user", "content": "Name a colour"}]
    assert texts(branch(api, cid)) == ["Name a colour", "Blue"]
    user_message = branch(api, cid)[0]
    assert user_message["children"] == [first["id"], regenerated["id"]]


def test_regenerate_a_user_message_adds_a_reply_under_it(api, backend):
    first = new(api, "Hi")
    cid = first["conversation_id"]
    response = api.post(f"/conversations/{cid}/messages/{first['request_id']}/regenerate", format="json")
    assert response.status_code == 201
    assert response.json()["response"]["request_id"] == first["request_id"]
    assert len(branch(api, cid, all="true")) == 3


def test_regenerate_with_another_model(api, backend):
    first = new(api, "Hi")
    response = api.post(
        f"/conversations/{first['conversation_id']}/messages/{first['id']}/regenerate",
        {"model": "test-model-2"},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["response"]["model"] == "test-model-2"
    assert backend.requests[-1]["model"] == "test-model-2"


def test_model_per_request_then_conversation_then_default(api, backend):
    first = new(api, "Hi", model="test-model-2")
    cid = first["conversation_id"]
    assert backend.requests[-1]["model"] == "test-model-2"
    ask(api, cid, "again")
    assert backend.requests[-1]["model"] == "test-model-2"  # the conversation's model
    ask(api, cid, "once with the default", model="auto")
    assert backend.requests[-1]["model"] == "test-model"  # auto means the server default
    ask(api, cid, "and the conversation's again")
    assert backend.requests[-1]["model"] == "test-model-2"
    api.patch(f"/conversations/{cid}", {"model": "auto"}, format="json")
    ask(api, cid, "after reset")
    assert backend.requests[-1]["model"] == "test-model"


def test_delete_message_removes_its_subtree_and_moves_current_node(api, backend):
    first = new(api, "root")
    cid = first["conversation_id"]
    second = ask(api, cid, "second")
    ask(api, cid, "third")
    sibling = ask(api, cid, "sibling", parent_id=first["id"])
    api.patch(f"/conversations/{cid}", {"current_node": sibling["id"]}, format="json")
    api.patch(f"/conversations/{cid}", {"current_node": second["id"]}, format="json")

    response = api.delete(f"/conversations/{cid}/messages/{second['request_id']}")
    assert response.status_code == 204
    assert response.content == b""
    remaining = branch(api, cid, all="true")
    assert texts(remaining) == ["root", first["message"], "sibling", sibling["message"]]
    conversation = api.get(f"/conversations/{cid}").json()
    assert conversation["current_node"] == first["id"]  # the deleted message's parent
    assert conversation["message_count"] == 4
    assert api.get(f"/conversations/{cid}").json()["mapping"][first["id"]]["children"] == [sibling["request_id"]]


def test_delete_message_outside_current_branch_keeps_current_node(api, backend):
    first = new(api, "root")
    cid = first["conversation_id"]
    side = ask(api, cid, "side")
    main = ask(api, cid, "main", parent_id=first["id"])
    assert api.delete(f"/conversations/{cid}/messages/{side['request_id']}").status_code == 204
    assert api.get(f"/conversations/{cid}").json()["current_node"] == main["id"]


def test_deleting_the_root_empties_the_conversation_and_asking_starts_again(api, backend):
    first = new(api, "root")
    cid = first["conversation_id"]
    assert api.delete(f"/conversations/{cid}/messages/{first['request_id']}").status_code == 204
    assert branch(api, cid) == []
    assert api.get(f"/conversations/{cid}").json()["current_node"] is None
    again = ask(api, cid, "fresh start")
    assert texts(branch(api, cid)) == ["fresh start", again["message"]]


def test_detail_has_a_mapping_of_the_whole_tree(api, backend):
    first = new(api, "root")
    cid = first["conversation_id"]
    second = ask(api, cid, "a")
    ask(api, cid, "b", parent_id=first["id"])
    detail = api.get(f"/conversations/{cid}").json()

    keys = "id title create_time update_time model system_prompt message_count mapping current_node"
    keys += " pinned archived tags folder_id"
    assert set(detail) == set(keys.split())
    assert detail["message_count"] == 6
    assert len(detail["mapping"]) == 6
    root = detail["mapping"][first["request_id"]]
    assert root["parent"] is None
    assert root["children"] == [first["id"]]
    assert root["message"]["message"] == "root"
    assert detail["mapping"][second["id"]]["parent"] == second["request_id"]
    assert detail["create_time"].endswith("Z")


def test_fork_copies_the_path_to_a_new_conversation(api, backend):
    first = new(api, "root", system_prompt="sys", title="Original")
    cid = first["conversation_id"]
    second = ask(api, cid, "two")
    ask(api, cid, "side", parent_id=first["id"])

    response = api.post(f"/conversations/{cid}/fork", {"message_id": second["id"]}, format="json")
    assert response.status_code == 201, response.json()
    fork = response.json()
    assert fork["id"] != cid
    assert fork["title"] == "Original (fork)"
    assert fork["system_prompt"] == "sys"
    assert fork["message_count"] == 4
    forked = branch(api, fork["id"])
    assert texts(forked) == ["root", first["message"], "two", second["message"]]
    assert all(m["conversation_id"] == fork["id"] for m in forked)
    assert fork["current_node"] == forked[-1]["id"]
    assert {m["id"] for m in forked}.isdisjoint({first["id"], first["request_id"], second["id"]})

    ask(api, fork["id"], "in the fork")
    assert len(branch(api, cid, all="true")) == 6  # the original is untouched


def test_fork_defaults_to_current_node_and_takes_a_title(api, backend):
    first = new(api, "root")
    response = api.post(f"/conversations/{first['conversation_id']}/fork", {"title": "Copy"}, format="json")
    assert response.status_code == 201
    assert response.json()["title"] == "Copy"
    assert response.json()["message_count"] == 2


def test_create_empty_conversation_then_ask(api, backend):
    response = api.post("/conversations", {"title": "Empty", "system_prompt": "Be brief", "model": "test-model-2"})
    assert response.status_code == 201, response.json()
    conversation = response.json()
    assert conversation["message_count"] == 0
    assert conversation["current_node"] is None
    assert conversation["mapping"] == {}
    assert conversation["model"] == "test-model-2"
    reply = ask(api, conversation["id"], "hello")
    assert reply["model"] == "test-model-2"
    assert backend.last_messages[0] == {"role": "system", "content": "Be brief"}
    assert api.get(f"/conversations/{conversation['id']}").json()["title"] == "Empty"


def test_patch_title_and_system_prompt(api, backend):
    first = new(api, "hi")
    cid = first["conversation_id"]
    response = api.patch(f"/conversations/{cid}", {"title": "Renamed", "system_prompt": "Pirate"}, format="json")
    assert response.status_code == 200
    assert response.json()["title"] == "Renamed"
    ask(api, cid, "more")
    assert backend.last_messages[0] == {"role": "system", "content": "Pirate"}


def test_form_encoded_bodies_work_like_json(api, backend):
    response = api.post("/conversations/new", {"prompt": "from a form", "title": "Form"})  # multipart
    assert response.status_code == 201
    cid = response.json()["response"]["conversation_id"]
    response = api.post(
        f"/conversations/{cid}/ask",
        "prompt=urlencoded&autocontinue=false",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 201, response.json()
    assert backend.last_messages[-1] == {"role": "user", "content": "urlencoded"}


def test_trailing_slash_is_optional(api, backend):
    response = api.post("/conversations/new/", {"prompt": "slash"}, format="json")
    assert response.status_code == 201
    cid = response.json()["response"]["conversation_id"]
    assert api.get(f"/conversations/{cid}/").status_code == 200
    assert api.get(f"/conversations/{cid}/messages/").status_code == 200
    assert api.post(f"/conversations/{cid}/ask/", {"prompt": "x"}, format="json").status_code == 201
    assert api.get("/conversations/").status_code == 200


def test_autocontinue_joins_length_limited_parts(api, backend, settings):
    settings.CHATAPI_AUTOCONTINUE_MAX_ROUNDS = 3
    backend.reply_with("Once upon", " a time", finish_reason="length")
    backend.reply_with(" the end.")
    reply = new(api, "Tell a story", autocontinue=True)

    assert reply["message"] == "Once upon a time the end."
    assert reply["finish_details"] == "stop"
    assert len(backend.requests) == 3
    assert backend.last_messages[-1] == {"role": "assistant", "content": "Once upon a time"}
    assert len(branch(api, reply["conversation_id"], all="true")) == 2  # one assistant message


def test_autocontinue_stops_after_the_configured_rounds(api, backend, settings):
    settings.CHATAPI_AUTOCONTINUE_MAX_ROUNDS = 2
    backend.reply_with("a", "b", "c", finish_reason="length")
    reply = new(api, "Go", autocontinue="true")
    assert reply["message"] == "ab"
    assert reply["finish_details"] == "length"
    assert reply["end_turn"] is False
    assert len(backend.requests) == 2


def test_without_autocontinue_a_length_stop_is_reported(api, backend):
    backend.reply_with("cut", finish_reason="length")
    reply = new(api, "Go")
    assert reply["finish_details"] == "length"
    assert len(backend.requests) == 1


def test_reply_without_usage_from_backend_gets_an_estimate(api, backend):
    backend.reply_with("no usage reported for this reply", usage=False)
    usage = new(api, "Please go")["usage"]
    assert usage == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}  # about 4 characters a token
