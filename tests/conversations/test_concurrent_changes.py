"""A conversation changed while a reply is being generated: a clear 404/409, never a 500 or half a write."""

from __future__ import annotations

import threading
import time

import pytest

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


def ask_in_background(http, path, body) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        response = http.post(f"{http.base_url}{path}", json=body, timeout=30)
        result["status"], result["body"] = response.status_code, response.json()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def wait_for_prompt(content: str) -> Message:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = Message.objects.filter(content=content).first()
        if message is not None:
            return message
        time.sleep(0.02)
    raise AssertionError("the prompt was never stored")


def test_conversation_deleted_while_the_reply_is_generated_is_a_404(http, backend):
    first = http.post(f"{http.base_url}/conversations/new", json={"prompt": "hi"}).json()["response"]
    cid = first["conversation_id"]
    backend.hang(0.8)
    thread, result = ask_in_background(http, f"/conversations/{cid}/ask", {"prompt": "slow one"})
    wait_for_prompt("slow one")
    assert http.delete(f"{http.base_url}/conversations/{cid}").status_code == 204
    thread.join()
    assert result["status"] == 404, result
    assert result["body"]["error"]["type"] == "not_found_error"
    assert not Conversation.objects.filter(pk=cid).exists()
    assert not Message.objects.exists()


def test_prompt_deleted_while_the_reply_is_generated_is_a_409(http, backend):
    first = http.post(f"{http.base_url}/conversations/new", json={"prompt": "hi"}).json()["response"]
    cid = first["conversation_id"]
    backend.hang(0.8)
    thread, result = ask_in_background(http, f"/conversations/{cid}/ask", {"prompt": "doomed"})
    prompt = wait_for_prompt("doomed")
    assert http.delete(f"{http.base_url}/conversations/{cid}/messages/{prompt.pk}").status_code == 204
    thread.join()
    assert result["status"] == 409, result
    assert result["body"]["error"]["type"] == "conflict_error"
    assert sorted(Message.objects.values_list("content", flat=True)) == sorted(["hi", first["message"]])
    assert str(Conversation.objects.get(pk=cid).current_node_id) == first["id"]
