"""Shared fixtures: users, keys, authenticated clients, and the fake model backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import requests
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from accounts.services import api_key_create, user_create
from tests.fake_openai import FakeOpenAI

FAKE_API_KEY = "sk-test-not-a-real-key"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory) -> None:
    """On SQLite, a test database in a file (not memory), so uvicorn in a thread can share it."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(autouse=True)
def offline_backend(settings) -> None:
    """By default no backend is configured, whatever the developer's environment says: the echo model."""
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.CHATAPI_MODELS = ["echo"]
    settings.CHATAPI_DEFAULT_MODEL = "echo"
    settings.CHATAPI_BACKEND_MAX_RETRIES = 0
    settings.CHATAPI_BACKEND_TIMEOUT = 5.0


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def backend(fake_openai_server: FakeOpenAI, settings) -> FakeOpenAI:
    """The service pointed at the fake OpenAI-compatible server, through the real `openai` SDK."""
    fake_openai_server.reset()
    settings.OPENAI_API_KEY = FAKE_API_KEY
    settings.OPENAI_BASE_URL = fake_openai_server.url
    settings.CHATAPI_MODELS = list(FakeOpenAI.models)
    settings.CHATAPI_DEFAULT_MODEL = FakeOpenAI.models[0]
    return fake_openai_server


@pytest.fixture
def user(db) -> User:
    return user_create(username="alice", email="alice@example.com", first_name="Alice", last_name="Liddell")


@pytest.fixture
def other_user(db) -> User:
    return user_create(username="bob", email="bob@example.com")


@pytest.fixture
def admin(db) -> Client:
    """A browser logged in to the Django admin as a superuser."""
    client = Client()
    client.force_login(user_create(username="root", email="root@example.com", is_superuser=True))
    return client


@pytest.fixture
def api_key(user: User) -> str:
    return api_key_create(user=user, name="test")[1]


@pytest.fixture
def client_for(db) -> Callable[[User], APIClient]:
    """An API client authenticated as `user` with a fresh key."""

    def make(user: User) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(user=user)[1]}")
        return client

    return make


@pytest.fixture
def api(client_for, user: User) -> APIClient:
    return client_for(user)


@pytest.fixture
def other_api(client_for, other_user: User) -> APIClient:
    return client_for(other_user)


@pytest.fixture(scope="session")
def _live_asgi_server(django_db_setup, django_db_blocker) -> Iterator[str]:
    from django.db import connections

    from tests.live import LiveASGIServer

    # The server's threads close their connections after each request, so that none is left open
    # when the test database is dropped at the end.
    for connection in connections.all():
        connection.settings_dict["CONN_MAX_AGE"] = 0
    with django_db_blocker.unblock():
        server = LiveASGIServer().start()
    yield server.url
    server.stop()


@pytest.fixture
def live_url(_live_asgi_server: str, transactional_db, fake_openai_server: FakeOpenAI) -> Iterator[str]:
    """Base URL of the service served by uvicorn (ASGI) in this process; data must be committed to be seen.

    Replies outlive their requests: at the end of a test the ones still being generated are let finish
    before the test's data is flushed (on PostgreSQL a flush beside a reply being stored can deadlock)."""
    yield _live_asgi_server
    from conversations import generations

    fake_openai_server.release()
    deadline = time.monotonic() + 15
    while generations.running_count() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture
def http(user, live_url) -> requests.Session:
    """A `requests` session with `user`'s key for the live server; its `base_url` is the server's."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key_create(user=user)[1]}"
    session.base_url = live_url  # type: ignore[attr-defined]
    return session
