"""Non-streamed replies served by uvicorn: awaited on the event loop, so waiting for the model holds no thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from accounts.services import api_key_create
from conversations.models import Message
from tests.live import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_many_replies_wait_for_the_model_at_once(user, live_url, backend):
    # A reply being generated is awaited on the event loop: all of them reach the backend at once.
    count = 40
    keys = [api_key_create(user=user)[1] for _ in range(count)]
    backend.hold()

    def ask(i: int) -> requests.Response:
        return requests.post(
            f"{live_url}/conversations/new",
            json={"prompt": f"question {i}"},
            headers={"Authorization": f"Bearer {keys[i]}"},
            timeout=60,
        )

    with ThreadPoolExecutor(count) as pool:
        answers = [pool.submit(ask, i) for i in range(count)]
        all_waiting = wait_until(lambda: backend.waiting == count, timeout=15)
        backend.release()
        responses = [answer.result() for answer in answers]
    assert all_waiting, f"only {backend.waiting} of {count} requests reached the backend together"
    assert [r.status_code for r in responses] == [201] * count
    for i, response in enumerate(responses):
        assert response.json()["response"]["message"].endswith(f" to: question {i}")
    assert Message.objects.filter(role="assistant").count() == count


def test_a_reply_answers_with_the_middleware_headers_and_its_own_length(http, backend):
    response = http.post(f"{http.base_url}/conversations/new", json={"prompt": "Hello"}, timeout=30)
    assert response.status_code == 201
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.json()["response"]["message"] == "Reply 1 to: Hello"


def test_a_backend_failure_keeps_the_prompt_and_the_failed_reply(http, backend):
    backend.fail(500)
    response = http.post(f"{http.base_url}/conversations/new", json={"prompt": "Will this fail?"}, timeout=30)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "backend_error"
    stored = Message.objects.get(pk=error["details"]["message_id"])
    assert stored.content == "Will this fail?"
    assert Message.objects.get(role="assistant").status == "failed"


def test_openai_client_errors_keep_their_shape_on_the_loop(http, backend):
    backend.fail(429, retry_after="7")
    response = http.post(
        f"{http.base_url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
