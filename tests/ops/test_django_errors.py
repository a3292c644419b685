"""Errors Django answers itself (an unknown URL, a wrong method, a bad Host) use the API's JSON error body,
in debug mode too."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conversations.test_bad_input import assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> Client:
    """A client that gets the CSRF check a browser or curl gets (Django's test client skips it)."""
    return Client(enforce_csrf_checks=True)


@pytest.fixture(params=[True, False], ids=["debug", "production"])
def debug(request, settings) -> bool:
    settings.DEBUG = request.param
    return request.param


@pytest.mark.parametrize("path", ["/nope", "/conversations/x/y/z/w", "/v1/nothing", "/static/missing.css"])
def test_an_unknown_url_is_a_json_404(client, debug, path):
    error = assert_error(client.get(path), 404, type="not_found_error")
    assert error["code"] == "not_found"


def test_an_unknown_url_with_another_method_is_a_json_404_too(client, debug):
    assert_error(client.post("/nope", {"a": 1}), 404, type="not_found_error")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_a_wrong_method_on_a_probe_is_a_json_405(client, debug, path):
    response = client.post(path)
    error = assert_error(response, 405)
    assert error["code"] == "method_not_allowed"
    assert response["Allow"] == "GET, HEAD"


def test_a_bad_host_is_a_json_400_naming_allowed_hosts_only_in_debug_mode(client, debug):
    response = client.get("/healthz", HTTP_HOST="evil.example")
    error = assert_error(response, 400)
    assert error["code"] == "invalid_host"
    assert ("ALLOWED_HOSTS" in error["message"]) is debug


def test_a_bad_host_on_an_api_route_is_refused_before_authentication(api, debug):
    response = api.post("/conversations/new", {"prompt": "hi"}, format="json", HTTP_HOST="evil.example")
    assert_error(response, 400)
