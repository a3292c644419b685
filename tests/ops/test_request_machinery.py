"""Django's own request machinery serves every request: middleware and signals see what really happens."""

from __future__ import annotations

import time

import pytest
from django.core.signals import request_finished

from tests import middleware

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def seen():
    middleware.seen.clear()
    return middleware.seen


@pytest.mark.parametrize(("backend_status", "status"), [(None, 201), (500, 502), (429, 503)])
def test_middleware_sees_the_status_that_goes_out(http, backend, seen, backend_status, status):
    if backend_status:
        backend.fail(backend_status)
    response = http.post(f"{http.base_url}/conversations/new", json={"prompt": "status?"}, timeout=30)
    assert response.status_code == status
    assert seen == [("/conversations/new", status)]


def test_middleware_sees_openai_errors_as_they_go_out(http, backend, seen):
    backend.fail(429, retry_after="3")
    response = http.post(
        f"{http.base_url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30
    )
    assert response.status_code == 429
    assert seen == [("/v1/chat/completions", 429)]


def test_request_finished_comes_after_the_reply(http, backend):
    backend_requests_when_finished = []

    def finished(**kwargs) -> None:
        backend_requests_when_finished.append(len(backend.requests))

    request_finished.connect(finished)
    try:
        response = http.post(f"{http.base_url}/conversations/new", json={"prompt": "after?"}, timeout=30)
        deadline = time.monotonic() + 5  # it fires once the response is sent, which the client may see first
        while not backend_requests_when_finished and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        request_finished.disconnect(finished)
    assert response.status_code == 201
    assert backend_requests_when_finished == [1]
