"""Django's own request machinery serves every request: middleware and signals see what really happens."""

from __future__ import annotations

import re
import time

import pytest
import requests
from django.core.signals import request_finished

from accounts.services import user_create
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


# Django's session, CSRF, authentication and messages middleware serve a browser's login; a request with an API
# key skips them (chatapi.middleware), on ASGI as on the test client. The admin must not notice.


def _csrf_token(page: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def test_the_admin_logs_in_with_its_csrf_check_under_asgi(live_url):
    user_create(username="root", email="root@example.com", password="a long passphrase", is_superuser=True)
    browser = requests.Session()
    login = browser.get(f"{live_url}/admin/login/", timeout=10)
    assert login.status_code == 200 and "csrftoken" in browser.cookies
    form = {"username": "root", "password": "a long passphrase", "next": "/admin/"}
    refused = requests.post(f"{live_url}/admin/login/", data=form, timeout=10)  # no CSRF cookie nor token
    assert refused.status_code == 403
    done = browser.post(f"{live_url}/admin/login/", data={**form, "csrfmiddlewaretoken": _csrf_token(login.text)})
    assert done.status_code == 200 and done.url == f"{live_url}/admin/"
    assert "sessionid" in browser.cookies and "Site administration" in done.text
    # A bearer header on the admin's pages changes nothing: the admin always has its session.
    assert browser.get(f"{live_url}/admin/", headers={"Authorization": "Bearer ck_x_y"}, timeout=10).status_code == 200


def test_a_logged_in_browser_uses_the_api_with_its_session_and_csrf_token(live_url):
    user_create(username="root", email="root@example.com", password="a long passphrase", is_staff=True)
    browser = requests.Session()
    login = browser.get(f"{live_url}/admin/login/", timeout=10)
    form = {"username": "root", "password": "a long passphrase", "csrfmiddlewaretoken": _csrf_token(login.text)}
    browser.post(f"{live_url}/admin/login/", data=form, timeout=10)
    listed = browser.get(f"{live_url}/conversations", timeout=10)
    assert listed.status_code == 200 and listed.json() == []
    unchecked = browser.post(f"{live_url}/folders", json={"name": "f"}, timeout=10)
    assert unchecked.status_code == 403  # DRF's session authentication checks CSRF
    token = {"X-CSRFToken": str(browser.cookies["csrftoken"]), "Referer": f"{live_url}/admin/"}
    made = browser.post(f"{live_url}/folders", json={"name": "f"}, headers=token, timeout=10)
    assert made.status_code == 201, made.text


def test_a_request_with_an_api_key_gets_no_cookies_and_the_security_headers(http, backend):
    answer = http.get(f"{http.base_url}/conversations", timeout=10)
    assert answer.status_code == 200
    assert "Set-Cookie" not in answer.headers and "Cookie" not in answer.headers.get("Vary", "")
    assert answer.headers["X-Frame-Options"] == "DENY" and answer.headers["X-Content-Type-Options"] == "nosniff"
    assert int(answer.headers["Content-Length"]) == len(answer.content)
    assert http.get(f"{http.base_url}/conversations", headers={"Authorization": "Bearer ck_bad"}).status_code == 401
